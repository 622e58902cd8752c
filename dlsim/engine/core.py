"""The discrete-event engine: devices walk their programs on streams in one SimPy environment.

Each simulated rank runs one SimPy process per stream (compute, comm), so compute and
communication overlap exactly as far as the program's dependencies allow. A collective starts
when every simulated member of its group has reached it (the wait before that is recorded)
and then runs its phases on the shared network: the backend given to the engine
(``dlsim.network.backend``; the fluid max-min network unless told otherwise).

Contention: a collective with ``contention`` u > 0 takes that share of its rank's compute
throughput from the moment the rank launches it until it ends (its kernels hold SMs and HBM
bandwidth even while they wait for peers), so a compute op overlapped with it progresses at
1 - u of its speed (the largest u in flight when several are): a compute op of length a
overlapped from its start by one such collective of length b ends at a + u·b when
b < a / (1 - u), else at a / (1 - u). Ranks whose programs hold no such collective run their
compute as plain timeouts.

Symmetry: a homogeneous job may be given programs for representative ranks only. Their peers'
traffic still crosses the network (a collective's phases always carry every member's flows),
but their identical compute is not re-simulated; the result is the same as running every rank.
A phase carrying the instances of a collective says how many it carries, so that the network
can solve identical link-disjoint instances as one (``dlsim.network.symmetry``).

Fewer events: a run of compute ops on one stream that nothing outside the stream waits on
between them (a forward pass without communication) takes one timeout at the run's end,
the ops' own ends found by adding their durations in order exactly as one timeout each
would; their spans enter the timeline at those ends, in the order one event each would have
given. A collective's phases chain by callbacks, without a SimPy process of their own.

Isolated transfers: until two transfers first share a link at once, each takes the time it
takes alone, and the run's schedule is a longest-path evaluation of the programs
(``dlsim.engine.isolated``), done without events. A run in which that moment never comes
(most symmetric steps) is taken from that schedule whole; otherwise the engine starts at a
cut before that moment, from the schedule's state there (what has ended, what is in flight
and ends before it, who waits at which collective), and simulates the rest. Both give what
simulating from time zero gives; ``fast_forward=False`` simulates from time zero.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Callable, Generator
from dataclasses import dataclass, field

import numpy as np
import simpy
from simpy.events import NORMAL, Event, Timeout

from dlsim.contract.program import Collective, Compute, Op
from dlsim.contract.span import Span
from dlsim.engine.isolated import (
    Alone,
    AloneCosts,
    Execution,
    Schedule,
    evaluate,
    private,
)
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import Phase, merge_phases
from dlsim.network.backend import NetworkBackend, NetworkFactory
from dlsim.network.fluid import Network
from dlsim.network.symmetry import moved
from dlsim.network.tuner import plan_collective

Observer = Callable[[float, float], None]  # (simulated time now, estimated end), in seconds
OBSERVE_EVERY = 4096  # events between two calls of a run's observer
# the isolated schedule is evaluated up to these fractions of the run's compute floor in
# turn, and no further once two transfers have shared a link before one
HORIZONS = (1 / 32, 1 / 8, 1 / 2)


class CountingEnvironment(simpy.Environment):
    """A SimPy environment that counts the events it processes (for events/s figures) and
    tells an observer, if it has one, how far the clock is every ``OBSERVE_EVERY`` events."""

    def __init__(self) -> None:
        super().__init__()
        self.events_processed = 0
        self.observer: Callable[[float], None] | None = None

    def step(self) -> None:
        self.events_processed += 1
        if self.observer is not None and self.events_processed % OBSERVE_EVERY == 0:
            self.observer(self.now)
        super().step()

    def timeout_at(self, when: float) -> simpy.Event:
        """An event at exactly ``when`` (``timeout(when - now)`` may round to a neighbour)."""
        return self.succeed_at(simpy.Event(self), when)

    def succeed_at(self, event: simpy.Event, when: float) -> simpy.Event:
        """``event`` succeeds at exactly ``when``."""
        event._ok = True
        event._value = None
        heapq.heappush(self._queue, (when, NORMAL, next(self._eid), event))
        return event


def _settled(env: simpy.Environment) -> simpy.Event:
    """An event that counts as processed at once, never queued: the end of a merged op that
    no one waits on."""
    event = simpy.Event(env)
    event._ok = True
    event._value = None
    event.callbacks = None  # type: ignore[assignment]
    return event


@dataclass
class _Rendezvous:
    expected: int
    done: simpy.Event
    arrived: int = 0
    start_s: float = 0.0


@dataclass
class EngineRun:
    """What one engine run measured."""

    end_s: float
    spans: list[Span]
    network: NetworkBackend
    events: int
    wall_s: float
    rank_end_s: dict[int, float] = field(default_factory=dict)
    bytes_by_role: dict[str, float] = field(default_factory=dict)  # injected, by op role


class Engine:
    """Runs per-rank programs over a topology; ``placement[rank]`` is the rank's device and
    ``network`` builds the run's network model on its environment."""

    def __init__(self, topology: Topology, programs: dict[int, list[Op]],
                 placement: np.ndarray, protocol: str = "ideal",
                 ps_hosts: np.ndarray | None = None, network: NetworkFactory = Network,
                 merge_compute: bool = True, fast_forward: bool = True):
        self.env = CountingEnvironment()
        self.merge_compute = merge_compute  # runs of compute ops in one timeout each
        self.fast_forward = fast_forward  # the isolated schedule up to the first shared link
        self.topology = topology
        self.network_factory = network
        self.protocol = protocol  # dlsim.network.protocol: ideal, nccl, LL, LL128 or Simple
        self.ps_hosts = ps_hosts  # devices of dedicated parameter servers (None: colocated)
        self.network = network(self.env, topology)
        self.programs = programs
        self.placement = np.asarray(placement)
        self.spans: list[Span] = []
        self.rank_end_s: dict[int, float] = {}
        self.bytes_by_role: dict[str, float] = {}
        self._done: dict[int, list[simpy.Event]] = {}  # per op, its end (made by run)
        # the ops some op waits on: only their ends need an event of their own
        self._waited = {r: {d for op in prog for d in op.deps} for r, prog in programs.items()}
        self._rendezvous: dict[str, _Rendezvous] = {}
        # by the identity of an op's group (the programs hold every group for the run), not
        # its value: hashing a group of thousands of ranks at every collective costs more
        self._expected: dict[int, int] = {}  # simulated members of a group
        self._lowered: dict[tuple, tuple[list[list[_Send]], int]] = {}
        self._plans: dict[tuple, list[Phase]] = {}
        # contention in flight by rank (the collectives' shares) and the event that tells
        # the rank's compute that it changed; only ranks with a contending collective
        self._contending: dict[int, list[float]] = {
            r: [] for r, prog in programs.items()
            if any(isinstance(op, Collective) and op.contention > 0 for op in prog)}
        self._contention_changed = {r: self.env.event() for r in self._contending}
        self._pending: list[tuple[float, float, int, Span]] = []  # merged ops' spans
        self._pending_seq = 0
        # collectives whose links are their own (isolated.private), sent without the
        # network: their phases' costs alone and how many times each was sent
        self._costs: AloneCosts | None = None
        self._private: set[int] = set()
        self._sent_alone: dict[int, tuple[Alone, int]] = {}

    def estimated_end_s(self) -> float:
        """A floor of the run's simulated length, known before it runs: the busiest
        simulated rank's compute (a progress bar's total)."""
        return max((sum(op.duration_s for op in program if isinstance(op, Compute))
                    for program in self.programs.values()), default=0.0)

    def run(self, observer: Observer | None = None) -> EngineRun:
        """Run every program to its end; ``observer(now, estimated end)`` is told the
        clock now and then (a progress bar)."""
        started = time.perf_counter()
        if observer is not None:
            estimate = self.estimated_end_s()
            self.env.observer = lambda now: observer(now, estimate)
        streams = {rank: self._streams(rank) for rank in self.programs}
        schedule = self._isolated(streams)
        if schedule is not None and schedule.shared_s == float("inf"):
            return self._taken(schedule, started)
        self._done = {r: [self.env.event() for _ in prog] for r, prog in self.programs.items()}
        if schedule is None:
            for rank, by_stream in streams.items():
                for stream, blocks in by_stream.items():
                    self.env.process(self._stream(rank, stream, blocks))
        else:
            assert self._costs is not None
            self._private = private(self.programs, self._lower, self._costs)
            self._resume(schedule, streams)
        self.env.run()
        self._record_pending(float("inf"))
        self._add_records_alone()
        unfinished = [(r, i) for r, evs in self._done.items()
                      for i, ev in enumerate(evs) if not ev.processed]
        if unfinished:
            rank, i = unfinished[0]
            raise RuntimeError(f"deadlock: rank {rank} never finished op "
                               f"{self.programs[rank][i].name!r}")
        return EngineRun(self.env.now, self.spans, self.network, self.env.events_processed,
                         time.perf_counter() - started, self.rank_end_s, self.bytes_by_role)

    def _taken(self, schedule: Schedule, started: float) -> EngineRun:
        """The run is the isolated schedule: no two transfers ever shared a link. Its spans
        in the order the events would have recorded them (by end, then start)."""
        self._sent_in(schedule.executions)
        self._add_records_alone()
        spans = [span for block in schedule.spans.values() for span in block]
        spans.sort(key=lambda span: (span.end_s, span.start_s))
        self.spans = spans
        for (rank, _stream), end_s in schedule.stream_end.items():
            self.rank_end_s[rank] = max(self.rank_end_s.get(rank, 0.0), end_s)
        return EngineRun(schedule.end_s, spans, self.network, self.env.events_processed,
                         time.perf_counter() - started, self.rank_end_s, self.bytes_by_role)

    def _streams(self, rank: int) -> dict[str, list[list[int]]]:
        """Rank ``rank``'s ops by stream, in the runs that share one event."""
        program = self.programs[rank]
        streams: dict[str, list[int]] = {}
        for i, op in enumerate(program):
            streams.setdefault(op.stream, []).append(i)
        waited = {d for op in program for d in op.deps if program[d].stream != op.stream}
        # a rank whose compute slows under its overlapped collectives runs each op on its
        # own: its durations depend on what is in flight when it runs
        return {stream: ([[i] for i in indices] if rank in self._contending
                         else self._blocks(program, indices, waited))
                for stream, indices in streams.items()}

    def _isolated(self, streams: dict[int, dict[str, list[list[int]]]]) -> Schedule | None:
        """The isolated schedule, where it may stand for the run: nothing else is scheduled
        on the environment (a slow link's process), compute takes its stated durations (no
        contention, ``merge_compute``), and every op runs (a deadlock is the event-driven
        engine's to report)."""
        if (not self.fast_forward or not self.merge_compute or self._contending
                or self.env._queue or type(self).duration_s is not Engine.duration_s):
            return None
        self._costs = AloneCosts(self.network_factory, self.topology)
        estimate = self.estimated_end_s()
        schedule = evaluate(self.programs, self.placement, streams, self._expected_of,
                            self._lower, self._costs,
                            [estimate * f for f in HORIZONS] + [float("inf")],
                            self.env.observer)
        return None if schedule.shared_s == float("inf") and not schedule.complete else schedule

    def _resume(self, schedule: Schedule, streams: dict[int, dict[str, list[list[int]]]]
                ) -> None:
        """Start the run at a cut before the schedule's first shared link (at its end where
        there is none): what ended before the cut is the schedule's, a compute run or a
        collective in flight at the cut ends when the schedule says (before the first
        shared link), and the members waiting at a collective not yet started wait on from
        the cut; the rest is simulated."""
        shared = schedule.shared_s
        cut = min([e.start_s for e in schedule.executions if e.start_s <= shared < e.end_s]
                  + [shared])
        self.env._now = cut
        self._sent_in([e for e in schedule.executions if e.start_s < cut])
        waiting: dict[tuple[int, str, int], tuple[_Rendezvous, float]] = {}
        gathering = [(e.op.key, e.members) for e in schedule.executions if e.start_s >= cut]
        for key, members in gathering + list(schedule.pending.items()):
            early = [m for m in members if m[3] < cut]
            if early:
                rank, stream, b, _arrival = early[0]
                first = self.programs[rank][streams[rank][stream][b][0]]
                assert isinstance(first, Collective)
                rv = self._rendezvous[key] = _Rendezvous(self._expected_of(first),
                                                         Event(self.env), len(early))
                for rank, stream, b, arrival in early:
                    waiting[(rank, stream, b)] = (rv, arrival)
        for rank, by_stream in streams.items():
            begin, end = schedule.begin[rank], schedule.end[rank]
            for stream, blocks in by_stream.items():
                n = 0  # the blocks begun before the cut
                while n < len(blocks) and begin[blocks[n][0]] < cut:
                    n += 1
                head: Generator | None = None
                for b in range(n):
                    if (rank, stream, b) in waiting:
                        head = self._wait_on(rank, stream, blocks[b][0],
                                             *waiting[(rank, stream, b)])
                        continue
                    for span in schedule.spans[(rank, stream, b)]:
                        self._pend(span)
                    if end[blocks[b][-1]] > cut:
                        head = self._until(rank, blocks[b], end[blocks[b][-1]])
                    else:
                        for i in blocks[b]:
                            self._done[rank][i] = _settled(self.env)
                if head is None and n == len(blocks):
                    self.rank_end_s[rank] = max(self.rank_end_s.get(rank, 0.0),
                                                schedule.stream_end[(rank, stream)])
                    continue
                self.env.process(self._resumed(rank, stream, head, blocks[n:]))

    def _sent_in(self, executions: list[Execution]) -> None:
        """The phases of collectives the schedule ran (whole, or before the cut), sent."""
        for e in executions:
            for cost, _at in e.sends:
                self._sent(cost, e.op.role)

    def _sent(self, cost: Alone, role: str) -> None:
        """A phase sent without the network: its payload to its op's role, its records to
        the network's when the run ends (``_add_records_alone``)."""
        self._sent_alone[id(cost)] = (cost, self._sent_alone.get(id(cost), (cost, 0))[1] + 1)
        self.bytes_by_role[role] = self.bytes_by_role.get(role, 0.0) + cost.payload_bytes

    def _add_records_alone(self) -> None:
        """The records, payload and flows of every phase sent alone, once per phase."""
        for cost, n in self._sent_alone.values():
            self.network.add_records(cost.links, cost.values * n, cost.payload_bytes * n,
                                     cost.flows * n)

    def _pend(self, span: Span) -> None:
        """A span the timeline takes when the clock passes its end."""
        self._pending_seq += 1
        heapq.heappush(self._pending, (span.end_s, span.start_s, self._pending_seq, span))

    def _until(self, rank: int, block: list[int], end_s: float) -> Generator:
        """A block in flight at the cut: it ends at ``end_s`` (its spans are pending)."""
        yield self.env.timeout_at(end_s)
        self._record_pending(self.env.now)
        for i in block:
            self._finish(rank, i)

    def _wait_on(self, rank: int, stream: str, i: int, rv: _Rendezvous,
                 arrival_s: float) -> Generator:
        """Op ``i``, a collective the rank reached at ``arrival_s`` before the cut, which
        starts after it."""
        op = self.programs[rank][i]
        device = int(self.placement[rank])
        yield rv.done
        if rv.start_s > arrival_s:
            self._record(Span(device, stream, op.name, "wait", arrival_s, rv.start_s, op.role))
        self._record(Span(device, stream, op.name, "comm", rv.start_s, self.env.now, op.role))
        self._finish(rank, i)

    def _resumed(self, rank: int, stream: str, head: Generator | None,
                 rest: list[list[int]]) -> Generator:
        if head is not None:
            yield from head
        yield from self._stream(rank, stream, rest)

    def duration_s(self, rank: int, op: Compute, start_s: float) -> float:
        """How long compute op ``op`` of ``rank`` takes when it starts at ``start_s``. A
        duration that depends on what else runs at that time must build the engine with
        ``merge_compute=False``: a merged run's durations are all taken at its start."""
        return op.duration_s

    def _blocks(self, program: list[Op], indices: list[int],
                waited: set[int]) -> list[list[int]]:
        """The ops of one stream (``indices``, in order) in runs that share one event: a
        compute op joins the run before it when that run's last op is a compute op no other
        stream waits on (``waited``: the ops another stream's ops wait on) and the op itself
        waits on nothing outside the stream."""
        if not self.merge_compute:
            return [[i] for i in indices]
        blocks: list[list[int]] = []
        for i in indices:
            op = program[i]
            if (blocks and isinstance(op, Compute) and isinstance(program[blocks[-1][-1]], Compute)
                    and blocks[-1][-1] not in waited
                    and all(d < i and program[d].stream == op.stream for d in op.deps)):
                blocks[-1].append(i)
            else:
                blocks.append([i])
        return blocks

    def _record(self, span: Span) -> None:
        """Add ``span`` to the timeline now, after the merged ops' spans that ended by now."""
        if self._pending and self._pending[0][0] <= self.env.now:
            self._record_pending(self.env.now)
        self.spans.append(span)

    def _record_pending(self, until_s: float) -> None:
        pending = self._pending
        while pending and pending[0][0] <= until_s:
            self.spans.append(heapq.heappop(pending)[3])

    def _stream(self, rank: int, stream: str, blocks: list[list[int]]) -> Generator:
        device = int(self.placement[rank])
        done = self._done[rank]
        program = self.programs[rank]
        for block in blocks:
            op = program[block[0]]
            for d in op.deps:
                if not done[d].processed:
                    yield done[d]
            start = self.env.now
            if len(block) > 1:
                yield from self._merged(rank, device, stream, block)
                continue
            if isinstance(op, Compute):
                if rank in self._contending:
                    yield from self._contended_compute(rank, self.duration_s(rank, op, start))
                else:
                    yield Timeout(self.env, self.duration_s(rank, op, start))
                self._record(Span(device, stream, op.name, "compute", start, self.env.now,
                                  op.role))
            else:
                rv = self._arrive(op)
                if op.contention > 0:
                    self._contend(rank, op.contention)
                yield rv.done
                if op.contention > 0:
                    self._contend(rank, -op.contention)
                if rv.start_s > start:
                    self._record(Span(device, stream, op.name, "wait", start, rv.start_s,
                                      op.role))
                self._record(Span(device, stream, op.name, "comm", rv.start_s,
                                  self.env.now, op.role))
            self._finish(rank, block[0])
        self.rank_end_s[rank] = max(self.rank_end_s.get(rank, 0.0), self.env.now)

    def _contend(self, rank: int, share: float) -> None:
        """A contending collective of the rank launched (``share`` > 0) or ended (< 0)."""
        shares = self._contending[rank]
        if share > 0:
            shares.append(share)
        else:
            shares.remove(-share)
        changed = self._contention_changed[rank]
        self._contention_changed[rank] = self.env.event()
        changed.succeed()

    def _contended_compute(self, rank: int, duration_s: float) -> Generator:
        """``duration_s`` of work at 1 - u of full speed while collectives with contention u
        are in flight on the rank, at full speed otherwise."""
        remaining = duration_s
        while remaining > 0:
            shares = self._contending[rank]
            speed = 1.0 - max(shares, default=0.0)
            started = self.env.now
            finished = self.env.timeout(remaining / speed)
            yield finished | self._contention_changed[rank]
            if finished.processed:
                return
            remaining -= (self.env.now - started) * speed

    def _merged(self, rank: int, device: int, stream: str, block: list[int]) -> Generator:
        """Compute ops ``block`` back to back in one timeout; each op's end is the sum of the
        durations before it, added one by one as the clock would have."""
        program = self.programs[rank]
        end = self.env.now
        for i in block:
            op = program[i]
            assert isinstance(op, Compute)
            start, end = end, end + self.duration_s(rank, op, end)
            self._pending_seq += 1
            # by end, then (as one timeout each would have been queued) by start
            heapq.heappush(self._pending, (end, start, self._pending_seq,
                                           Span(device, stream, op.name, "compute", start, end,
                                                op.role)))
        yield self.env.timeout_at(end)
        self._record_pending(self.env.now)
        for i in block:
            self._finish(rank, i)

    def _finish(self, rank: int, i: int) -> None:
        """Op ``i`` of ``rank`` ended now: its event fires if some op waits on it."""
        if i in self._waited[rank]:
            self._done[rank][i].succeed()
        else:
            self._done[rank][i] = _settled(self.env)

    def _expected_of(self, op: Collective) -> int:
        """The simulated members of the collective's group."""
        expected = self._expected.get(id(op.group))
        if expected is None:
            # distinct ranks: in a ring shift every rank is both a sender and a receiver
            expected = self._expected[id(op.group)] = len(self.programs.keys() & set(op.group))
        return expected

    def _arrive(self, op: Collective) -> _Rendezvous:
        rv = self._rendezvous.get(op.key)
        if rv is None:
            rv = self._rendezvous[op.key] = _Rendezvous(self._expected_of(op), Event(self.env))
        rv.arrived += 1
        if rv.arrived == rv.expected:
            rv.start_s = self.env.now
            lowered = self._lower(op)
            plans, instances = lowered
            if id(lowered) in self._private:
                self._alone(op, plans[0], instances, rv.done)
            elif len(plans) > 1:
                self.env.process(self._collective(plans, op, rv))
            else:
                self._chain(plans[0], 0, op, rv.done, instances)
        return rv

    def _alone(self, op: Collective, sends: list[_Send], instances: int,
               done: simpy.Event) -> None:
        """A collective whose links are its own: its phases' times alone, one event."""
        assert self._costs is not None
        end = self.env.now
        for send in sends:
            cost = self._costs.of(send, instances)
            end = end + cost.duration_s
            self._sent(cost, op.role)
        self.env.succeed_at(done, end)

    def _phases(self, group: np.ndarray, op: Collective,
                like: tuple[np.ndarray, list[Phase]] | None = None) -> list[Phase]:
        """The lowered phases, planned once per distinct collective (the buckets of a
        data-parallel step mostly share one size and group). ``like``: the devices and
        phases of another instance, moved here instead of planned where that is the same
        (``_moved``)."""
        devices = self.placement[group]
        key = (op.op, op.algorithm, op.size_bytes, op.servers, devices.tobytes())
        if key not in self._plans:  # nodes: plan_collective's default, each device's node
            phases = None if like is None else self._moved(op, *like, devices)
            self._plans[key] = phases if phases is not None else plan_collective(
                op.op, op.algorithm, devices, op.size_bytes, self.topology,
                self.protocol, op.servers, hosts=self.ps_hosts, timed=False).phases
        return self._plans[key]

    def _moved(self, op: Collective, first: np.ndarray, phases: list[Phase],
               devices: np.ndarray) -> list[Phase] | None:
        """The phases planned for a collective of one node's devices ``first``, moved to
        the same devices of another node, or None where planning could differ there: a
        chosen (not ``auto``) algorithm whose flows stay among the group, with the same
        direct links between the devices and the same routes (``symmetry.moved``). A
        symmetric job plans its tensor collectives once, not once per node."""
        per_node = self.topology.devices_per_node
        offset = int(devices[0] - first[0])
        if (op.algorithm == "auto" or self.ps_hosts is not None or offset % per_node
                or not np.array_equal(devices, first + offset)
                or len(np.unique(first // per_node)) != 1):
            return None
        if not all(np.isin(p.src, first).all() and np.isin(p.dst, first).all()
                   for p in phases):
            return None
        peers, there = self.topology.device_peers(first), self.topology.device_peers(devices)
        if (peers is None) != (there is None) or (peers is not None and there is not None and any(
                not np.array_equal(a, b) for a, b in zip(peers, there))):
            return None
        return moved(self.topology, phases, offset)

    def _lower(self, op: Collective) -> tuple[list[list[_Send]], int]:
        """The phase lists to run at once, as sent: one list whose phases carry every instance's
        flows (and how many instances, in equal consecutive blocks, the network may solve
        as copies of the first), or one list per instance where their phases differ. A
        pipeline repeats the same collectives thousands of times, so each is lowered (and
        its protocol chosen) once."""
        key = (op.op, op.algorithm, id(op.group), op.size_bytes, op.servers, op.instances,
               op.repeat)
        lowered = self._lowered.get(key)
        if lowered is None:
            groups = np.split(np.asarray(op.group), op.instances)
            first = self._phases(groups[0], op)
            like = (self.placement[groups[0]], first)
            plans = [first] + [self._phases(g, op, like) for g in groups[1:]]
            instances = 1
            if all(_same_shape(plans[0], p) for p in plans[1:]):
                if all(len(p.src) == len(q.src) for ps in zip(*plans) for p, q in
                       zip(ps, ps[1:])):
                    instances = op.instances
                plans = [[merge_phases(ps) for ps in zip(*plans)]]
            lowered = self._lowered[key] = (
                [[_Send.of(phase, op.repeat) for phase in phases] for phases in plans],
                instances)
        return lowered

    def _collective(self, plans: list[list[_Send]], op: Collective,
                    rv: _Rendezvous) -> Generator:
        """Instances whose phases differ, each a chain of its own, all at once."""
        ends = []
        for phases in plans:
            end = self.env.event()
            self._chain(phases, 0, op, end)
            ends.append(end)
        yield simpy.AllOf(self.env, ends)
        rv.done.succeed()

    def _chain(self, sends: list[_Send], k: int, op: Collective, end: simpy.Event,
               instances: int = 1) -> None:
        """Start phase ``k`` now; when its last byte arrives start the next, and after the
        last succeed ``end``. The bytes a phase injects (counted as it starts) go to its
        op's role; a phase carrying ``instances`` equal blocks of flows says so."""
        send = sends[k]
        before = self.network.bytes_injected
        done = self.network.transfer(send.src, send.dst, send.size_bytes, send.rounds,
                                     send.latency_rounds, send.latency_s, send.wire_factor,
                                     instances, (send, instances))
        self.bytes_by_role[op.role] = (self.bytes_by_role.get(op.role, 0.0)
                                       + self.network.bytes_injected - before)
        if k + 1 < len(sends):
            done.callbacks.append(lambda _ev: self._chain(sends, k + 1, op, end, instances))
        else:
            done.callbacks.append(lambda _ev: _succeed(end))


@dataclass(frozen=True, eq=False)
class _Send:
    """A phase as its collective asks the network to send it: ``repeat`` times back to
    back, each paying its latencies (``Network.transfer``'s arguments). Equal by identity:
    an engine makes one per phase and repeat and never changes it, so it names them."""

    src: np.ndarray
    dst: np.ndarray
    size_bytes: np.ndarray | float
    rounds: int
    latency_rounds: int | np.ndarray
    latency_s: np.ndarray | None
    wire_factor: np.ndarray | None

    @classmethod
    def of(cls, phase: Phase, repeat: int) -> _Send:
        latencies = phase.rounds if phase.latency_rounds is None else phase.latency_rounds
        return cls(phase.src, phase.dst, phase.size_bytes, phase.rounds * repeat,
                   latencies * repeat,
                   None if phase.latency_s is None else phase.latency_s * repeat,
                   phase.wire_factor)


def _succeed(event: simpy.Event) -> None:
    event.succeed()


def _same_shape(a: list[Phase], b: list[Phase]) -> bool:
    """Whether two instances' phases can travel together: same steps, same latencies."""
    return len(a) == len(b) and all(
        x.rounds == y.rounds and (x.latency_rounds is None) == (y.latency_rounds is None)
        and (x.latency_rounds is None or y.latency_rounds is None
             or np.array_equal(x.latency_rounds, y.latency_rounds))
        and (x.latency_s is None) == (y.latency_s is None)
        and (x.wire_factor is None) == (y.wire_factor is None) for x, y in zip(a, b))
