"""``kind: training``: a training step under data, tensor and pipeline parallelism."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from dlsim.cluster.build import placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import TrainingScenario
from dlsim.engine.core import Engine
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.hardware.topology import Topology
from dlsim.kinds.run import engine_result, run_engine, symmetric
from dlsim.kinds.sync.bsp import bsp_summary, ended_at_last_op, straggle
from dlsim.kinds.sync.convergence import job_of
from dlsim.kinds.sync.stragglers import schedule_slow_links
from dlsim.network.algorithms import check_algorithm, dedicated_hosts
from dlsim.network.backend import NETWORKS
from dlsim.network.protocol import resolve_mode
from dlsim.parallel.builder import TrainingJob, build_programs
from dlsim.parallel.data_parallel import MiB, compression_of, local_sgd_period, split_batch
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import gradient_bytes_per_param, savings, stage_memory
from dlsim.parallel.pipeline import in_flight, pieces
from dlsim.parallel.tensor import check_tensor_degree, shard_model
from dlsim.results.intervals import breakdown
from dlsim.results.result import Result
from dlsim.results.summary import TrainingWork, compression_summary, training_summary
from dlsim.workload.model import lora_workload
from dlsim.workload.presets import build_model


def simulate_training(scenario: TrainingScenario, topology: Topology) -> Result:
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
    symmetric_run = symmetric(scenario.simulation, scenario.stragglers)
    replicas = [0] if symmetric_run else list(range(data))
    data_parallel_only = stages == 1 and tensor == 1
    shard = shard_model(executed, tensor, sequence_parallel)
    cut = pieces(executed, shard, device, dtype, stages * chunks, par.recompute,
                 sequence_parallel)
    job = TrainingJob(
        grid, chunks, micro_count, par.schedule, train.optimizer, comm.data_parallel,
        comm.servers, train.steps, hidden_bytes=model.layers[0].output_bytes,
        # DDP's buckets where nothing else is parallel; Megatron-LM's per-chunk exchange
        gradient_sync="buckets" if data_parallel_only else "chunks",
        bucket_cap_bytes=train.bucket_cap_mb * MiB, zero_stage=par.zero_stage,
        offload=par.offload, sharing=topology.devices_per_node,
        compression=compression_of(comm, par.zero_stage, data_parallel_only),
        sync_every=local_sgd_period(comm, train.steps, par.zero_stage, stages * tensor))
    programs = build_programs(job, cut, device, dtype, replicas,
                              [0] if symmetric_run else list(range(tensor)))
    memory_of = partial(
        stage_memory, model, [[i for c in range(chunks) for i in cut[c * stages + s].layers]
                              for s in range(stages)], dtype, train.optimizer,
        [in_flight(par.schedule, s, stages, micro_count, chunks) for s in range(stages)],
        data=data, tensor=tensor, lora=lora, sequence_parallel=sequence_parallel)
    memory_options: dict[str, Any] = {"zero_stage": par.zero_stage, "recompute": par.recompute,
                      "offload": par.offload}
    if tensor > 1:  # sequence parallelism is a saving only a tensor-parallel plan can take
        memory_options["sequence_parallel"] = sequence_parallel
    memory = memory_of(**memory_options)
    rng = np.random.default_rng(scenario.seed)
    dedicated = comm.data_parallel == "ps" and comm.server_placement == "dedicated"
    hosts = dedicated_hosts(topology.n_devices, ranks, comm.servers) if dedicated else None
    mode = resolve_mode(comm.protocol, topology, scenario.cluster.topology is not None)
    engine = Engine(topology, straggle(programs, scenario, ranks, rng), ranks, mode, hosts,
                    network=NETWORKS[scenario.simulation.network])
    schedule_slow_links(engine.env, engine.network, topology, scenario.stragglers)
    run = ended_at_last_op(run_engine(engine, "communication.data_parallel"))

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
    summary.update(bsp_summary(scenario, run, ranks, rng, summary,
                               job_of(scenario.model, model, n, device.price_usd_per_hour)))
    return engine_result(scenario, topology, run, summary,
                   "symmetric" if len(programs) < n else "full")
