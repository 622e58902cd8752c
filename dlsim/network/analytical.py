"""Closed-form network: each batch of flows takes the alpha-beta time it would take alone.

A batch (one phase of a collective, or a transfer) costs the later of (a) each link's first
flow start plus the bytes it carries over its bandwidth and (b) each flow's own latency plus
its bytes over its narrowest link: Hockney's alpha-beta model with beta taken at the
bottleneck link, as in ASTRA-sim's analytical backend. The flows of one batch that share a
link are priced by that link's total bytes; batches in flight at the same time do not see
each other, so two collectives on one link take no longer than each alone (the fluid network,
``dlsim.network.fluid``, shares the link and is slower). So a symmetric run, whose peers'
identical collectives travel as one batch, can be slower here than the same job in full
fidelity, where each is its own batch; on the fluid network the two agree. The tuner prices
phases with the same arithmetic (``dlsim.network.tuner.phase_time_s``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import numpy as np
import simpy

from dlsim.hardware.topology import Topology
from dlsim.network.records import LinkRecords


@dataclass(frozen=True)
class BatchCost:
    """One batch of flows priced alone on the network."""

    time_s: float             # when its last byte arrives, from its start
    payload_bytes: float      # bytes the senders hand over (what bytes_injected counts)
    flows: int                # flows between distinct devices that carry bytes
    links: np.ndarray         # the edge ids the flows cross (sorted)
    link_bytes: np.ndarray    # bytes each of ``links`` carries on the wire
    link_start_s: np.ndarray  # when each of ``links`` gets its first byte


def batch_cost(topology: Topology, capacity_Bps: np.ndarray, src: np.ndarray,
               dst: np.ndarray, size_bytes: float | np.ndarray, rounds: int = 1,
               latency_rounds: int | np.ndarray | None = None,
               latency_s: float | np.ndarray | None = None,
               wire_factor: float | np.ndarray | None = None) -> BatchCost:
    """The closed-form cost of sending ``size_bytes[i]`` from ``src[i]`` to ``dst[i]`` in
    ``rounds`` pipelined rounds, with the arguments of ``dlsim.network.fluid.Network.transfer``
    (``latency_rounds`` latencies, or each flow's whole ``latency_s``; ``wire_factor`` wire
    bytes per payload byte) on links of ``capacity_Bps``. Priced over the links the flows
    cross only: the tuner prices every instance of a collective, and a topology of 16,384
    GPUs has far more links than one instance uses."""
    routed = _routed(topology, capacity_Bps, src, dst, size_bytes, rounds, latency_rounds,
                     latency_s, wire_factor)
    if routed is None:
        none = np.zeros(0)
        return BatchCost(0.0, 0.0, 0, np.zeros(0, dtype=np.intp), none, none)
    payload, latency, size, crossed, load, first, narrowest = routed
    used = load > 0
    by_link = first[used] + load[used] / capacity_Bps[crossed[used]]
    time_s = float(max(by_link.max(), (latency + size / narrowest).max()))
    return BatchCost(time_s, float(payload.sum()), len(payload), crossed, load, first)


def batch_lines(topology: Topology, src: np.ndarray, dst: np.ndarray,
                size_bytes: float | np.ndarray, rounds: int = 1,
                latency_rounds: int | np.ndarray | None = None,
                latency_s: float | np.ndarray | None = None,
                wire_factor: float | np.ndarray | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """``batch_cost``'s time with every size scaled by x, as lines: max(a + b·x) (each
    link's first start and its bytes over its bandwidth, each flow's latency and its bytes
    over its narrowest link, at x = 1), on the topology's own capacities. Nothing but the
    bytes depends on x, so one routing prices every multiple of a batch."""
    capacity_Bps = topology.capacity_Bps
    routed = _routed(topology, capacity_Bps, src, dst, size_bytes, rounds, latency_rounds,
                     latency_s, wire_factor)
    if routed is None:
        return np.zeros(1), np.zeros(1)
    _, latency, size, crossed, load, first, narrowest = routed
    used = load > 0
    return (np.concatenate([first[used], latency]),
            np.concatenate([load[used] / capacity_Bps[crossed[used]],
                            size / narrowest]))


def _routed(topology: Topology, capacity_Bps: np.ndarray, src: np.ndarray, dst: np.ndarray,
            size_bytes: float | np.ndarray, rounds: int,
            latency_rounds: int | np.ndarray | None, latency_s: float | np.ndarray | None,
            wire_factor: float | np.ndarray | None) -> tuple[np.ndarray, ...] | None:
    """Of the flows that carry bytes between devices: payloads, latencies and wire bytes,
    the links they cross with each one's wire bytes and first start, and each flow's
    narrowest capacity in ``capacity_Bps`` (None: no such flow)."""
    src, dst = np.asarray(src), np.asarray(dst)
    payload = np.broadcast_to(np.asarray(size_bytes, dtype=float), src.shape) * rounds
    size = payload if wire_factor is None else payload * wire_factor
    keep = (src != dst) & (payload > 0)
    if not keep.any():
        return None
    links, starts, lengths = topology.flow_routes(src[keep], dst[keep])
    if latency_s is None:
        steps = rounds if latency_rounds is None else latency_rounds
        per_step = np.add.reduceat(topology.latency_s[links], starts)
        latency = per_step * np.broadcast_to(steps, src.shape)[keep]
    else:
        latency = np.broadcast_to(latency_s, src.shape)[keep]
    size = size[keep]
    crossed, local = np.unique(links, return_inverse=True)
    load = np.bincount(local, weights=np.repeat(size, lengths), minlength=len(crossed))
    first = np.full(len(crossed), np.inf)
    np.minimum.at(first, local, np.repeat(latency, lengths))
    narrowest = np.minimum.reduceat(capacity_Bps[links], starts)
    return payload[keep], latency, size, crossed, load, first, narrowest


class AnalyticalNetwork(LinkRecords):
    """The closed-form network of one simulation run, with the fluid network's records.

    ``link_bytes`` are exact (every byte of a batch crosses its route). As the model
    assumes, a link works at full bandwidth whenever it has bytes: it is busy from its first
    byte for its bytes over its bandwidth, and overlapping batches' busy intervals are
    merged, so ``link_busy_s`` never exceeds the run while ``link_bytes`` over bandwidth can
    (a link oversubscribed by concurrent collectives, which this model does not slow down).
    The fluid network's busy time is longer where max-min sharing runs a link below its
    bandwidth (a parameter server's workers' links, limited by the server's).
    """

    def __init__(self, env: simpy.Environment, topology: Topology):
        super().__init__(env, topology)
        self._busy_until = np.zeros(len(topology.edges))

    def transfer(self, src: np.ndarray, dst: np.ndarray, size_bytes: np.ndarray | float,
                 rounds: int = 1, latency_rounds: int | np.ndarray | None = None,
                 latency_s: np.ndarray | None = None,
                 wire_factor: np.ndarray | None = None, instances: int = 1,
                 name: object = None) -> simpy.Event:
        """Start a batch now (``dlsim.network.fluid.Network.transfer``'s arguments); the
        event fires after its closed-form time. ``instances`` and ``name`` change nothing:
        a batch is priced whole, each link by its own bytes."""
        cost = batch_cost(self.topology, self.capacity_Bps, src, dst, size_bytes, rounds,
                          latency_rounds, latency_s, wire_factor)
        self.bytes_injected += cost.payload_bytes
        self.flows_started += cost.flows
        self.link_bytes[cost.links] += cost.link_bytes
        carried = cost.link_bytes > 0
        used = cost.links[carried]
        start = cost.link_start_s[carried]
        end_s = self.env.now + start + cost.link_bytes[carried] / self.capacity_Bps[used]
        for offset in np.unique(start):  # marked when they start, so intervals come in order
            at = start == offset
            self.env.timeout(float(offset)).callbacks.append(
                partial(self._busy, used[at], end_s[at]))
        return self.env.timeout(cost.time_s)

    def scale_links(self, edges: np.ndarray, factor: float) -> None:
        """Batches started from now on see links ``edges`` at ``factor`` of their nominal
        bandwidth; batches in flight keep the time they were given."""
        self.capacity_Bps[edges] = self.topology.capacity_Bps[edges] * factor

    def _busy(self, links: np.ndarray, end_s: np.ndarray, _event: simpy.Event) -> None:
        """Links ``links`` carry bytes from now until ``end_s`` (a union of intervals taken
        in order of their starts)."""
        begin = np.maximum(self.env.now, self._busy_until[links])
        self.link_busy_s[links] += np.maximum(end_s - begin, 0.0)
        self._busy_until[links] = np.maximum(self._busy_until[links], end_s)
