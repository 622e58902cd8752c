"""Which parallel plans can run: every rule, in one place.

The scenario loader applies the rules that read the parallelism section alone
(``parallelism_conflict``, from ``ParallelismSpec``); ``check`` applies every rule, in the
order a user meets them, to one ``JobSpec``. The engine calls it once before it builds a
step (``dlsim.kinds.training``) and the planner filters its search with it
(``dlsim.planner.space``), so the planner cannot propose a plan the engine refuses; the plans
the engine runs and the planner leaves out are its own choice of what to search. The rules
that also give the builders a value (``split_batch``, ``compression_of``,
``local_sgd_period``) are called by them too.

What a collective algorithm needs of its group (halving-doubling a power of two,
hierarchical the same ranks on every node, parameter servers 1..n shards) is the network
layer's lowering's to say (``dlsim.network.algorithms``); ``check`` asks it about the
data-parallel groups where the plan's ranks are placed. Which matrices LoRA may target is
the model's (``dlsim.workload.lora.lora_parameters``).

``ParallelismSpec``'s validator imports this module while ``dlsim.contract.scenario`` is
still being defined, so the scenario models are imported here for annotations only.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.parallelism import parallelism_conflict
from dlsim.network.algorithms import check_algorithm, dedicated_hosts, lower
from dlsim.network.compression import Compression
from dlsim.parallel.context import needs_head_split
from dlsim.parallel.schedules import schedule_of
from dlsim.workload.presets import layer_count
from dlsim.workload.shapes import shape_of

if TYPE_CHECKING:
    from dlsim.contract.scenario import CommunicationSpec, TrainingScenario
    from dlsim.hardware.profiles import DeviceProfile
    from dlsim.hardware.topology import Topology
    from dlsim.workload.shapes import TransformerShape

Placement = Callable[[int], np.ndarray]  # the devices of ranks 0..n-1; ScenarioError if none
# what lowering the data-parallel groups of one layout gave: a planner checks thousands of
# plans on a few layouts and keeps this between its checks
Lowered = dict[tuple, ScenarioError | None]


@dataclass(frozen=True)
class JobSpec:
    """One plan of one model on one cluster: what the rules read."""

    shape: TransformerShape | None  # None: not a transformer (tensor parallelism can't apply)
    layers: int  # layers of the built model, what a pipeline cuts
    device: DeviceProfile
    devices: int  # the cluster's
    devices_per_node: int
    precision: str
    global_batch: int
    communication: CommunicationSpec
    microbatch: int | None = None  # None: the replica's whole batch
    data: int | None = None  # None: the devices left over by tensor x pipeline
    tensor: int = 1
    pipeline: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1
    zero_stage: int = 0
    lora: bool = False
    steps: int = 1
    context: int = 1
    expert: int = 1
    expert_tensor: int = 1
    shard_group: int | None = None
    overlap_param_gather: bool = False
    context_comm: str = "p2p"
    stage_blocks: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Layout:
    """What a runnable job resolves to."""

    data: int
    microbatch: int
    microbatches: int  # per replica and step
    devices: np.ndarray  # rank i runs on devices[i]


def training_job(scenario: TrainingScenario, topology: Topology) -> JobSpec:
    """The job a ``kind: training`` scenario describes on its built cluster."""
    if topology.device is None:
        raise ScenarioError("a training scenario needs a device profile for its cluster.",
                            field="cluster.device")
    par, train = scenario.parallelism, scenario.training
    if scenario.model.torch is not None and par.tensor > 1:
        raise ScenarioError("tensor parallelism is not modelled for a model imported from "
                            "torch: splitting it needs each GEMM's place in Megatron-LM's "
                            "column/row pattern, which the recorded operators do not carry; "
                            "use tensor: 1 (data and pipeline parallelism apply).",
                            field="parallelism.tensor")
    return JobSpec(
        shape_of(scenario.model), layer_count(scenario.model), topology.device,
        topology.n_devices, topology.devices_per_node, scenario.precision, train.global_batch,
        scenario.communication, train.microbatch, par.data, par.tensor, par.pipeline,
        par.schedule, par.virtual_stages, par.zero_stage, train.lora is not None, train.steps,
        par.context, par.expert, par.expert_tensor, par.shard_group, par.overlap_param_gather,
        par.context_comm, None if par.stage_blocks is None else tuple(par.stage_blocks))


def check(job: JobSpec, place: Placement, lowered: Lowered | None = None) -> Layout:
    """The job's layout, or the ScenarioError of the first rule it breaks; ``lowered``
    remembers the verdicts on data-parallel groups between calls."""
    conflict = parallelism_conflict(job)
    if conflict:
        raise ScenarioError(conflict + ".", field="parallelism")
    comm = job.communication
    _remembered(lowered, ("algorithm", comm.data_parallel), lambda: check_algorithm(
        "allreduce", comm.data_parallel, field="communication.data_parallel"))
    t, p, v, cp = job.tensor, job.pipeline, job.virtual_stages, job.context
    check_tensor_degree(job.shape, t)
    check_context_degree(job.shape, cp, job.context_comm, t)
    model_parallel = t * p * cp  # every degree but data; devices = data x all of them
    if job.data is None and job.devices % model_parallel:
        raise ScenarioError(f"the cluster's {job.devices} devices do not divide into "
                            f"tensor ({t}) x pipeline ({p}) x context ({cp}) groups; give "
                            "parallelism.data or change the degrees.",
                            field="parallelism.tensor")
    data = job.data or job.devices // model_parallel
    if data == 0:
        raise ScenarioError(f"tensor ({t}) x pipeline ({p}) x context ({cp}) needs "
                            f"{model_parallel} devices but the cluster has {job.devices}.",
                            field="parallelism.pipeline")
    check_expert_degrees(job.shape, job.expert, job.expert_tensor, data * cp * t)
    check_shard_group(job.shard_group, job.zero_stage, data * cp)
    devices = place(data * model_parallel)
    per_replica, micro = split_batch(job.global_batch, job.microbatch, data)
    micro_count = per_replica // micro
    if schedule_of(job.schedule).chunked and micro_count % p:
        raise ScenarioError(f"the interleaved schedule needs the micro-batches per replica "
                            f"({micro_count}) to be a multiple of pipeline ({p}), as "
                            "Megatron-LM requires.", field="training.microbatch")
    job.device.peak_flops(job.precision)  # a precision the device lacks
    if p * v > job.layers:
        raise ScenarioError(f"{p} pipeline stages x {v} virtual stages for a model "
                            f"of {job.layers} layers.", field="parallelism.pipeline")
    check_stage_blocks(job.stage_blocks, job.shape, p * v)
    if job.lora and job.zero_stage == 3:
        raise ScenarioError("LoRA with ZeRO-3 is not modelled: stage 3 would all-gather the "
                            "frozen weights too, which the LoRA workload does not carry; use "
                            "zero_stage 0, 1 or 2.", field="training.lora")
    compression_of(comm, job.zero_stage, p == t == cp == job.expert == 1)
    local_sgd_period(comm, job.steps, job.zero_stage, p * t * cp * job.expert)
    hosts = (dedicated_hosts(job.devices, devices, comm.servers)
             if comm.data_parallel == "ps" and comm.server_placement == "dedicated" else None)
    if _allreduces_gradients(job, data * cp):
        check_gradient_groups(comm, devices // job.devices_per_node, data, t, p, hosts,
                              {} if lowered is None else lowered, context=cp)
    return Layout(data, micro, micro_count, devices)


def _remembered(lowered: Lowered | None, key: tuple, rule: Callable[[], None]) -> None:
    """``rule()``, its verdict kept in ``lowered`` (where given) under ``key``."""
    if lowered is None:
        return rule()
    if key not in lowered:
        try:
            rule()
            lowered[key] = None
        except ScenarioError as exc:
            lowered[key] = exc
    error = lowered[key]
    if error is not None:
        raise error
    return None


def infeasible(job: JobSpec, place: Placement,
               lowered: Lowered | None = None) -> ScenarioError | None:
    """``check``'s verdict without raising: the error of the first rule broken, or None."""
    try:
        check(job, place, lowered)
    except ScenarioError as exc:
        return exc
    return None


def check_shard_group(shard_group: int | None, zero_stage: int, dense: int) -> None:
    """Hybrid sharding shards ZeRO's model state within runs of ``shard_group``
    consecutive members of the dense gradient group (``dense`` = data x context ranks,
    ``dlsim.parallel.sharding``) and replicates it across them, so it needs a ZeRO stage
    and a group size that divides ``dense`` (PyTorch's HSDP mesh, Megatron-Core's
    ``num_distributed_optimizer_instances`` need the same)."""
    if shard_group is None:
        return
    if zero_stage == 0:
        raise ScenarioError(f"shard_group ({shard_group}) shards ZeRO's model state within "
                            "groups of that many data-parallel ranks, and zero_stage 0 shards "
                            "nothing; set zero_stage 1, 2 or 3, or leave shard_group out.",
                            field="parallelism.shard_group")
    if dense % shard_group:
        divisors = ", ".join(str(k) for k in range(1, dense + 1) if dense % k == 0)
        raise ScenarioError(f"shard_group ({shard_group}) must divide the data-parallel "
                            f"degree ({dense} ranks of data x context) so that every shard "
                            f"group is whole; use one of its divisors ({divisors}).",
                            field="parallelism.shard_group")


def split_batch(global_batch: int, microbatch: int | None, replicas: int) -> tuple[int, int]:
    """(each data-parallel replica's batch, its micro-batch) for ``training.global_batch`` and
    ``training.microbatch`` over ``replicas`` replicas, rejecting a batch that does not divide."""
    if global_batch % replicas:
        raise ScenarioError(f"global_batch ({global_batch}) must be a multiple of the "
                            f"data-parallel degree ({replicas}).", field="training.global_batch")
    per_replica = global_batch // replicas
    micro = microbatch or per_replica
    if per_replica % micro:
        raise ScenarioError(f"each replica's batch ({per_replica}) must be a multiple of "
                            f"microbatch ({micro}).", field="training.microbatch")
    return per_replica, micro


def compression_of(comm: CommunicationSpec, zero_stage: int, pure_data_parallel: bool
                   ) -> Compression | None:
    """The scenario's ``communication.compression`` (None for ``none``); it applies to the
    gradient all-reduce of plain data parallelism only."""
    compression = Compression(comm.compression, comm.topk_ratio)
    if compression.method.passthrough:
        return None
    if zero_stage or not pure_data_parallel:
        raise ScenarioError("gradient compression applies to plain data parallelism (no "
                            "ZeRO, tensor or pipeline parallelism); use compression: none.",
                            field="communication.compression")
    return compression


def local_sgd_period(comm: CommunicationSpec, steps: int, zero_stage: int,
                     model_parallel: int) -> int:
    """``communication.local_sgd_period`` H, checked: it needs plain data parallelism and
    a whole number of periods in ``training.steps`` (the step time is their average)."""
    period = comm.local_sgd_period
    if period > 1 and (zero_stage or model_parallel > 1):
        raise ScenarioError("local SGD applies to plain data parallelism (no ZeRO, tensor "
                            "or pipeline parallelism).", field="communication.local_sgd_period")
    if steps % period:
        raise ScenarioError(f"training.steps ({steps}) must be a multiple of "
                            f"local_sgd_period ({period}): the step time is averaged over "
                            "whole periods.", field="training.steps")
    return period


def check_tensor_degree(shape: TransformerShape | None, t: int) -> None:
    """Megatron-LM needs the attention heads, key-value heads and hidden size divisible by
    t (Shoeybi et al. 2019, §3: heads are split among the ranks)."""
    if t == 1:
        return
    if shape is None:
        raise ScenarioError("tensor parallelism is modelled for transformer models only; "
                            "use tensor: 1.", field="parallelism.tensor")
    for what, size in (("attention heads", shape.heads), ("key-value heads", shape.kv_heads),
                       ("hidden size", shape.hidden)):
        if size % t:
            raise ScenarioError(f"tensor ({t}) must divide the model's {what} ({size}).",
                                field="parallelism.tensor")


def check_context_degree(shape: TransformerShape | None, c: int, comm: str = "p2p",
                         t: int = 1) -> None:
    """Context parallelism splits a transformer's sequence into c parts; a decoder's causal
    load balancing cuts it into 2c chunks, rank i holding chunks i and 2c-1-i
    (``dlsim.parallel.context``), so 2c must divide it. The ring cannot run a sliding window
    or attention sinks (Transformer Engine asserts so); the a2a exchange splits each tensor
    rank's query and key-value heads c ways, so c must divide both."""
    if c == 1:
        return
    if shape is None:
        raise ScenarioError("context parallelism splits a transformer's sequence; this "
                            "model is not a transformer, so use context: 1.",
                            field="parallelism.context")
    s = shape.seq_len
    if s % c:
        raise ScenarioError(f"context ({c}) must divide the sequence length ({s}): each "
                            "context rank holds s/c of it.", field="parallelism.context")
    if not shape.encoder and s % (2 * c):
        raise ScenarioError(f"the causal split of context ({c}) cuts the sequence into "
                            f"2 x {c} = {2 * c} chunks (rank i holds chunks i and "
                            f"{2 * c - 1} - i), which must divide the sequence length ({s}); "
                            "use a context degree whose double divides it.",
                            field="parallelism.context")
    if comm == "p2p" and needs_head_split(shape):
        banded = any(shape.windowed(b) for b in range(shape.layers))
        what = " and ".join(x for x, on in (("a sliding window", banded),
                                            ("attention sinks", shape.attention_sinks)) if on)
        raise ScenarioError(f"this model's attention has {what}, which ring attention "
                            "(context_comm: p2p) does not run: Transformer Engine runs them "
                            "under context parallelism only with cp_comm_type a2a; use "
                            "context_comm: a2a.", field="parallelism.context_comm")
    kv_heads = shape.heads if shape.mla is not None else shape.kv_heads
    if comm == "a2a" and (shape.heads // t % c or kv_heads // t % c):
        raise ScenarioError(f"context_comm a2a splits each tensor rank's heads over the "
                            f"context group: context ({c}) must divide the query heads "
                            f"({shape.heads} / tensor {t}) and the key-value heads "
                            f"({kv_heads} / tensor {t}).", field="parallelism.context_comm")


def check_stage_blocks(counts: tuple[int, ...] | None, shape: TransformerShape | None,
                       pieces: int) -> None:
    """An uneven layout names every piece's blocks, and all of the model's."""
    if counts is None:
        return
    if shape is None:
        raise ScenarioError("stage_blocks counts transformer blocks; this model has none, so "
                            "leave it out.", field="parallelism.stage_blocks")
    if len(counts) != pieces or sum(counts) != shape.layers:
        raise ScenarioError(f"stage_blocks gives {len(counts)} pieces holding {sum(counts)} "
                            f"blocks; the plan has pipeline x virtual_stages = {pieces} "
                            f"pieces and the model {shape.layers} blocks, so list {pieces} "
                            f"counts summing to {shape.layers}.",
                            field="parallelism.stage_blocks")


def check_expert_degrees(shape: TransformerShape | None, e: int, et: int,
                         stage_ranks: int) -> None:
    """Expert parallelism needs MoE layers, experts/e whole experts per rank, and the
    e x expert_tensor ranks folded out of a stage's data x context x tensor ones (Liu et al.
    2025, §3)."""
    if e == et == 1:
        return
    field = "parallelism.expert" if e > 1 else "parallelism.expert_tensor"
    moe = None if shape is None else shape.moe
    if moe is None:
        raise ScenarioError("expert parallelism splits the routed experts of MoE layers; "
                            "this model has none (give model.moe), so use expert: 1 and "
                            "expert_tensor: 1.", field=field)
    if moe.experts % e:
        raise ScenarioError(f"expert ({e}) must divide the model's {moe.experts} routed "
                            "experts: each expert rank holds experts/expert of them.",
                            field="parallelism.expert")
    if moe.expert_ffn_hidden % et:
        raise ScenarioError(f"expert_tensor ({et}) must divide the experts' hidden size "
                            f"({moe.expert_ffn_hidden}).", field="parallelism.expert_tensor")
    if stage_ranks % (e * et):
        raise ScenarioError(f"expert ({e}) x expert_tensor ({et}) = {e * et} must divide a "
                            f"pipeline stage's data x context x tensor = {stage_ranks} "
                            "ranks, which the expert ranks are folded out of.", field=field)


def _allreduces_gradients(job: JobSpec, data: int) -> bool:
    """Whether the gradients cross the data-parallel groups in the scenario's all-reduce
    algorithm: ZeRO reduce-scatters and all-gathers in rings, and signs or sparse vectors
    (onebit, topk) are all-gathered in rings unless parameter servers add them up
    (``dlsim.parallel.data_parallel.sync_bucket``); ``auto`` picks one that runs."""
    comm = job.communication
    gathered = comm.compression in ("onebit", "topk") and comm.data_parallel != "ps"
    return data > 1 and job.zero_stage == 0 and comm.data_parallel != "auto" and not gathered


def check_gradient_groups(comm: CommunicationSpec, nodes: np.ndarray, data: int, tensor: int,
                          pipeline: int, hosts: np.ndarray | None, lowered: Lowered,
                          context: int = 1) -> None:
    """The all-reduce algorithm must lower every data-parallel group (a stage's replicas of
    one tensor rank, at every context rank) where its ranks are: ``nodes`` is each rank's
    node, ranks in ``dlsim.parallel.grid.Grid`` order. Groups alike in their nodes are
    lowered once."""
    key = (comm.data_parallel, comm.servers, None if hosts is None else hosts.tobytes(),
           data, tensor, pipeline, nodes.tobytes(), context)
    if key not in lowered:
        lowered[key] = _lowering_error(comm, nodes, data * context, tensor, pipeline, hosts)
    error = lowered[key]
    if error is not None:
        raise error


def _lowering_error(comm: CommunicationSpec, nodes: np.ndarray, data: int, tensor: int,
                    pipeline: int, hosts: np.ndarray | None) -> ScenarioError | None:
    groups = nodes.reshape(pipeline, data, tensor).transpose(0, 2, 1).reshape(-1, data)
    for group_nodes in np.unique(groups, axis=0):
        try:
            lower("allreduce", comm.data_parallel, np.arange(data), 1.0, comm.servers,
                  group_nodes, hosts)
        except ScenarioError as exc:
            field = "communication.data_parallel" if exc.field == "algorithm" else exc.field
            return ScenarioError(exc.message, field=field)
    return None
