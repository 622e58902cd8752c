"""simulate(): scenario -> topology, workload, programs -> engine -> Result.

This is the one place that wires the layers together; each step lives in its own module.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np

from dlsim.cluster import build_topology, placement
from dlsim.comm.algorithms import busbw_factor, check_algorithm, dedicated_hosts
from dlsim.comm.protocol import resolve_mode
from dlsim.comm.tuner import plan_collective
from dlsim.config import Scenario, load_scenario
from dlsim.engine import Engine, EngineRun
from dlsim.errors import ScenarioError
from dlsim.federated.simulator import simulate_federated
from dlsim.grid import Grid
from dlsim.hardware import DTYPE_BYTES
from dlsim.inference.simulate import simulate_edge_inference
from dlsim.memory import gradient_bytes_per_param, memory_per_device, savings, stage_memory
from dlsim.metrics import TrainingWork, breakdown, compression_summary, link_table, training_summary
from dlsim.pipeline import PipelineJob, in_flight, pieces, pipeline_programs
from dlsim.program import Collective
from dlsim.results import Result
from dlsim.strategy import compression_of, data_parallel_program, local_sgd_period, split_batch
from dlsim.sync.bsp import bsp_summary, ended_at_last_op, straggle
from dlsim.sync.stragglers import is_heterogeneous, schedule_slow_links
from dlsim.sync.training import ps_training, uses_parameter_server_simulator
from dlsim.tensor import check_tensor_degree, shard_model
from dlsim.topology import Topology
from dlsim.workload import build_model, lora_workload

# Kinds with their own simulator, each in its own package: kind -> (Scenario -> Result).
_OTHER_KINDS: dict[str, Callable[[Scenario], Result]] = {
    "edge-inference": simulate_edge_inference,
    "federated": simulate_federated,
}


def simulate(source: str | Path | dict[str, Any]) -> Result:
    """Simulate one scenario (a YAML path or a dict); bad input raises ScenarioError."""
    file = None if isinstance(source, dict) else str(source)
    try:
        scenario = load_scenario(source)
        if scenario.sweep:
            raise ScenarioError("this scenario describes a sweep; run it with `dlsim run` "
                                "or dlsim.sweep().", field="sweep")
        return run_scenario(scenario)
    except ScenarioError as exc:
        if exc.file is None and file is not None:
            raise ScenarioError(exc.message, file=file, field=exc.field) from None
        raise


def run_scenario(scenario: Scenario) -> Result:
    if scenario.kind in _OTHER_KINDS:
        return _OTHER_KINDS[scenario.kind](scenario)
    topology = build_topology(scenario.cluster)
    if scenario.kind == "collective":
        return _collective(scenario, topology)
    if uses_parameter_server_simulator(scenario):
        return ps_training(scenario, topology)
    return _training(scenario, topology)


def _symmetric(scenario: Scenario) -> bool:
    """Homogeneous jobs are simulated by symmetry unless the scenario asks for every rank;
    any straggler or slow link makes a job heterogeneous (DESIGN.md)."""
    return scenario.simulation.fidelity != "full" and not is_heterogeneous(scenario.stragglers)


def _run(engine: Engine, algorithm_field: str) -> EngineRun:
    """Run the engine; an algorithm that cannot serve the group names the scenario field."""
    try:
        return engine.run()
    except ScenarioError as exc:
        field = algorithm_field if exc.field == "algorithm" else exc.field
        raise ScenarioError(exc.message, field=field) from None


def _result(scenario: Scenario, topology: Topology, run: EngineRun, summary: dict[str, Any],
            fidelity: str) -> Result:
    summary["simulation"] = {"fidelity": fidelity, "events": run.events,
                             "flows": run.network.flows_started, "seed": scenario.seed}
    links = link_table(topology, run.network.link_bytes, run.network.link_busy_s, run.end_s)
    return Result(summary, scenario.model_dump(mode="json", exclude_none=True), run.spans,
                  links, run.wall_s)


def _collective(scenario: Scenario, topology: Topology) -> Result:
    spec = scenario.collective
    check_algorithm(spec.op, spec.algorithm, field="collective.algorithm")
    dedicated = spec.algorithm == "ps" and spec.server_placement == "dedicated"
    n = spec.devices or topology.n_devices - (spec.servers if dedicated else 0)
    ranks = placement(n, topology, scenario.placement)
    hosts = dedicated_hosts(topology.n_devices, ranks, spec.servers) if dedicated else None
    mode = resolve_mode(spec.protocol, topology, scenario.cluster.topology is not None)
    group = tuple(range(n))
    op = Collective(spec.op, "collective", group, spec.op, spec.size_bytes, spec.algorithm,
                    spec.servers)
    simulated = [0] if _symmetric(scenario) else list(group)
    chosen = plan_collective(spec.op, spec.algorithm, ranks, spec.size_bytes, topology, mode,
                             spec.servers, ranks // topology.devices_per_node, hosts,
                             timed=False)
    run = _run(Engine(topology, {r: [op] for r in simulated}, ranks, mode, hosts),
               "collective.algorithm")
    time_s = run.end_s
    algbw = spec.size_bytes / time_s if time_s > 0 else 0.0  # one rank moves nothing
    summary = {
        "name": scenario.name, "kind": "collective", "op": spec.op,
        "algorithm": spec.algorithm, "algorithm_chosen": chosen.algorithm,
        "protocol": chosen.protocol, "devices": n, "size_bytes": spec.size_bytes,
        "time_s": time_s, "algbw_GBps": algbw / 1e9,
        "busbw_GBps": algbw * busbw_factor(spec.op, n) / 1e9,
        "comm_bytes_total": run.network.bytes_injected,
        "topology": topology.description,
    }
    return _result(scenario, topology, run, summary,
                   "symmetric" if len(simulated) < n else "full")


def _training(scenario: Scenario, topology: Topology) -> Result:
    if topology.device is None:
        raise ScenarioError("a training scenario needs a device profile for its cluster.",
                            field="cluster.device")
    device = topology.device
    check_algorithm("allreduce", scenario.communication.data_parallel,
                    field="communication.data_parallel")
    par = scenario.parallelism
    stages, tensor, chunks = par.pipeline, par.tensor, par.virtual_stages
    sequence_parallel = par.sequence_parallel and tensor > 1  # Megatron-LM ignores it at t=1
    check_tensor_degree(scenario.model, tensor)
    if par.data is None and topology.n_devices % (tensor * stages):
        raise ScenarioError(f"the cluster's {topology.n_devices} devices do not divide into "
                            f"tensor ({tensor}) x pipeline ({stages}) groups; give "
                            "parallelism.data or change the degrees.",
                            field="parallelism.tensor")
    data = par.data or topology.n_devices // (tensor * stages)
    if data == 0:
        raise ScenarioError(f"tensor ({tensor}) x pipeline ({stages}) needs "
                            f"{tensor * stages} devices but the cluster has "
                            f"{topology.n_devices}.", field="parallelism.pipeline")
    grid = Grid(data, tensor, stages)
    n = grid.size
    ranks = placement(n, topology, scenario.placement)
    train = scenario.training
    per_replica, micro = split_batch(train.global_batch, train.microbatch, data)
    micro_count = per_replica // micro
    if par.schedule == "interleaved" and micro_count % stages:
        raise ScenarioError(f"the interleaved schedule needs the micro-batches per replica "
                            f"({micro_count}) to be a multiple of pipeline ({stages}), as "
                            "Megatron-LM requires.", field="training.microbatch")
    dtype = scenario.precision
    device.peak_flops(dtype)  # reject a dtype the device lacks before simulating
    model = build_model(scenario.model, micro, max(DTYPE_BYTES[dtype], 2))
    if stages * chunks > len(model.layers):
        raise ScenarioError(f"{stages} pipeline stages x {chunks} virtual stages for a model "
                            f"of {len(model.layers)} layers.", field="parallelism.pipeline")
    lora = train.lora
    if lora and par.zero_stage == 3:
        raise ScenarioError("LoRA with ZeRO-3 is not modelled: stage 3 would all-gather the "
                            "frozen weights too, which the LoRA workload does not carry; use "
                            "zero_stage 0, 1 or 2.", field="training.lora")
    executed = lora_workload(model, lora.rank, lora.targets) if lora else model
    comm = scenario.communication
    symmetric = _symmetric(scenario)
    replicas = [0] if symmetric else list(range(data))
    compression = compression_of(comm, par.zero_stage, stages == 1 and tensor == 1)
    if stages == 1 and tensor == 1:
        program = data_parallel_program(
            executed, device, dtype, n, micro_count, train.optimizer, train.bucket_cap_mb,
            comm.data_parallel, comm.servers, train.steps, par.zero_stage, par.recompute,
            par.offload, topology.devices_per_node, compression,
            local_sgd_period(comm, train.steps, par.zero_stage, stages * tensor))
        programs = {r: program for r in replicas}
        memory_of = partial(memory_per_device, model, dtype, train.optimizer, data=n,
                            lora=lora)
    else:
        shard = shard_model(executed, tensor, sequence_parallel)
        cut = pieces(executed, shard, device, dtype, stages * chunks, par.recompute,
                     sequence_parallel)
        job = PipelineJob(grid, chunks, micro_count, par.schedule,
                          model.layers[0].output_bytes, train.optimizer, comm.data_parallel,
                          comm.servers, train.steps, par.zero_stage, par.offload,
                          topology.devices_per_node)
        programs = pipeline_programs(job, cut, device, dtype, replicas,
                                     [0] if symmetric else list(range(tensor)))
        memory_of = partial(
            stage_memory, model, [[i for c in range(chunks) for i in cut[c * stages + s].layers]
                                  for s in range(stages)], dtype, train.optimizer,
            [in_flight(par.schedule, s, stages, micro_count, chunks) for s in range(stages)],
            data=data, tensor=tensor, lora=lora, sequence_parallel=sequence_parallel)
    memory_options = {"zero_stage": par.zero_stage, "recompute": par.recompute,
                      "offload": par.offload}
    if tensor > 1:  # sequence parallelism is a saving only a tensor-parallel plan can take
        memory_options["sequence_parallel"] = sequence_parallel
    memory = memory_of(**memory_options)
    rng = np.random.default_rng(scenario.seed)
    dedicated = comm.data_parallel == "ps" and comm.server_placement == "dedicated"
    hosts = dedicated_hosts(topology.n_devices, ranks, comm.servers) if dedicated else None
    mode = resolve_mode(comm.protocol, topology, scenario.cluster.topology is not None)
    engine = Engine(topology, straggle(programs, scenario, ranks, rng), ranks, mode, hosts)
    schedule_slow_links(engine.env, engine.network, topology, scenario.stragglers)
    run = ended_at_last_op(_run(engine, "communication.data_parallel"))

    critical = max(programs, key=lambda r: (run.rank_end_s[r], -r))
    parts_s = breakdown(run.spans, int(ranks[critical]), run.end_s, pipeline=stages > 1)
    work = TrainingWork(n, run.end_s / train.steps, data, micro_count, micro)
    summary = training_summary(
        scenario, topology, device, model, executed, work, memory, run.end_s,
        run.network.bytes_injected, parts_s,
        communication={"communication": comm.data_parallel, "protocol": mode,
                       "compression": compression_summary(
                           comm, gradient_bytes_per_param(dtype), run.spans, train.steps)},
        parallelism={"data": data, "tensor": tensor,
                     "sequence_parallel": sequence_parallel, "pipeline": stages,
                     "schedule": par.schedule, "virtual_stages": chunks,
                     "zero_stage": par.zero_stage, "recompute": par.recompute,
                     "offload": par.offload, "microbatches": micro_count},
        lora_and_offload=True)
    if not summary["fits_in_memory"]:
        summary["memory_savings_bytes"] = savings(memory_of, memory_options,
                                                  zero_allowed=stages == tensor == 1 < n
                                                  and lora is None)
    summary.update(bsp_summary(scenario, run, ranks, rng))
    return _result(scenario, topology, run, summary,
                   "symmetric" if len(programs) < n else "full")
