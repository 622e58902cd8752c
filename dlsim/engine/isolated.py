"""A run's schedule while no two transfers share a link, found without simulating it.

While every transfer has its links to itself, each takes the time it takes alone, and the
programs' timing is a longest-path evaluation: an op starts when its stream is free and its
dependencies have ended, a collective when its last simulated member arrives, a compute op
ends its duration later and a collective its phases' isolated times later. That is what the
event-driven engine computes too (the same sums, in the same order for each stream), at a
few dictionary operations per op instead of several SimPy events and a fluid-network update
per transfer. A 3D step's thousands of tensor all-reduces and pipeline sends mostly keep
their links to themselves.

``evaluate`` walks the programs in dependency order; ``first_shared`` finds the first moment
the assumption fails (two transfers on one link at once), before which the schedule is
exact. The engine takes the schedule whole when that moment never comes, and otherwise
simulates from a cut before it (``dlsim.engine.core``).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import simpy

from dlsim.contract.program import Collective, Compute, Op
from dlsim.contract.span import Span
from dlsim.hardware.topology import Topology
from dlsim.network.backend import NetworkFactory

PROGRESS_EVERY = 8192  # ops evaluated between two calls of the observer


class Send(Protocol):
    """A phase as the engine sends it (``Network.transfer``'s arguments)."""

    @property
    def src(self) -> np.ndarray: ...
    @property
    def dst(self) -> np.ndarray: ...
    @property
    def size_bytes(self) -> np.ndarray | float: ...
    @property
    def rounds(self) -> int: ...
    @property
    def latency_rounds(self) -> int | np.ndarray: ...
    @property
    def latency_s(self) -> np.ndarray | None: ...
    @property
    def wire_factor(self) -> np.ndarray | None: ...


@dataclass(frozen=True)
class Alone:
    """One phase sent alone on an idle network: how long it takes, the links it uses and
    what it leaves in the records (``values[0]`` bytes, ``values[1]`` busy seconds per link
    of ``links``)."""

    duration_s: float
    links: np.ndarray
    values: np.ndarray
    payload_bytes: float
    flows: int


class AloneCosts:
    """Each distinct phase sent once on a fresh network of its own (a fresh environment at
    time 0), remembered: a step sends the same phases thousands of times."""

    def __init__(self, network: NetworkFactory, topology: Topology):
        self.network = network
        self.topology = topology
        self._costs: dict[Hashable, Alone] = {}

    def of(self, send: Send, instances: int) -> Alone:
        key = (send, instances)
        cost = self._costs.get(key)
        if cost is None:
            env = simpy.Environment()
            net = self.network(env, self.topology)
            done = net.transfer(send.src, send.dst, send.size_bytes, send.rounds,
                                send.latency_rounds, send.latency_s, send.wire_factor,
                                instances)
            env.run(until=done)
            records = np.vstack([net.link_bytes, net.link_busy_s])
            links = np.flatnonzero(records.any(axis=0))
            cost = self._costs[key] = Alone(env.now, links, records[:, links],
                                            net.bytes_injected, net.flows_started)
        return cost


@dataclass
class Execution:
    """One collective as the schedule runs it: when its last member arrived, when it
    ended, and each phase it sent (its cost and start)."""

    op: Collective
    start_s: float
    end_s: float
    sends: list[tuple[Alone, float]]
    members: list[tuple[int, str, int, float]]  # rank, stream, block, arrival


@dataclass
class Schedule:
    """The programs' timing under the assumption: each op's start (a collective's: when
    its rank arrived) and end, the spans the engine would have recorded (by rank, stream
    and block), the collectives run and those some members wait at (``pending``: key ->
    members). Up to ``until_s`` only, where two phases share a link before it
    (``shared_s``, the first moment they do); ``complete``: every op ran (where not, and
    nothing shared a link, a deadlock, which the event-driven engine reports)."""

    begin: dict[int, list[float]]
    end: dict[int, list[float]]
    spans: dict[tuple[int, str, int], list[Span]]
    executions: list[Execution]
    pending: dict[str, list[tuple[int, str, int, float]]]
    stream_end: dict[tuple[int, str], float]
    shared_s: float
    complete: bool

    @property
    def end_s(self) -> float:
        return max(self.stream_end.values(), default=0.0)


def evaluate(programs: dict[int, list[Op]], placement: np.ndarray,
             streams: dict[int, dict[str, list[list[int]]]],
             expected: Callable[[Collective], int],
             lowered: Callable[[Collective], tuple[list[list], int]], costs: AloneCosts,
             horizons: list[float], observer: Callable[[float], None] | None = None
             ) -> Schedule:
    """The schedule of ``programs`` (their ops in ``streams``: per rank and stream the runs
    of ops that share one event, as the engine groups them) while no transfer waits for a
    link; ``expected(op)``: the simulated members of a collective's group; ``lowered(op)``:
    its phase lists and instances, as the engine sends them. The ops starting before each
    of ``horizons`` (increasing, the last inf) are evaluated in turn, and the evaluation
    stops at the first horizon before which two phases share a link: a run whose links
    meet early is not evaluated to its end for nothing."""
    nan = float("nan")
    begin = {r: [nan] * len(p) for r, p in programs.items()}
    end = {r: [nan] * len(p) for r, p in programs.items()}
    pos: dict[tuple[int, str], int] = {}
    free: dict[tuple[int, str], float] = {}
    arrived: set[tuple[int, str]] = set()  # streams waiting in a collective
    waiting: dict[tuple[int, int], list[tuple[int, str]]] = defaultdict(list)
    rendezvous: dict[str, list[tuple[int, str, int, float]]] = {}  # key -> members
    spans: dict[tuple[int, str, int], list[Span]] = {}
    executions: list[Execution] = []
    chains: dict[int, list[list[Alone]]] = {}  # per lowered collective, its phases' costs
    work = [(r, s) for r in programs for s in streams[r]]
    for key in work:
        pos[key], free[key] = 0, 0.0
    queued = set(work)  # each stream once in the work list
    evaluated, reached = 0, 0.0
    shared = float("inf")

    def wake(woken: list[tuple[int, str]]) -> None:
        for stream in woken:
            if stream not in queued:
                queued.add(stream)
                work.append(stream)

    for horizon in horizons:
        later: list[tuple[int, str]] = []  # streams whose next op starts after the horizon
        while work:
            key = work.pop()
            queued.discard(key)
            if key in arrived:
                continue
            rank, stream = key
            blocks, program = streams[rank][stream], programs[rank]
            row_begin, row_end = begin[rank], end[rank]
            device = int(placement[rank])
            k, t_free = pos[key], free[key]
            while k < len(blocks):
                block = blocks[k]
                op = program[block[0]]
                t = t_free
                blocked = False
                for d in op.deps:
                    e = row_end[d]
                    if e != e:  # not ended yet
                        waiting[(rank, d)].append(key)
                        blocked = True
                        break
                    if e > t:
                        t = e
                if blocked:
                    break
                if t >= horizon:
                    later.append(key)
                    break
                evaluated += len(block)
                if t > reached:
                    reached = t
                if observer is not None and evaluated % PROGRESS_EVERY < len(block):
                    observer(reached)  # ops are taken in dependency order: the clock so far
                if isinstance(op, Compute):
                    ran = spans[(rank, stream, k)] = []
                    for i in block:
                        c = program[i]
                        start, t = t, t + c.duration_s  # type: ignore[union-attr]
                        row_begin[i] = start
                        ran.append(Span(device, stream, c.name, "compute", start, t, c.role))
                        row_end[i] = t
                        if (rank, i) in waiting:
                            wake(waiting.pop((rank, i)))
                    k, t_free = k + 1, t
                    continue
                assert isinstance(op, Collective)
                row_begin[block[0]] = t
                if expected(op) == 1:  # the rank's alone in it (a symmetric run's tensor ops)
                    members, start = [(rank, stream, k, t)], t
                else:
                    members = rendezvous.setdefault(op.key, [])
                    members.append((rank, stream, k, t))
                    if len(members) < expected(op):
                        arrived.add(key)
                        break
                    del rendezvous[op.key]
                    start = max(m[3] for m in members)
                entry = lowered(op)
                phase_costs = chains.get(id(entry))
                if phase_costs is None:
                    plans, instances = entry
                    phase_costs = chains[id(entry)] = [
                        [costs.of(send, instances) for send in phases] for phases in plans]
                sends, finish = [], start
                for phases in phase_costs:
                    at = start
                    for cost in phases:
                        sends.append((cost, at))
                        at = at + cost.duration_s
                    if at > finish:
                        finish = at
                executions.append(Execution(op, start, finish, sends, members))
                for r, s, b, arrival in members:
                    dev = device if r == rank else int(placement[r])
                    i = streams[r][s][b][0]
                    mine = programs[r][i]  # each member's span has its own op's name
                    ran = spans[(r, s, b)] = []
                    if start > arrival:
                        ran.append(Span(dev, s, mine.name, "wait", arrival, start, mine.role))
                    ran.append(Span(dev, s, mine.name, "comm", start, finish, mine.role))
                    end[r][i] = finish
                    if (r, i) in waiting:
                        wake(waiting.pop((r, i)))
                    if (r, s) != key:
                        arrived.discard((r, s))
                        pos[(r, s)], free[(r, s)] = b + 1, finish
                        wake([(r, s)])
                k, t_free = k + 1, finish
            pos[key], free[key] = k, t_free
        shared = first_shared(executions)
        if shared < horizon:
            break
        work = later
        queued = set(later)
    complete = all(pos[key] == len(streams[key[0]][key[1]]) for key in pos)
    return Schedule(begin, end, spans, executions, rendezvous, dict(free), shared, complete)


def private(programs: dict[int, list[Op]],
            lowered: Callable[[Collective], tuple[list[list], int]],
            costs: AloneCosts) -> set[int]:
    """The lowered collectives (by ``id`` of ``lowered(op)``) whose links no other traffic
    can ever cross while they are in flight: every phase crossing any of their links is
    sent by collectives that share a member stream with them, and a stream runs one op at
    a time. Such a collective always takes its phases' times alone, whatever else runs
    (a tensor all-reduce inside a node, which nothing but the node's tensor collectives
    crosses). A collective whose instances run as separate chains at once is never one."""
    members: dict[str, set[tuple[int, str]]] = defaultdict(set)  # per collective, its streams
    entries: dict[int, tuple[list[list], int]] = {}
    entries_of: dict[str, set[int]] = defaultdict(set)  # the members' ops may differ
    for rank, program in programs.items():
        for op in program:
            if isinstance(op, Collective):
                entry = lowered(op)
                entries[id(entry)] = entry
                entries_of[op.key].add(id(entry))
                members[op.key].add((rank, op.stream))
    # per lowered collective, the streams every collective sending it has among its members
    issuers: dict[int, set[tuple[int, str]]] = {}
    for key, streams in members.items():
        for entry_id in entries_of[key]:
            common = issuers.get(entry_id)
            issuers[entry_id] = streams if common is None else common & streams
    # per link, the lowered collectives crossing it; links of concurrent chains are shared
    crossing: dict[int, set[int]] = defaultdict(set)
    chained: set[int] = set()
    for entry_id, (plans, instances) in entries.items():
        for phases in plans:
            for send in phases:
                links = costs.of(send, instances).links.tolist()
                for link in links:
                    crossing[link].add(entry_id)
                if len(plans) > 1:
                    chained.update(links)
    shared: set[int] = set()
    for link, keys in crossing.items():
        if link in chained or not set.intersection(*(issuers[k] for k in keys)):
            shared.update(keys)
    return {key for key, (plans, _) in entries.items() if len(plans) == 1} - shared


def first_shared(executions: list[Execution]) -> float:
    """The first moment two phases in flight share a link (inf: never): up to it every
    phase has its links to itself, and so the schedule is exact. Phases that meet only end
    to start do not share."""
    by_cost: dict[int, list[tuple[float, float]]] = defaultdict(list)
    alone: dict[int, Alone] = {}
    for execution in executions:
        for cost, at in execution.sends:
            if cost.duration_s > 0 and len(cost.links):
                by_cost[id(cost)].append((at, at + cost.duration_s))
                alone[id(cost)] = cost
    ids = list(by_cost)
    intervals = {i: np.array(by_cost[i]) for i in ids}
    # every phase may meet itself; two phases only where some link carries both: the links
    # crossed by more than one, and per such link the phases crossing it
    pairs = {(i, i) for i in ids}
    if len(ids) > 1:
        links = np.concatenate([alone[i].links for i in ids])
        owner = np.repeat(np.arange(len(ids)), [len(alone[i].links) for i in ids])
        order = np.argsort(links, kind="stable")
        links, owner = links[order], owner[order]
        shared = np.flatnonzero(np.r_[links[1:] == links[:-1], False]
                                | np.r_[False, links[1:] == links[:-1]])
        crossing: dict[int, list[int]] = defaultdict(list)
        for link, who in zip(links[shared].tolist(), owner[shared].tolist()):
            crossing[link].append(ids[who])
        pairs |= {(min(a, b), max(a, b)) for users in {tuple(u) for u in crossing.values()}
                  for n, a in enumerate(users) for b in users[n + 1:]}
    first = float("inf")
    for a, b in pairs:
        first = min(first, _first_overlap(intervals[a], intervals[b] if b != a else None))
    return first


def _first_overlap(a: np.ndarray, b: np.ndarray | None) -> float:
    """The earliest start of an interval of one list that begins strictly inside an
    interval of the other (``b`` None: of two intervals of ``a``)."""
    if b is None:
        order = np.argsort(a[:, 0], kind="stable")
        starts, ends = a[order, 0], a[order, 1]
        before = np.maximum.accumulate(ends)[:-1]
        hit = np.flatnonzero(starts[1:] < before)
        return float(starts[1:][hit].min()) if len(hit) else float("inf")
    both = np.concatenate([a, b])
    label = np.r_[np.zeros(len(a), dtype=bool), np.ones(len(b), dtype=bool)]
    order = np.lexsort((both[:, 1], both[:, 0]))
    starts, ends, label = both[order, 0], both[order, 1], label[order]
    first = float("inf")
    for mine in (False, True):
        other_end = np.where(label != mine, ends, -np.inf)
        reach = np.maximum.accumulate(other_end)
        # an interval of ``mine`` starting inside one of the other list that began earlier
        hit = np.flatnonzero((label[1:] == mine) & (starts[1:] < reach[:-1]))
        if len(hit):
            first = min(first, float(starts[1:][hit].min()))
    return first
