"""Flow-level network: concurrent flows share every directed link max-min fairly.

The engine talks to the network through one call, ``Network.transfer``: start a batch of
flows now and get a SimPy event that fires when the last byte of the last flow arrives (the
interface of ``dlsim.network.backend``, which this model and the closed-form one share). A
flow first waits out its path latency, then competes for bandwidth; rates are recomputed
(vectorised, numpy) only when the set of competing flows changes, so a phase of N symmetric
flows costs one rate computation however large N is. This is the fluid model of SimGrid and
of ASTRA-sim's analytical backend; there are no packets.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import simpy

from dlsim.hardware.topology import Topology
from dlsim.network.records import LinkRecords


def max_min_rates(flow_of: np.ndarray, link_of: np.ndarray, capacity: np.ndarray,
                  n_flows: int) -> np.ndarray:
    """Max-min fair rates by progressive filling (Bertsekas & Gallager, Data Networks §6.5).

    ``(flow_of[i], link_of[i])`` lists which flow crosses which link. Each round saturates the
    links with the smallest fair share (residual capacity / unfrozen flows) and freezes the
    flows crossing them at that share; symmetric traffic finishes in one round.
    """
    rates = np.zeros(n_flows)
    active = np.ones(n_flows, dtype=bool)
    residual = capacity.astype(float).copy()
    n_links = len(capacity)
    while True:
        live = active[flow_of]
        if not live.any():
            return rates
        counts = np.bincount(link_of[live], minlength=n_links)
        used = counts > 0
        share = np.full(n_links, np.inf)
        share[used] = residual[used] / counts[used]
        level = share.min()
        bottleneck = share <= level * (1 + 1e-12)
        frozen = np.zeros(n_flows, dtype=bool)
        frozen[flow_of[live & bottleneck[link_of]]] = True
        rates[frozen] = level
        active &= ~frozen
        residual -= np.bincount(link_of[frozen[flow_of]], minlength=n_links) * level
        np.maximum(residual, 0.0, out=residual)


@dataclass
class _Segment:
    """Flows of one batch that became active together (they share a latency)."""

    batch: _Batch
    size: np.ndarray          # bytes per flow
    remaining: np.ndarray     # bytes per flow still to send
    flow_of: np.ndarray       # local flow index per (flow, link) incidence
    link_of: np.ndarray       # edge id per incidence


@dataclass
class _Batch:
    pending: int
    done: simpy.Event


class Network(LinkRecords):
    """The shared network of one simulation run, with per-link byte and busy-time records."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        super().__init__(env, topology)
        self._segments: list[_Segment] = []
        self._rates: list[np.ndarray] = []
        self._last_t = 0.0
        self._generation = 0

    def transfer(self, src: np.ndarray, dst: np.ndarray, size_bytes: np.ndarray | float,
                 rounds: int = 1, latency_rounds: int | np.ndarray | None = None,
                 latency_s: np.ndarray | None = None,
                 wire_factor: np.ndarray | None = None) -> simpy.Event:
        """Send ``size_bytes[i]`` from device ``src[i]`` to ``dst[i]``, all starting now.

        ``rounds`` identical rounds are sent back to back as one pipelined flow: each round
        pays the path latency, and the bytes
        of all rounds stream at the flow's fair rate. That is exact whenever the flows of a
        phase get equal rates (uncontended or symmetric phases). ``latency_rounds``
        overrides the number of latencies paid (a pipeline's depth); ``latency_s[i]``, if
        given, replaces flow i's whole latency (a protocol's per-step costs), and
        ``wire_factor[i]`` makes it put that many bytes on the wire per payload byte (a
        protocol's flags and headers); ``bytes_injected`` counts payload.
        """
        done = self.env.event()
        src, dst = np.asarray(src), np.asarray(dst)
        size = np.broadcast_to(np.asarray(size_bytes, dtype=float), src.shape) * rounds
        keep = (src != dst) & (size > 0)
        src, dst, size = src[keep], dst[keep], size[keep]
        if len(src) == 0:
            return done.succeed()
        routes = self.topology.flow_routes(src, dst)
        if latency_s is None:
            latency = np.add.reduceat(self.topology.latency_s[routes[0]], routes[1])
            steps = rounds if latency_rounds is None else latency_rounds
            latency = latency * np.broadcast_to(np.asarray(steps, dtype=float), keep.shape)[keep]
        else:
            latency = np.broadcast_to(np.asarray(latency_s, dtype=float), keep.shape)[keep]
        self.bytes_injected += float(size.sum())
        if wire_factor is not None:
            size = size * np.broadcast_to(np.asarray(wire_factor, dtype=float), keep.shape)[keep]
        self.flows_started += len(src)
        batch = _Batch(pending=len(src), done=done)
        for lat in np.unique(latency):
            members = np.flatnonzero(latency == lat)
            seg = self._segment(batch, routes, members, size[members])
            self.env.timeout(float(lat)).callbacks.append(partial(self._activate, seg))
        return done

    def scale_links(self, edges: np.ndarray, factor: float) -> None:
        """From now on, links ``edges`` carry ``factor`` of their nominal bandwidth (a
        transient slow link; factor 1 restores it). Flows in flight keep what they have sent
        and go on at the new fair rates."""
        self._advance()
        self.capacity_Bps[edges] = self.topology.capacity_Bps[edges] * factor
        self._reschedule()

    @staticmethod
    def _segment(batch: _Batch, routes: tuple[np.ndarray, np.ndarray, np.ndarray],
                 members: np.ndarray, size: np.ndarray) -> _Segment:
        """Flows ``members`` of a batch whose routes are ``routes`` (flow_routes' arrays)."""
        links, starts, lengths = routes
        if len(members) < len(starts):
            lengths = lengths[members]
            first = np.repeat(starts[members] - np.cumsum(lengths) + lengths, lengths)
            links = links[first + np.arange(int(lengths.sum()))]
        return _Segment(batch, size.copy(), size.copy(),
                        np.repeat(np.arange(len(members)), lengths), links)

    # --- the fluid model --------------------------------------------------------------------

    def _advance(self) -> None:
        """Move every active flow forward to now at its current rate."""
        dt = self.env.now - self._last_t
        self._last_t = self.env.now
        if dt <= 0 or not self._segments:
            return
        for seg, rate in zip(self._segments, self._rates):
            seg.remaining -= rate * dt
            carried = np.bincount(seg.link_of, weights=rate[seg.flow_of] * dt,
                                  minlength=len(self.link_bytes))
            self.link_bytes += carried
        self.link_busy_s[self._load() > 0] += dt

    def _load(self) -> np.ndarray:
        load = np.zeros(len(self.link_bytes))
        for seg, rate in zip(self._segments, self._rates):
            load += np.bincount(seg.link_of, weights=rate[seg.flow_of], minlength=len(load))
        return load

    def _activate(self, seg: _Segment, _latency_elapsed: simpy.Event) -> None:
        """Segment ``seg`` starts sending once its flows' latency has elapsed."""
        self._advance()
        self._segments.append(seg)
        self._reschedule()

    def _reschedule(self) -> None:
        """Recompute fair rates and wake up at the next flow completion."""
        self._generation += 1
        if not self._segments:
            self._rates = []
            return
        offsets = np.cumsum([0] + [len(s.size) for s in self._segments])
        flow_of = np.concatenate([s.flow_of + o for s, o in zip(self._segments, offsets)])
        link_of = np.concatenate([s.link_of for s in self._segments])
        rates = max_min_rates(flow_of, link_of, self.capacity_Bps, int(offsets[-1]))
        self._rates = [rates[a:b] for a, b in zip(offsets[:-1], offsets[1:])]
        finish = np.concatenate([s.remaining for s in self._segments]) / rates
        dt = float(finish.min())
        generation = self._generation
        self.env.timeout(max(dt, 0.0)).callbacks.append(
            lambda _ev: self._complete(generation, dt))

    def _complete(self, generation: int, dt: float) -> None:
        if generation != self._generation:
            return  # the flow set changed since this wake-up was scheduled
        self._advance()
        kept_segments, kept_rates = [], []
        for seg, rate in zip(self._segments, self._rates):
            # finished within rounding of the clock (relative 1e-9 of this interval, or a few
            # ulps of the absolute time, so that a tiny remainder cannot stall the clock)
            done = seg.remaining <= rate * (dt * 1e-9 + self.env.now * 1e-14)
            if done.any():
                seg.batch.pending -= int(done.sum())
                if seg.batch.pending == 0:
                    seg.batch.done.succeed()
                if done.all():
                    continue
                keep = ~done
                renumber = np.cumsum(keep) - 1
                inc = keep[seg.flow_of]
                seg = _Segment(seg.batch, seg.size[keep], seg.remaining[keep],
                               renumber[seg.flow_of[inc]], seg.link_of[inc])
                rate = rate[keep]
            kept_segments.append(seg)
            kept_rates.append(rate)
        self._segments, self._rates = kept_segments, kept_rates
        self._reschedule()
