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
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import Phase, merge_phases
from dlsim.network.backend import NetworkBackend, NetworkFactory
from dlsim.network.fluid import Network
from dlsim.network.symmetry import moved
from dlsim.network.tuner import plan_collective

Observer = Callable[[float, float], None]  # (simulated time now, estimated end), in seconds
OBSERVE_EVERY = 4096  # events between two calls of a run's observer


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
        event = simpy.Event(self)
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
                 merge_compute: bool = True):
        self.env = CountingEnvironment()
        self.merge_compute = merge_compute  # runs of compute ops in one timeout each
        self.topology = topology
        self.protocol = protocol  # dlsim.network.protocol: ideal, nccl, LL, LL128 or Simple
        self.ps_hosts = ps_hosts  # devices of dedicated parameter servers (None: colocated)
        self.network = network(self.env, topology)
        self.programs = programs
        self.placement = np.asarray(placement)
        self.spans: list[Span] = []
        self.rank_end_s: dict[int, float] = {}
        self.bytes_by_role: dict[str, float] = {}
        self._done = {r: [self.env.event() for _ in prog] for r, prog in programs.items()}
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
        for rank, program in self.programs.items():
            streams: dict[str, list[int]] = {}
            for i, op in enumerate(program):
                streams.setdefault(op.stream, []).append(i)
            waited = {d for op in program for d in op.deps if program[d].stream != op.stream}
            for stream, indices in streams.items():
                # a rank whose compute slows under its overlapped collectives runs each op
                # on its own: its durations depend on what is in flight when it runs
                blocks = ([[i] for i in indices] if rank in self._contending
                          else self._blocks(program, indices, waited))
                self.env.process(self._stream(rank, stream, blocks))
        self.env.run()
        self._record_pending(float("inf"))
        unfinished = [(r, i) for r, evs in self._done.items()
                      for i, ev in enumerate(evs) if not ev.processed]
        if unfinished:
            rank, i = unfinished[0]
            raise RuntimeError(f"deadlock: rank {rank} never finished op "
                               f"{self.programs[rank][i].name!r}")
        return EngineRun(self.env.now, self.spans, self.network, self.env.events_processed,
                         time.perf_counter() - started, self.rank_end_s, self.bytes_by_role)

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

    def _arrive(self, op: Collective) -> _Rendezvous:
        rv = self._rendezvous.get(op.key)
        if rv is None:
            expected = self._expected.get(id(op.group))
            if expected is None:
                # distinct ranks: in a ring shift every rank is both a sender and a receiver
                expected = self._expected[id(op.group)] = len(self.programs.keys()
                                                              & set(op.group))
            rv = self._rendezvous[op.key] = _Rendezvous(expected, Event(self.env))
        rv.arrived += 1
        if rv.arrived == rv.expected:
            rv.start_s = self.env.now
            plans, instances = self._lower(op)
            if len(plans) > 1:
                self.env.process(self._collective(plans, op, rv))
            else:
                self._chain(plans[0], 0, op, rv.done, instances)
        return rv

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
