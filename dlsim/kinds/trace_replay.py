"""``model: {trace: ...}``: a recorded PyTorch job replayed on the scenario's cluster.

The trace says what each rank ran (``dlsim.workload.execution_trace``); the scenario says on
what: its cluster's device prices every compute op (with its calibration, if any) unless a
Kineto trace measured it, and its network carries every collective at the trace's real size
over the trace's process group, rank r on the r-th device of the scenario's placement. So
the same job is asked "how long on another device or fabric". The trace's ranks are the
job's: a cluster needs at least as many devices as the trace's largest process group.

One file (``trace: et.json``) is every rank's program (a data-parallel job: the ranks ran
the same operators), simulated by symmetry unless the scenario asks for full fidelity;
``trace: et_{rank}.json`` reads one file per rank. Collectives match across ranks by their
order on each rank, as NCCL matches them.
"""

from __future__ import annotations

from collections import Counter
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

MODEL_FLOP_KINDS = ("gemm", "attention", "conv")  # as training_summary counts model FLOPs


def read_works(scenario: TrainingScenario) -> list[TraceWork]:
    """One classified trace per rank (the same object for every rank of a single file)."""
    spec = scenario.model
    assert spec.trace is not None
    dtype_bytes = max(DTYPE_BYTES[scenario.precision], 2)
    measured = kineto_durations(spec.kineto) if spec.kineto else None
    first = classify(spec.trace.replace("{rank}", "0"), dtype_bytes, measured)
    if "{rank}" not in spec.trace:
        return [first] * first.world
    if spec.kineto:
        raise ScenarioError("one Kineto trace measures one rank; give 'kineto' with a single "
                            "'trace' file, not with et_{rank}.json files.", field="model.kineto")
    works = [first] + [classify(spec.trace.replace("{rank}", str(r)), dtype_bytes)
                       for r in range(1, first.world)]
    counts = [sum(op.collective is not None for op in w.ops) for w in works]
    if len(set(counts)) > 1:
        raise ScenarioError(f"the per-rank traces issue different numbers of collectives "
                            f"({', '.join(f'rank {r}: {c}' for r, c in enumerate(counts))}); "
                            "every rank of a process group must issue the same ones.",
                            field=FIELD)
    return works


def program_of(work: TraceWork, world: int, device: DeviceProfile, dtype: str,
               algorithm: str) -> list[Op]:
    """One rank's ops: compute on the compute stream, collectives on the communication
    stream over the world group, each waiting for the ops whose tensors it reads."""
    ops: list[Op] = []
    group = tuple(range(world))
    issued: Counter[str] = Counter()
    for op in work.ops:
        name = op.node.name
        if op.kernel is not None:
            duration = (op.measured_s if op.measured_s is not None
                        else kernel_time_s(op.kernel, device, dtype))
            ops.append(Compute(name, duration, op.deps))
        else:
            assert op.collective is not None
            issued[op.collective] += 1
            ops.append(Collective(name, f"{op.collective}#{issued[op.collective]}", group,
                                  op.collective, op.size_bytes, algorithm, deps=op.deps))
    return ops


def _check_fits(work: TraceWork, topology: Topology) -> None:
    for g in work.groups:
        if g.size > topology.n_devices or any(r >= topology.n_devices for r in g.ranks):
            raise ScenarioError(f"{work.path}: process group '{g.name}' has {g.size} ranks "
                                f"({list(g.ranks) or 'every rank'}); the cluster has "
                                f"{topology.n_devices} device(s). A trace replays on a "
                                "cluster of at least as many devices as its largest process "
                                "group (rank r on the r-th device).", field=FIELD)


def _check_nothing_else(scenario: TrainingScenario, world: int) -> None:
    """The trace fixes the job: a parallelism plan or a straggler, failure or convergence
    model beside it would be silently ignored, so each is refused."""
    par = scenario.parallelism
    plan = sorted(par.model_fields_set - {"data"})
    if plan or par.data not in (None, world):
        given = plan or [f"data: {par.data}"]
        raise ScenarioError(f"a trace replay runs the parallelism the trace recorded "
                            f"({world} rank(s)); {', '.join(given)} cannot be applied to it: "
                            "leave 'parallelism' out, or give data equal to the trace's "
                            "ranks.", field="parallelism")
    for section in ("stragglers", "failures", "convergence"):
        if getattr(scenario, section) is not None:
            raise ScenarioError(f"'{section}' is not applied to a trace replay (the trace's "
                                "step is replayed as recorded); leave it out.", field=section)


def simulate_trace(scenario: TrainingScenario, topology: Topology) -> Result:
    works = read_works(scenario)
    first = works[0]
    _check_nothing_else(scenario, first.world)
    _check_fits(first, topology)
    device = topology.device
    if device is None:
        raise ScenarioError("a trace replay needs the cluster's device to price its "
                            "operators; name one (cluster.device).", field="cluster.device")
    world = first.world
    algorithm = scenario.communication.data_parallel
    for op in {o.collective for o in first.ops if o.collective is not None}:
        check_algorithm(op, algorithm, field="communication.data_parallel")
    dtype = scenario.precision
    single_file = "{rank}" not in str(scenario.model.trace)
    simulated = [0] if single_file and symmetric(scenario.simulation) else list(range(world))
    programs = {r: program_of(works[r], world, device, dtype, algorithm) for r in simulated}
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
        "trace": trace_summary(works, steps),
        "unmapped_trace_nodes": sum(first.unmapped.values()),
    }
    return engine_result(scenario, topology, run, summary,
                         "symmetric" if len(programs) < world else "full")


def trace_summary(works: list[TraceWork], steps: int) -> dict[str, Any]:
    """What the replay read: the nodes by what they became, the ops it ran and the trace
    nodes it could not map (by name: they ran nothing in the replay)."""
    first = works[0]
    return {"file": first.path, "ranks": first.world, "steps": steps,
            "files": len({id(w) for w in works}),
            "nodes": dict(sorted(first.counts.items())),
            "compute_ops": sum(op.kernel is not None for op in first.ops),
            "measured_ops": sum(op.measured_s is not None and op.kernel is not None
                                for op in first.ops),
            "collectives": sum(op.collective is not None for op in first.ops),
            "collective_bytes": sum(op.size_bytes for op in first.ops),
            "unmapped": dict(sorted(first.unmapped.items()))}
