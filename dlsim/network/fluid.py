"""Flow-level network: concurrent flows share every directed link max-min fairly.

The engine talks to the network through one call, ``Network.transfer``: start a batch of
flows now and get a SimPy event that fires when the last byte of the last flow arrives (the
interface of ``dlsim.network.backend``, which this model and the closed-form one share). A
flow first waits out its path latency, then competes for bandwidth; rates are recomputed
(vectorised, numpy) only when the set of competing flows changes, so a phase of N symmetric
flows costs one rate computation however large N is. This is the fluid model of SimGrid and
of ASTRA-sim's analytical backend; there are no packets.

The work follows what is active, not the size of the topology: arrays span the links that
active flows cross; a start or an end re-solves only the component of flows it is linked to;
a flow set seen before gets its remembered rates; flows that share no link take their path's
narrowest capacity. Each is exactly what progressive filling over every link would give
(``tests/network/test_fluid_incremental.py``). The records follow the same rule: a link gets
a flow's bytes when the flow ends and its busy time when it falls idle, not at every event.

Copy sets (``dlsim.network.symmetry``): the instances of a symmetric phase (every node's
tensor all-reduce, every replica's pipeline send) that are identical and share no link travel
as their first instance, standing for all of them; the other instances' links take its
records when it ends, or rather when someone next reads or crosses them (a step ends
thousands of copy sets, whose copies nobody reads in between). A newcomer whose links meet a
copy set's in any other way expands it into its flows, so the results are those of every
flow simulated (``tests/network/test_symmetry.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from functools import partial

import numpy as np
import simpy
from simpy.events import Event, Timeout

from dlsim.hardware.topology import Topology
from dlsim.network.records import LinkRecords
from dlsim.network.symmetry import CopySet, Footprint, compatible, copy_set, repeats

_NO_COPIES = np.zeros((0, 0), dtype=np.intp)
_NO_RATES = np.zeros(0)


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


def disjoint_rates(flow_of: np.ndarray, link_of: np.ndarray, capacity: np.ndarray,
                   n_flows: int) -> np.ndarray:
    """Max-min rates of flows that share no link: each runs at its path's narrowest link.

    ``flow_of`` must be non-decreasing and name every flow (as a batch's incidences are).
    Progressive filling gives the same: a link's share is its whole capacity, and no other
    flow ever takes from it.
    """
    starts = np.searchsorted(flow_of, np.arange(n_flows))
    return np.minimum.reduceat(capacity[link_of], starts).astype(float)


@dataclass(frozen=True)
class _Group:
    """Flows of one transfer that share a latency: which links each crosses."""

    latency_s: float
    members: np.ndarray       # indices of the flows in the transfer's kept flows
    flow_of: np.ndarray       # local flow index per (flow, link) incidence (non-decreasing)
    link_of: np.ndarray       # edge id per incidence
    links: np.ndarray         # the distinct edge ids the flows cross (sorted)
    local: np.ndarray         # index into ``links`` per incidence
    counts: np.ndarray        # incidences per link of ``links`` (float)
    k: int                    # identical link-disjoint copies the flows stand for
    copies: np.ndarray        # copies[i - 1, j]: copy i's link for links[j]
    footprint: Footprint
    relabelling: int = -1     # which (links, copies) these are, among the network's

    @classmethod
    def of(cls, latency_s: float, members: np.ndarray,
           routes: tuple[np.ndarray, np.ndarray, np.ndarray],
           copy_set: CopySet | None = None) -> _Group:
        """Flows ``members`` of a transfer whose routes are ``routes`` (flow_routes'); with
        a ``copy_set``, members of its instance 0 standing for every instance."""
        link_of, starts, lengths = routes
        if len(members) < len(starts):
            lengths = lengths[members]
            first = np.repeat(starts[members] - np.cumsum(lengths) + lengths, lengths)
            link_of = link_of[first + np.arange(int(lengths.sum()))]
        links, local = np.unique(link_of, return_inverse=True)
        copies = _NO_COPIES if copy_set is None else copy_set.copies_of(links)
        k = 1 if copy_set is None else copy_set.k
        return cls(latency_s, members, np.repeat(np.arange(len(members)), lengths), link_of,
                   links, local, np.bincount(local).astype(float), k, copies,
                   Footprint.of(links, copies))


@dataclass(eq=False, slots=True)
class _Segment:
    """Flows of one batch that became active together (they share a latency).

    While its flows have one size and one rate (every flow of a symmetric phase), a segment
    keeps their remaining bytes as one number, ``left`` (``remaining`` is None), moved at
    ``speed``: the arithmetic each flow's array entry would see, on one float, so the same
    results bit for bit without an array operation per segment and event."""

    batch: _Batch
    size: np.ndarray          # bytes per flow
    remaining: np.ndarray | None  # bytes per flow still to send; None: every flow's is left
    left: float               # bytes each flow still has to send (remaining is None)
    flow_of: np.ndarray       # local flow index per (flow, link) incidence (non-decreasing)
    link_of: np.ndarray       # edge id per incidence
    links: np.ndarray         # the distinct edge ids the segment's flows cross (sorted)
    local: np.ndarray         # index into ``links`` per incidence
    counts: np.ndarray | None  # incidences per link of ``links`` (remaining is None)
    k: int = 1                # identical link-disjoint copies each flow stands for
    copies: np.ndarray = field(default_factory=lambda: _NO_COPIES)  # copy i: copies[i - 1]
    footprint: Footprint | None = None  # every link the copies may cross (k > 1)
    rate: np.ndarray = field(default_factory=lambda: _NO_RATES)  # bytes/s per flow
    speed: float = 0.0        # every flow's rate (remaining is None)
    relabelling: int = -1     # its group's, while it has the group's links and copies

    def rated(self) -> None:
        """New ``rate``s were solved: one number for all flows while they allow it."""
        if self.remaining is None:
            lo = self.rate.min()
            if lo > 0 and lo == self.rate.max():
                self.speed = float(lo)
            else:
                self.remaining = np.full(len(self.size), self.left)

    def sent(self, flows: np.ndarray | None = None) -> np.ndarray:
        """Bytes per link of ``links`` that its flows (or ``flows``, a mask) have sent."""
        if self.remaining is None:
            assert self.counts is not None
            return self.counts * (self.size[0] - self.left)
        done = self.size - self.remaining
        if flows is not None:
            done = np.where(flows, done, 0.0)
        return np.bincount(self.local, weights=done[self.flow_of], minlength=len(self.links))

    def without(self, done: np.ndarray) -> tuple[_Segment, np.ndarray]:
        """The segment less its finished flows ``done``, keeping the others' rates, and
        which of its links it no longer crosses (a segment of one ``left`` ends whole)."""
        assert self.remaining is not None
        keep = ~done
        renumber = np.cumsum(keep) - 1
        inc = keep[self.flow_of]
        local = self.local[inc]
        used = np.bincount(local, minlength=len(self.links)) > 0
        links, copies = self.links, self.copies
        if not used.all():
            links = links[used]
            if self.k > 1:
                copies = copies[:, used]
            local = (np.cumsum(used) - 1)[local]
        return _Segment(self.batch, self.size[keep], self.remaining[keep], 0.0,
                        renumber[self.flow_of[inc]], self.link_of[inc], links, local, None,
                        self.k, copies, self.footprint, self.rate[keep]), ~used

    def expanded(self) -> _Segment:
        """The same flows, every copy on its own links (``k`` = 1), each where its
        representative is: the copies are identical, so this is exact at any time."""
        k, n = self.k, len(self.size)
        link_of = np.concatenate([self.link_of] + [c[self.local] for c in self.copies])
        flow_of = np.concatenate([self.flow_of + i * n for i in range(k)])
        links, local = np.unique(link_of, return_inverse=True)
        assert self.footprint is not None
        return _Segment(self.batch, np.tile(self.size, k),
                        None if self.remaining is None else np.tile(self.remaining, k),
                        self.left, flow_of, link_of, links, local,
                        np.bincount(local).astype(float), 1, _NO_COPIES,
                        self.footprint.expanded(), np.tile(self.rate, k), self.speed)


@dataclass(frozen=True)
class _Plan:
    """What a transfer starts: its ``flows`` (those that move bytes), their payload, and
    per latency group the flows' routes and wire bytes."""

    flows: int
    payload_bytes: float
    groups: list[_Group]
    sizes: list[np.ndarray]
    uniform: list[bool]       # per group: whether its flows have one size


def _key(value: np.ndarray | float | None) -> object:
    """An argument of ``transfer`` as part of a dict key."""
    if value is None or isinstance(value, (int, float)):
        return value
    a = np.asarray(value)
    return float(a) if a.ndim == 0 else (a.dtype.char, a.shape, a.tobytes())


@dataclass
class _Batch:
    pending: int
    done: simpy.Event


class RateSolver:
    """Max-min rates of a set of flows, over the links that set uses only, remembered by the
    flow set: a step repeats the same tensor all-reduce thousands of times, and the same
    flows on the same links (at the same capacities) always get the same rates. Flows that
    share no link take the fast path (``disjoint_rates``)."""

    MEMO_LIMIT = 4096

    def __init__(self, capacity_Bps: np.ndarray):
        self.capacity_Bps = capacity_Bps
        self._memo: dict[tuple[bytes, bytes], np.ndarray] = {}
        self.solved = 0   # rate computations done (not remembered)

    def forget(self) -> None:
        """Capacities changed: no remembered solution holds."""
        self._memo.clear()

    def rates(self, flow_of: np.ndarray, link_of: np.ndarray, n_flows: int) -> np.ndarray:
        key = (flow_of.tobytes(), link_of.tobytes())
        rates = self._memo.get(key)
        if rates is None:
            links, local, counts = np.unique(link_of, return_inverse=True, return_counts=True)
            capacity = self.capacity_Bps[links]
            if counts.max() == 1:
                rates = disjoint_rates(flow_of, local, capacity, n_flows)
            else:
                rates = max_min_rates(flow_of, local, capacity, n_flows)
            if len(self._memo) >= self.MEMO_LIMIT:
                self._memo.clear()
            self._memo[key] = rates
            self.solved += 1
        return rates


class Network(LinkRecords):
    """The shared network of one simulation run, with per-link byte and busy-time records.

    Work follows what is active: rates are solved over the links active flows use, and when
    a segment starts or flows end only the segments connected to them through shared links
    (their component) are solved again; the others keep their rates, which max-min fairness
    on disjoint components leaves unchanged.
    """

    PLAN_LIMIT = 4096
    # copy sets for transfers of this many flows or more: below it, the few array operations
    # a copy set costs at its start and end outweigh the flows they save (GPT-3 on 1,024 GPUs
    # was 15-20 % slower with copy sets of 64 flows); results are the same either way
    MIN_COPY_FLOWS = 256

    def __init__(self, env: simpy.Environment, topology: Topology):
        super().__init__(env, topology)
        self._segments: list[_Segment] = []
        self._last_t = 0.0
        self._generation = 0
        self._solver = RateSolver(self.capacity_Bps)
        n_links = len(topology.edges)
        self._mark = np.zeros(n_links, dtype=bool)  # scratch, all False between uses
        self._plans: dict[tuple, _Plan] = {}
        self._named: dict[object, _Plan] = {}  # the plans of named arguments (transfer)
        # a flow's bytes are added when it ends, a link's busy time when it falls idle: a
        # link is busy while segments in flight cross it (_users of them, since
        # _busy_since), as every flow moves at a positive rate (capacities are positive)
        self._bytes, self._busy_s = self._records
        self._users = np.zeros(n_links, dtype=np.intp)
        self._busy_since = np.zeros(n_links)
        # copy sets: the representative links held by copy sets in flight (how many hold
        # each), their records when the first took hold, and which footprints may meet
        self.symmetry = True  # solve identical link-disjoint instances once (until a link slows)
        self._held = np.zeros(n_links, dtype=np.intp)
        self._held_records = np.zeros((2, n_links))
        self._copy_sets = 0  # segments in flight with k > 1
        self._compatible: dict[tuple[int, int], bool] = {}
        # releases of copy sets that ended, not yet given to their copies (_defer): per
        # representative link the copies' records after them (_chain_value) and which
        # copies those are (_chain_column, -1: none), per copy the link it waits for
        self._relabellings: dict[tuple[bytes, bytes], int] = {}
        self._columns_of: list[np.ndarray] = []  # per relabelling, its links' column ids
        self._columns: list[np.ndarray] = []     # per column id, the copies of one link
        self._column_ids: dict[bytes, int] = {}
        self._chain_column = np.full(n_links, -1, dtype=np.intp)
        self._chain_value = np.zeros((2, n_links))
        self._chains = 0
        self._waits = np.full(n_links, -1, dtype=np.intp)

    @property
    def rate_solutions(self) -> int:
        """How many max-min rate computations the run needed (not remembered)."""
        return self._solver.solved

    def transfer(self, src: np.ndarray, dst: np.ndarray, size_bytes: np.ndarray | float,
                 rounds: int = 1, latency_rounds: int | np.ndarray | None = None,
                 latency_s: np.ndarray | None = None,
                 wire_factor: np.ndarray | None = None, instances: int = 1,
                 name: object = None) -> simpy.Event:
        """Send ``size_bytes[i]`` from device ``src[i]`` to ``dst[i]``, all starting now.

        ``rounds`` identical rounds are sent back to back as one pipelined flow: each round
        pays the path latency, and the bytes
        of all rounds stream at the flow's fair rate. That is exact whenever the flows of a
        phase get equal rates (uncontended or symmetric phases). ``latency_rounds``
        overrides the number of latencies paid (a pipeline's depth); ``latency_s[i]``, if
        given, replaces flow i's whole latency (a protocol's per-step costs), and
        ``wire_factor[i]`` makes it put that many bytes on the wire per payload byte (a
        protocol's flags and headers); ``bytes_injected`` counts payload. With
        ``instances`` k > 1 the flows are k equal consecutive blocks (one per instance of a
        collective); when they are identical link-disjoint copies (``dlsim.network.symmetry``)
        only the first is simulated, standing for all, with the same result. ``name``
        (hashable), if given, stands for these arguments whenever they recur (a phase that
        a run sends thousands of times: telling them apart by their values costs more than
        the rest of a transfer of thousands of flows).
        """
        done = Event(self.env)
        plan = None if name is None else self._named.get(name)
        if plan is None:
            src, dst = np.asarray(src), np.asarray(dst)
            key = (src.tobytes(), dst.tobytes(), _key(size_bytes), rounds,
                   _key(latency_rounds), _key(latency_s), _key(wire_factor), instances)
            plan = self._plans.get(key)
            if plan is None:
                plan = self._plan(src, dst, size_bytes, rounds, latency_rounds, latency_s,
                                  wire_factor, instances)
                if len(self._plans) >= self.PLAN_LIMIT:
                    self._plans.clear()
                    self._named.clear()
                self._plans[key] = plan
            if name is not None:
                self._named[name] = plan
        if plan.flows == 0:
            return done.succeed()
        self.bytes_injected += plan.payload_bytes
        self.flows_started += plan.flows
        batch = _Batch(pending=plan.flows, done=done)
        for group, size, uniform in zip(plan.groups, plan.sizes, plan.uniform):
            seg = _Segment(batch, size, None if uniform else size.copy(), float(size[0]),
                           group.flow_of, group.link_of, group.links, group.local,
                           group.counts, group.k, group.copies, group.footprint,
                           relabelling=group.relabelling)
            Timeout(self.env, group.latency_s).callbacks.append(partial(self._activate, seg))
        return done

    def _plan(self, src: np.ndarray, dst: np.ndarray, size_bytes: np.ndarray | float,
              rounds: int, latency_rounds: int | np.ndarray | None,
              latency_s: np.ndarray | None, wire_factor: np.ndarray | None,
              instances: int) -> _Plan:
        """What ``transfer`` starts for these arguments. Routes and latencies do not change
        during a run and a step repeats its phases thousands of times, so each distinct
        phase is routed and grouped once (until ``scale_links``)."""
        size = np.broadcast_to(np.asarray(size_bytes, dtype=float), src.shape) * rounds
        keep = (src != dst) & (size > 0)
        src, dst, size = src[keep], dst[keep], size[keep]
        if len(src) == 0:
            return _Plan(0, 0.0, [], [], [])
        payload = float(size.sum())
        if wire_factor is not None:
            size = size * np.broadcast_to(np.asarray(wire_factor, dtype=float), keep.shape)[keep]
        layout = self._layout(src, dst, keep, rounds, latency_rounds, latency_s,
                              instances if self.symmetry
                              and len(src) >= self.MIN_COPY_FLOWS else 0)
        if layout[0].k > 1 and not repeats(size, layout[0].k):  # copies of unequal sizes
            layout = self._layout(src, dst, keep, rounds, latency_rounds, latency_s, 0)
        sizes = [size[g.members] for g in layout]
        return _Plan(len(src), payload, layout, sizes,
                     [bool(x.min() == x.max()) for x in sizes])

    def scale_links(self, edges: np.ndarray, factor: float) -> None:
        """From now on, links ``edges`` carry ``factor`` of their nominal bandwidth (a
        transient slow link; factor 1 restores it). Flows in flight keep what they have sent
        and go on at the new fair rates. Copies need not be identical from now on: copy
        sets in flight are expanded and later phases are simulated flow by flow."""
        self._advance()
        self.symmetry = False
        self._plans.clear()
        self._named.clear()
        self._segments = [self._expand(s) if s.k > 1 else s for s in self._segments]
        self.capacity_Bps[edges] = self.topology.capacity_Bps[edges] * factor
        self._solver.forget()
        self._reschedule(self._segments)

    def _layout(self, src: np.ndarray, dst: np.ndarray, keep: np.ndarray, rounds: int,
                latency_rounds: int | np.ndarray | None, latency_s: np.ndarray | None,
                instances: int) -> list[_Group]:
        """The routed flows ``src[i] -> dst[i]`` (those kept), grouped by their latency, and
        of the first instance only when the ``instances`` are identical link-disjoint copies
        but for their sizes (which the caller checks); with one instance, each flow is tried
        as a copy (a point-to-point send of every replica); 0: no copies."""
        links, starts, lengths = routes = self.topology.flow_routes(src, dst)
        if latency_s is None:
            latency = np.add.reduceat(self.topology.latency_s[links], starts)
            steps = rounds if latency_rounds is None else latency_rounds
            latency = latency * np.broadcast_to(np.asarray(steps, dtype=float), keep.shape)[keep]
        else:
            latency = np.broadcast_to(np.asarray(latency_s, dtype=float), keep.shape)[keep]
        copies = None
        if instances > 1:
            copies = copy_set(instances, keep, [latency], routes, self.capacity_Bps)
        elif instances == 1 and len(src) > 1:
            copies = copy_set(len(src), np.ones(len(src), dtype=bool), [latency], routes,
                              self.capacity_Bps)
        if copies is not None:
            latency = latency[:copies.m]
        groups = [_Group.of(float(lat), np.flatnonzero(latency == lat), routes, copies)
                  for lat in np.unique(latency)]
        if copies is None:
            return groups
        return [replace(g, relabelling=self._relabelling(g.links, g.copies)) for g in groups]

    def _relabelling(self, links: np.ndarray, copies: np.ndarray) -> int:
        """Which relabelling (links, copies) is, and the column of copies of each link."""
        key = (links.tobytes(), copies.tobytes())
        found = self._relabellings.get(key)
        if found is None:
            found = self._relabellings[key] = len(self._columns_of)
            ids = []
            for column in copies.T:
                ids.append(self._column_ids.setdefault(column.tobytes(), len(self._columns)))
                if ids[-1] == len(self._columns):
                    self._columns.append(column.copy())
            self._columns_of.append(np.array(ids, dtype=np.intp))
        return found

    # --- the fluid model --------------------------------------------------------------------

    def _advance(self) -> None:
        """Move every active flow forward to now at its current rate."""
        dt = self.env.now - self._last_t
        self._last_t = self.env.now
        if dt <= 0:
            return
        for seg in self._segments:
            if seg.remaining is None:
                seg.left -= seg.speed * dt
            else:
                seg.remaining -= seg.rate * dt

    def _activate(self, seg: _Segment, _latency_elapsed: simpy.Event) -> None:
        """Segment ``seg`` starts sending once its flows' latency has elapsed."""
        self._advance()
        if self._copy_sets or seg.k > 1:
            self._reschedule(self._admit(seg))
        else:
            self._reschedule([seg], alone=self._start(seg))

    def _start(self, seg: _Segment) -> bool:
        """``seg`` is in flight from now on (its links' records brought up to date);
        whether it shares no link with the others."""
        if self._chains:
            self._settle(seg.links)
        self._segments.append(seg)
        return self._cross(seg.links, 1)

    def _cross(self, links: np.ndarray, change: int) -> bool:
        """One more (``change`` 1) or one fewer (-1) segment crosses ``links`` (distinct)
        from now on; whether that was the first (the last) on every one. A link's busy
        time runs from when the first starts to cross it until the last stops."""
        users = self._users[links]
        self._users[links] = users + change
        turns = users == (0 if change > 0 else 1)
        turned = links if turns.all() else links[turns]
        if change > 0:
            self._busy_since[turned] = self.env.now
        else:
            self._busy_s[turned] += self.env.now - self._busy_since[turned]
        return turned is links

    def _end(self, seg: _Segment) -> bool:
        """Every flow of ``seg`` has ended: its links get its bytes, its busy time ends;
        whether nothing in flight crosses them now."""
        self._bytes[seg.links] += seg.sent()
        idle = self._cross(seg.links, -1)
        if seg.k > 1:
            self._release(seg, seg.links, seg.copies, defer=True)
        return idle

    # --- copy sets (dlsim.network.symmetry) ---------------------------------------------------

    def _meets(self, a: _Segment, b: _Segment) -> bool:
        """Whether ``a`` and ``b`` in flight together cannot both keep their copy sets."""
        fa, fb = a.footprint, b.footprint
        if a.k == 1 and b.k == 1 or fa is None or fb is None:
            return False
        key = (fa.uid, fb.uid)
        ok = self._compatible.get(key)
        if ok is None:
            ok = self._compatible[key] = compatible(fa, fb)
        return not ok

    def _admit(self, seg: _Segment) -> list[_Segment]:
        """Add ``seg`` to the flows in flight, expanding copy sets (its own first) until
        every pair in flight is compatible; the segments whose flows changed."""
        meets = [t for t in self._segments if self._meets(seg, t)]
        if not meets:
            self._start(seg)
            if seg.k > 1:
                self._hold(seg)
            return [seg]
        if seg.k > 1:
            seg = seg.expanded()
        self._start(seg)
        changed = [seg]
        queue = [seg]
        while queue and self._copy_sets:
            new = queue.pop()
            for i, t in enumerate(self._segments):
                if t.k > 1 and t is not new and self._meets(new, t):
                    self._segments[i] = t = self._expand(t)
                    changed.append(t)
                    queue.append(t)
        return changed

    def _expand(self, seg: _Segment) -> _Segment:
        """``seg`` flow by flow from now on, its copies' records brought up to date."""
        links = seg.links  # their busy time so far (they are busy), split here
        self._busy_s[links] += self.env.now - self._busy_since[links]
        self._busy_since[links] = self.env.now
        self._release(seg, links, seg.copies)
        full = seg.expanded()
        self._cross(np.setdiff1d(full.links, links, assume_unique=True), 1)
        return full

    def _hold(self, seg: _Segment) -> None:
        """Copy set ``seg`` takes its links: their records from now on are its copies'."""
        links = seg.links
        fresh = links[self._held[links] == 0]
        self._held_records[:, fresh] = self._records[:, fresh]
        self._held[links] += 1
        self._copy_sets += 1

    def _release(self, seg: _Segment, links: np.ndarray, copies: np.ndarray,
                 ends: bool = True, defer: bool = False) -> None:
        """Copy set ``seg`` leaves representative ``links`` (``copies`` theirs): where no
        other copy set holds one, its copies get the bytes and busy time it gained since it
        was taken (its very records where a copy's history was the same). With ``defer``
        (a whole copy set that ended) they may get them when someone reads them."""
        self._copy_sets -= int(ends)
        if len(links) == 0:
            return
        self._held[links] -= 1
        last = self._held[links] == 0
        if not last.any():
            return
        records = self._records
        if defer and seg.relabelling >= 0:
            last &= ~self._defer(seg.relabelling, links, last, self._held_records[:, links],
                                 records[:, links])
            if not last.any():
                return
        if not last.all():
            links, copies = links[last], copies[:, last]
        self._settle(copies)
        now, then, was = records[:, None, links], self._held_records[:, None, links], \
            records[:, copies]
        records[:, copies] = np.where(was == then, now, was + (now - then))

    def _defer(self, relabelling: int, links: np.ndarray, last: np.ndarray,
               then: np.ndarray, now: np.ndarray) -> np.ndarray:
        """Keep the release of representative links ``last`` (``_release``'s, records
        ``then`` at the hold and ``now``) for when someone reads their copies; which ones
        were kept. A copy that started like its representative (its records were the
        representative's at its first release) goes through the same numbers at every
        release as every such copy, so a chain of releases of one link to one column of
        copies is one value per representative link; a copy that did not is given its
        release now, and so is the column of another chain, once that chain is given."""
        column = self._columns_of[relabelling][last]
        reps = links[last]
        then, now = then[:, last], now[:, last]
        chained = self._chain_column[reps]
        same = chained == column
        value = self._chain_value
        if same.all():  # every link's chain goes on: the common case
            v = value[:, reps]
            value[:, reps] = np.where(v == then, now, v + (now - then))
            return last
        if (chained[~same] >= 0).any():
            self._give(reps[~same][chained[~same] >= 0])
        go_on = np.flatnonzero(same)
        if len(go_on):
            r = reps[go_on]
            v = value[:, r]
            value[:, r] = np.where(v == then[:, go_on], now[:, go_on],
                                   v + (now[:, go_on] - then[:, go_on]))
        kept = same.copy()
        for i in np.flatnonzero(~same).tolist():
            copies = self._columns[int(column[i])]
            self._settle(copies)
            if not (self._records[:, copies] == then[:, i, None]).all():
                continue
            value[:, reps[i]] = now[:, i]
            self._chain_column[reps[i]] = column[i]
            self._waits[copies] = reps[i]
            self._chains += 1
            kept[i] = True
        out = np.zeros(len(links), dtype=bool)
        out[np.flatnonzero(last)[kept]] = True
        return out

    def _settle(self, links: np.ndarray | None = None) -> None:
        """The deferred releases that ``links`` wait for (all: None) given to them."""
        if not self._chains:
            return
        if links is None:
            self._give(np.flatnonzero(self._chain_column >= 0))
            return
        waits = self._waits[links]
        waits = waits[waits >= 0]
        if len(waits):
            self._give(np.unique(waits))

    def _give(self, reps: np.ndarray) -> None:
        """The chains of representative links ``reps`` given to their copies."""
        for rep in reps.tolist():
            copies = self._columns[int(self._chain_column[rep])]
            self._records[:, copies] = self._chain_value[:, rep, None]
            self._waits[copies] = -1
            self._chain_column[rep] = -1
            self._chains -= 1

    def _component(self, changed: list[_Segment], freed: np.ndarray | None,
                   alone: bool = False) -> list[_Segment]:
        """The active segments connected through shared links to the ``changed`` ones and
        to the links of finished flows (``freed``); ``alone``: nothing else crosses their
        links (known already)."""
        if alone:
            return changed
        users = self._users
        if freed is None:
            if len(changed) == 1 and users[changed[0].links].max() == 1:
                return changed  # it shares no link: the common case, found in one look
            touched = [s.links for s in changed]
        elif not changed:
            if users[freed].max() == 0:
                return []  # nothing in flight crosses them
            touched = [freed]
        else:
            touched = [s.links for s in changed] + [freed]
        links = np.concatenate(touched) if len(touched) > 1 else touched[0]
        mark = self._mark
        marked = [links]
        mark[links] = True
        affected: list[_Segment] = []
        rest = self._segments
        grew = True
        while grew:
            grew = False
            outside = []
            for seg in rest:
                if mark[seg.links].any():
                    affected.append(seg)
                    mark[seg.links] = True
                    marked.append(seg.links)
                    grew = True
                else:
                    outside.append(seg)
            rest = outside
        for m in marked:
            mark[m] = False
        return affected

    def _solve(self, segments: list[_Segment]) -> None:
        """New max-min rates for ``segments`` (a union of whole components)."""
        if len(segments) == 1:
            seg = segments[0]
            seg.rate = self._solver.rates(seg.flow_of, seg.link_of, len(seg.size))
            return
        offsets = np.cumsum([0] + [len(s.size) for s in segments])
        flow_of = np.concatenate([s.flow_of + o for s, o in zip(segments, offsets)])
        link_of = np.concatenate([s.link_of for s in segments])
        rates = self._solver.rates(flow_of, link_of, int(offsets[-1]))
        for seg, a, b in zip(segments, offsets[:-1], offsets[1:]):
            seg.rate = rates[a:b]

    def _reschedule(self, changed: list[_Segment], freed: np.ndarray | None = None,
                    alone: bool = False) -> None:
        """Solve the rates of the component that ``changed`` segments and the links of
        finished flows (``freed``) touch (``alone``: just those segments, nothing else
        crosses those links), then wake up at the next flow completion."""
        self._generation += 1
        if not self._segments:
            return
        if changed or freed is not None:
            component = self._component(changed, freed, alone)
            if component:
                self._solve(component)
                for seg in component:
                    seg.rated()
        dt = min(s.left / s.speed if s.remaining is None else float((s.remaining / s.rate).min())
                 for s in self._segments)
        generation = self._generation
        Timeout(self.env, max(dt, 0.0)).callbacks.append(
            lambda _ev: self._complete(generation, dt))

    def _complete(self, generation: int, dt: float) -> None:
        if generation != self._generation:
            return  # the flow set changed since this wake-up was scheduled
        self._advance()
        # finished within rounding of the clock (relative 1e-9 of this interval, or a few
        # ulps of the absolute time, so that a tiny remainder cannot stall the clock)
        slack = dt * 1e-9 + self.env.now * 1e-14
        kept: list[_Segment] = []
        freed: list[np.ndarray] = []
        idle = True  # nothing in flight crosses the links of the flows that ended
        for seg in self._segments:
            if seg.remaining is None:
                if seg.left > seg.speed * slack:
                    kept.append(seg)
                    continue
                done = None
            else:
                done = seg.remaining <= seg.rate * slack
                if not done.any():
                    kept.append(seg)
                    continue
                if not done.all():
                    seg = self._finish_some(seg, done, freed)
                    kept.append(seg)
                    idle = False
                    continue
            seg.batch.pending -= len(seg.size) * seg.k
            if seg.batch.pending == 0:
                seg.batch.done.succeed()
            freed.append(seg.links)
            idle &= self._end(seg)
        self._segments = kept
        self._reschedule([], np.concatenate(freed) if freed else None, idle)

    def _finish_some(self, seg: _Segment, done: np.ndarray,
                     freed: list[np.ndarray]) -> _Segment:
        """Flows ``done`` of ``seg`` (not all) have ended; the segment of those left."""
        seg.batch.pending -= int(done.sum()) * seg.k
        if seg.batch.pending == 0:
            seg.batch.done.succeed()
        freed.append(seg.link_of[done[seg.flow_of]])
        self._bytes[seg.links] += seg.sent(done)
        left, (seg, dropped) = seg, seg.without(done)
        self._cross(left.links[dropped], -1)
        if seg.k > 1 and dropped.any():
            self._release(left, left.links[dropped], left.copies[:, dropped], ends=False)
        return seg
