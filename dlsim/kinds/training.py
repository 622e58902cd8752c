"""``kind: training``: a training step under data, context, tensor, pipeline and expert
parallelism."""

from __future__ import annotations

from functools import partial
from typing import Any

import numpy as np

from dlsim.cluster.build import placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import TrainingScenario
from dlsim.engine.core import Engine
from dlsim.hardware.profiles import DTYPE_BYTES, DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.kinds.run import collector_paused, engine_result, run_engine, symmetric
from dlsim.kinds.sync.bsp import bsp_summary, ended_at_last_op, straggle
from dlsim.kinds.sync.convergence import job_of
from dlsim.kinds.sync.stragglers import schedule_slow_links
from dlsim.kinds.trace_replay import simulate_trace
from dlsim.network.algorithms import dedicated_hosts
from dlsim.network.backend import NETWORKS
from dlsim.network.protocol import resolve_mode
from dlsim.parallel.builder import TrainingJob, build_programs
from dlsim.parallel.context import context_shard, head_split_bytes, kv_bytes
from dlsim.parallel.data_parallel import MiB
from dlsim.parallel.expert import ExpertLayout, reprice_experts
from dlsim.parallel.feasibility import check, compression_of, local_sgd_period, training_job
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import gradient_bytes_per_param, savings, stage_memory
from dlsim.parallel.pipeline import in_flight, pieces
from dlsim.parallel.tensor import shard_model
from dlsim.results.intervals import breakdown, communication_by_axis, stage_breakdowns
from dlsim.results.power import power_model
from dlsim.results.result import Result
from dlsim.results.summary import (
    TrainingWork,
    compression_summary,
    energy_summary,
    training_summary,
)
from dlsim.workload.attention import attention_kernel
from dlsim.workload.autocast import autocast_workload, check_autocast
from dlsim.workload.lora import lora_workload
from dlsim.workload.model import Model
from dlsim.workload.precision import check_fp8_recipe
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import shape_of


def _with_recipe(scenario: TrainingScenario, device: DeviceProfile | None
                 ) -> DeviceProfile | None:
    """The device running the scenario's FP8 recipe (checked against what Transformer
    Engine runs on it); only under precision fp8."""
    recipe = scenario.training.fp8_recipe
    if recipe is None or device is None:
        return device
    field = "training.fp8_recipe"
    if scenario.precision != "fp8":
        raise ScenarioError(f"fp8_recipe {recipe} scales FP8 tensors; it needs precision fp8 "
                            f"(precision is {scenario.precision}).", field=field)
    check_fp8_recipe(recipe, device, field)
    return device.model_copy(update={"fp8_recipe": recipe})


@collector_paused()  # its programs, spans and breakdowns: see collector_paused
def simulate_training(scenario: TrainingScenario, topology: Topology) -> Result:
    if scenario.model.trace is not None:  # a recorded job: its own programs
        return simulate_trace(scenario, topology)
    topology.device = _with_recipe(scenario, topology.device)
    layout = check(training_job(scenario, topology),
                   lambda n: placement(n, topology, scenario.placement))
    device = topology.device
    assert device is not None  # check() refuses a cluster without a device profile
    par = scenario.parallelism
    stages, tensor, chunks = par.pipeline, par.tensor, par.virtual_stages
    sequence_parallel = par.sequence_parallel and tensor > 1  # Megatron-LM ignores it at t=1
    data, micro, micro_count = layout.data, layout.microbatch, layout.microbatches
    context, expert, expert_tensor = par.context, par.expert, par.expert_tensor
    grid = Grid(data, tensor, stages, context, expert, expert_tensor)
    n = grid.size
    ranks = layout.devices
    train = scenario.training
    dtype = scenario.precision
    model = build_model(scenario.model, micro, max(DTYPE_BYTES[dtype], 2),
                        attention_kernel(scenario.model, device, dtype))
    lora = train.lora
    executed = lora_workload(model, lora.rank, lora.targets) if lora else model
    if train.autocast:
        check_autocast(scenario)
        executed = autocast_workload(executed)
    grad_dtype = "fp32" if train.autocast else train.grad_dtype  # DDP reduces the fp32 .grad
    comm = scenario.communication
    symmetric_run = symmetric(scenario.simulation, scenario.stragglers)
    replicas = [0] if symmetric_run else list(range(data))
    data_parallel_only = stages == tensor == context == expert == 1
    per_rank = context_shard(executed, context)  # one context rank's share of each sequence
    layout_e = ExpertLayout(expert, expert_tensor, tensor)
    shard = reprice_experts(shard_model(per_rank, tensor, sequence_parallel), layout_e)
    shape = shape_of(scenario.model)
    kv_block, head_split, act_bytes = 0.0, None, max(DTYPE_BYTES[dtype], 2)
    if context > 1 and shape is not None:  # the ring's K/V block, or the a2a's buffers
        if par.context_comm == "a2a":
            head_split = head_split_bytes(shape, micro, act_bytes, tensor, context)
        else:
            kv_block = kv_bytes(shape, micro, act_bytes, tensor) / context
    cut = pieces(per_rank, shard, device, dtype, stages * chunks, par.recompute,
                 sequence_parallel, context=context, kv_block_bytes=kv_block,
                 head_split=head_split, stage_blocks=par.stage_blocks,
                 experts=layout_e if expert > 1 or model_has_moe(model) else None)
    job = TrainingJob(
        grid, chunks, micro_count, par.schedule, train.optimizer, comm.data_parallel,
        comm.servers, train.steps, hidden_bytes=per_rank.layers[0].output_bytes,
        # DDP's buckets where nothing else is parallel; Megatron-LM's per-chunk exchange
        gradient_sync="buckets" if data_parallel_only else "chunks",
        bucket_cap_bytes=train.bucket_cap_mb * MiB, zero_stage=par.zero_stage,
        offload=par.offload, sharing=topology.devices_per_node,
        compression=compression_of(comm, par.zero_stage, data_parallel_only),
        sync_every=local_sgd_period(comm, train.steps, par.zero_stage,
                                    stages * tensor * context * expert),
        shard_group=par.shard_group, overlap_param_gather=par.overlap_param_gather,
        tp_comm_overlap=par.tp_comm_overlap, comm_contention=device.comm_contention,
        grad_dtype=grad_dtype)
    programs = build_programs(job, cut, device, dtype, replicas,
                              [0] if symmetric_run else list(range(tensor)),
                              [0] if symmetric_run else list(range(context)))
    memory_of = partial(
        stage_memory, model, [[i for c in range(chunks) for i in cut[c * stages + s].layers]
                              for s in range(stages)], dtype, train.optimizer,
        [in_flight(par.schedule, s, stages, micro_count, chunks) for s in range(stages)],
        data=data, tensor=tensor, lora=lora, sequence_parallel=sequence_parallel,
        context=context, expert=expert, expert_tensor=expert_tensor, shard=par.shard_group,
        grad_dtype=grad_dtype, autocast=train.autocast)
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
                           comm, gradient_bytes_per_param(dtype, grad_dtype), run.spans,
                           train.steps)},
        parallelism={"data": data, "tensor": tensor,
                     "sequence_parallel": sequence_parallel, "pipeline": stages,
                     "schedule": par.schedule, "virtual_stages": chunks,
                     "zero_stage": par.zero_stage, "recompute": par.recompute,
                     "offload": par.offload, "microbatches": micro_count,
                     **({"context": context, "expert": expert, "expert_tensor": expert_tensor}
                        if context * expert * expert_tensor > 1 else {})}
        | ({"context_comm": par.context_comm} if context > 1 else {})
        | ({"stage_blocks": par.stage_blocks} if par.stage_blocks else {})
        | ({"shard_group": par.shard_group} if par.shard_group else {})
        | ({"overlap_param_gather": True} if par.overlap_param_gather else {})
        | ({"tp_comm_overlap": True} if par.tp_comm_overlap else {}),
        lora_and_offload=True)
    if grad_dtype:
        summary["grad_dtype"] = grad_dtype
    if train.autocast:
        summary["autocast"] = True
    if not summary["fits_in_memory"]:
        summary["memory_savings_bytes"] = savings(memory_of, memory_options,
                                                  zero_allowed=stages == tensor == 1 < n
                                                  and lora is None and not train.autocast)
    summary["communication_by_axis"] = communication_by_axis(
        run.spans, int(ranks[critical]), run.bytes_by_role, train.steps)
    if stages > 1:
        first_of_stage = [int(ranks[min(r for r in programs if r // grid.stage_size == s)])
                          for s in range(stages)]
        summary["breakdown_by_stage_s"] = stage_breakdowns(run.spans, first_of_stage,
                                                           run.end_s, train.steps)
    summary.update(energy_summary(
        power_model(executed, device, dtype), run.spans, n, run.end_s, train.steps,
        work.samples / train.steps, shape.seq_len if shape is not None else None,
        device.price_usd_per_hour))
    summary.update(bsp_summary(scenario, run, ranks, rng, summary,
                               job_of(scenario.model, model, n, device.price_usd_per_hour,
                                      summary.get("average_power_W"))))
    return engine_result(scenario, topology, run, summary,
                   "symmetric" if len(programs) < n else "full")


def model_has_moe(model: Model) -> bool:
    return any(layer.moe is not None for layer in model.layers)
