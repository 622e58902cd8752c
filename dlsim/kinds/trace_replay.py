"""``model: {trace: ...}``: a recorded PyTorch job replayed on the scenario's cluster.

The trace says what each rank ran (``dlsim.workload.execution_trace``); the scenario says on
what: its cluster's device prices every compute op (with its calibration, if any) unless a
Kineto trace measured it, and its network carries every collective at the trace's real size
over the trace's process group (``dlsim.workload.trace_comms``), rank r on the r-th device
of the scenario's placement. So the same job is asked "how long on another device or
fabric". A cluster needs at least as many devices as the job has ranks.

One file (``trace: et.json``) is every rank's program when the job is regular: every rank
ran the same operators, each over its own block of every process group (the group the
trace lists is taken as one block of a regular partition of the world, contiguous as tensor
parallel groups are or strided as data parallel ones; ``trace_comms.partition``; a group
that is not is refused). It is simulated by symmetry (the peers' identical collectives
share the network as ``Collective.instances``) unless the scenario asks for full fidelity.
``parallelism: {data: M}`` scales such a trace to M ranks when every collective runs over
the world group (a data-parallel job): each rank keeps its recorded work and buffers, the
world group grows to M. ``trace: et_{rank}.json`` reads one file per rank; sends and
receives need it (one rank's file does not say what its peers send): the k-th send from
rank a to b meets the k-th receive on b from a. Collectives match across a group's ranks by
their order on each rank, as NCCL matches them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

from dlsim.cluster.build import placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.program import Collective, Compute, Op
from dlsim.contract.scenario import TrainingScenario
from dlsim.engine.core import Engine
from dlsim.hardware.profiles import DTYPE_BYTES, DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.kinds.run import engine_result, run_engine, symmetric
from dlsim.network.algorithms import check_algorithm
from dlsim.network.backend import NETWORKS
from dlsim.network.protocol import resolve_mode
from dlsim.results.intervals import breakdown
from dlsim.results.result import Result
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.execution_trace import FIELD, TraceWork, classify
from dlsim.workload.kineto import kineto_durations
from dlsim.workload.trace_comms import Comm, IrregularGroup, partition, resolve_group
from dlsim.workload.trace_nodes import ProcessGroup

MODEL_FLOP_KINDS = ("gemm", "attention", "conv")  # as training_summary counts model FLOPs


def read_works(scenario: TrainingScenario) -> list[TraceWork]:
    """One classified trace per recorded rank (one object for a single file)."""
    spec = scenario.model
    assert spec.trace is not None
    dtype_bytes = max(DTYPE_BYTES[scenario.precision], 2)
    measured = kineto_durations(spec.kineto) if spec.kineto else None
    first = classify(spec.trace.replace("{rank}", "0"), dtype_bytes, measured)
    if "{rank}" not in spec.trace:
        return [first]
    if spec.kineto:
        raise ScenarioError("one Kineto trace measures one rank; give 'kineto' with a single "
                            "'trace' file, not with et_{rank}.json files.", field="model.kineto")
    return [first] + [classify(spec.trace.replace("{rank}", str(r)), dtype_bytes)
                      for r in range(1, first.world)]


@dataclass(frozen=True)
class Job:
    """How the recorded ranks map onto the replayed job."""

    works: list[TraceWork]  # one per rank, or one for every rank (single_file)
    world: int  # ranks replayed
    recorded: int  # ranks the trace ran on
    groups: dict[str, ProcessGroup]

    @property
    def single_file(self) -> bool:
        return len(self.works) == 1

    def work(self, rank: int) -> TraceWork:
        return self.works[0 if self.single_file else rank]

    def group(self, comm: Comm) -> ProcessGroup:
        """The comm's process group in the replayed job (a scaled world group grows)."""
        pg = resolve_group(comm, self.groups, self.recorded)
        if len(pg.members(self.recorded)) == self.recorded:
            return ProcessGroup("world", (), self.world)
        return pg

    def block(self, comm: Comm, rank: int
              ) -> tuple[tuple[int, ...], tuple[tuple[int, ...], ...]]:
        """``rank``'s ranks of the comm's group, and every block of its partition."""
        pg = self.group(comm)
        if not self.single_file:
            return pg.members(self.world), (pg.members(self.world),)
        blocks = partition(pg, self.world)
        return next(b for b in blocks if rank in b), blocks


def _job(scenario: TrainingScenario, works: list[TraceWork]) -> Job:
    """The job to replay, checked: a scaled or single-file trace must be regular."""
    first = works[0]
    recorded = first.world
    groups = {g.name: g for w in works for g in w.groups}
    data = scenario.parallelism.data
    world = recorded if data in (None, recorded) else int(data)
    job = Job(works, world, recorded, groups)
    if len(works) == 1 and first.p2p:
        raise ScenarioError(f"{first.path}: the trace sends or receives point to point "
                            f"({first.p2p} op(s)); one rank's file does not say what its "
                            "peers send, so a replay with send/recv reads every rank's trace: "
                            "give trace: et_{rank}.json (one file per rank).", field=FIELD)
    if world != recorded:
        sub = sorted({job.group(op.comm).name for w in works for op in w.ops
                      if op.comm is not None} - {"world"})
        if len(works) > 1 or sub:
            why = (f"its collectives run over process group(s) {', '.join(sub)} as well as "
                   "the world group" if sub else "it is one file per rank")
            raise ScenarioError(f"parallelism.data: {data} asks to scale the trace from its "
                                f"{recorded} rank(s), but {why}; only a single data-parallel "
                                "trace (every collective over the world group) scales. Leave "
                                f"'parallelism' out to replay it on {recorded} rank(s).",
                                field="parallelism.data")
    for w in works:
        for op in w.ops:
            if op.comm is not None and op.comm.op not in ("send", "recv"):
                try:
                    job.block(op.comm, 0)
                except IrregularGroup as exc:
                    raise ScenarioError(f"{w.path}: {exc}, so one rank's trace cannot stand "
                                        "for the others; give every rank's trace "
                                        "(trace: et_{rank}.json).", field=FIELD) from None
    return job


def program_of(job: Job, rank: int, device: DeviceProfile, dtype: str, algorithm: str,
               symmetric_run: bool) -> list[Op]:
    """``rank``'s ops: compute on the compute stream, collectives on the communication
    stream over ``rank``'s block of their group (in a symmetric run, with every other block
    as ``instances``) by the scenario's ``communication.data_parallel`` algorithm (an
    all-to-all direct, the one algorithm dlsim has for it, as expert parallelism runs it),
    sends and receives on streams of their own; each op waits for the ops whose tensors it
    reads."""
    ops: list[Op] = []
    issued: Counter[str] = Counter()
    for op in job.work(rank).ops:
        name = op.node.name
        if op.kernel is not None:
            duration = (op.measured_s if op.measured_s is not None
                        else kernel_time_s(op.kernel, device, dtype))
            ops.append(Compute(name, duration, op.deps))
            continue
        comm = op.comm
        assert comm is not None
        if comm.op in ("send", "recv"):
            members = job.group(comm).members(job.world)
            if comm.peer is None or not 0 <= comm.peer < len(members):
                raise ScenarioError(f"{job.work(rank).path}: {name} names no peer in its "
                                    f"group of {len(members)} rank(s).", field=FIELD)
            peer = members[comm.peer]
            src, dst = (rank, peer) if comm.op == "send" else (peer, rank)
            issued[f"{src}->{dst}"] += 1
            ops.append(Collective(name, f"p2p {src}->{dst}#{issued[f'{src}->{dst}']}",
                                  (src, dst), "send", comm.size_bytes, "direct", deps=op.deps,
                                  stream=op.stream, role="pipeline"))
            continue
        mine, blocks = job.block(comm, rank)
        pg = job.group(comm).name
        issued[pg] += 1
        group, instances = mine, 1
        if symmetric_run and len(blocks) > 1:
            group = (*mine, *(r for b in blocks if b != mine for r in b))
            instances = len(blocks)
        ops.append(Collective(name, f"{pg} {mine[0]}#{issued[pg]}", group,
                              "allreduce" if comm.op == "barrier" else comm.op,
                              comm.size_bytes, "direct" if comm.op == "alltoall" else algorithm,
                              deps=op.deps, instances=instances))
    return ops


def _check_matched(job: Job) -> None:
    """Every rank of a group issues its collectives, and every send meets its receive: a
    mismatch is the trace's, said here rather than as a deadlock."""
    if job.single_file:
        return
    issued: dict[str, Counter[int]] = {}
    sends: Counter[tuple[int, int]] = Counter()
    recvs: Counter[tuple[int, int]] = Counter()
    for rank in range(job.world):
        for op in job.work(rank).ops:
            if op.comm is None:
                continue
            if op.comm.op in ("send", "recv"):
                members = job.group(op.comm).members(job.world)
                if op.comm.peer is None or not 0 <= op.comm.peer < len(members):
                    continue  # program_of says so, naming the node
                peer = members[op.comm.peer]
                (sends if op.comm.op == "send" else recvs)[
                    (rank, peer) if op.comm.op == "send" else (peer, rank)] += 1
            else:
                pg = job.group(op.comm)
                members = pg.members(job.world)
                issued.setdefault(f"{pg.name} {list(members)}",
                                  Counter(dict.fromkeys(members, 0)))[rank] += 1
    for name, counts in issued.items():
        if len(set(counts.values())) > 1:
            each = ", ".join(f"rank {r}: {c}" for r, c in sorted(counts.items()))
            raise ScenarioError(f"the per-rank traces issue different numbers of collectives "
                                f"over group {name} ({each}); "
                                "every rank of a process group must issue the same ones.",
                                field=FIELD)
    for pair in sends.keys() | recvs.keys():
        if sends[pair] != recvs[pair]:
            raise ScenarioError(f"rank {pair[0]} sends {sends[pair]} time(s) to rank "
                                f"{pair[1]}, which receives {recvs[pair]} time(s) from it; "
                                "every send needs its receive.", field=FIELD)


def _check_fits(job: Job, topology: Topology) -> None:
    if job.world > topology.n_devices:
        raise ScenarioError(f"{job.works[0].path}: the job has {job.world} ranks; the "
                            f"cluster has {topology.n_devices} device(s). A trace replays "
                            "on a cluster of at least as many devices as its ranks (rank r "
                            "on the r-th device).", field=FIELD)


def _check_nothing_else(scenario: TrainingScenario) -> None:
    """The trace fixes the job: a parallelism plan (but data, which scales a data-parallel
    trace) or a straggler, failure or convergence model beside it would be silently
    ignored, so each is refused."""
    par = scenario.parallelism
    plan = sorted(par.model_fields_set - {"data"})
    if plan:
        raise ScenarioError(f"a trace replay runs the parallelism the trace recorded; "
                            f"{', '.join(plan)} cannot be applied to it: leave 'parallelism' "
                            "out, or give only data (the ranks of a data-parallel trace).",
                            field="parallelism")
    for section in ("stragglers", "failures", "convergence"):
        if getattr(scenario, section) is not None:
            raise ScenarioError(f"'{section}' is not applied to a trace replay (the trace's "
                                "step is replayed as recorded); leave it out.", field=section)


def simulate_trace(scenario: TrainingScenario, topology: Topology) -> Result:
    _check_nothing_else(scenario)
    job = _job(scenario, read_works(scenario))
    _check_fits(job, topology)
    _check_matched(job)
    first = job.works[0]
    device = topology.device
    if device is None:
        raise ScenarioError("a trace replay needs the cluster's device to price its "
                            "operators; name one (cluster.device).", field="cluster.device")
    world = job.world
    algorithm = scenario.communication.data_parallel
    for op in {o.collective for o in first.ops} - {None, "send", "recv", "alltoall"}:
        assert op is not None
        check_algorithm("allreduce" if op == "barrier" else op, algorithm,
                        field="communication.data_parallel")
    dtype = scenario.precision
    symmetric_run = job.single_file and symmetric(scenario.simulation)
    simulated = [0] if symmetric_run else list(range(world))
    programs = {r: program_of(job, r, device, dtype, algorithm, symmetric_run)
                for r in simulated}
    ranks = placement(world, topology, scenario.placement)
    mode = resolve_mode(scenario.communication.protocol, topology,
                        scenario.cluster.topology is not None)
    run = run_engine(Engine(topology, programs, ranks, mode,
                            network=NETWORKS[scenario.simulation.network]),
                     "communication.data_parallel")
    steps = first.steps
    step_s = run.end_s / steps
    flops = sum(op.kernel.flops for op in first.ops
                if op.kernel is not None and op.kernel.kind in MODEL_FLOP_KINDS) / steps
    tflops = flops / step_s / 1e12 if step_s > 0 else 0.0
    summary: dict[str, Any] = {
        "name": scenario.name, "kind": "training", "model": f"trace {first.path}",
        "device": device.name, "devices": world, "precision": dtype,
        "topology": topology.description,
        "step_time_s": step_s,
        "throughput_samples_per_s": scenario.training.global_batch / step_s
        if step_s > 0 else 0.0,
        "tflops_per_device": tflops, "mfu": tflops * 1e12 / device.peak_flops(dtype),
        "comm_bytes_total": run.network.bytes_injected / steps,
        "breakdown_s": {k: v / steps for k, v in
                        breakdown(run.spans, int(ranks[0]), run.end_s).items()},
        "trace": trace_summary(job, steps),
        "unmapped_trace_nodes": sum(first.unmapped.values()),
        "trace_groups_assumed": first.groups_assumed,
    }
    return engine_result(scenario, topology, run, summary,
                         "symmetric" if len(programs) < world else "full")


def trace_summary(job: Job, steps: int) -> dict[str, Any]:
    """What the replay read: the nodes by what they became, the ops it ran, the process
    groups they ran over (and how many the trace did not name: the world group assumed), and
    the trace nodes it could not map (by name: they ran nothing in the replay)."""
    first = job.works[0]
    return {"file": first.path, "ranks": job.world, "recorded_ranks": job.recorded,
            "steps": steps, "files": len(job.works),
            "nodes": dict(sorted(first.counts.items())),
            "compute_ops": sum(op.kernel is not None for op in first.ops),
            "measured_ops": sum(op.measured_s is not None and op.kernel is not None
                                for op in first.ops),
            "collectives": sum(op.comm is not None and op.stream == "comm"
                               for op in first.ops),
            "p2p_ops": first.p2p,
            "collective_bytes": sum(op.size_bytes for op in first.ops),
            "groups": {g.name: list(g.ranks) or "world" for g in job.groups.values()},
            "groups_assumed": first.groups_assumed,
            "unmapped": dict(sorted(first.unmapped.items()))}
