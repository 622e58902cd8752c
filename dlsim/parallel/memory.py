"""Memory per device: one arithmetic model for every parallelism plan, no simulation.

Model state (Rajbhandari et al., "ZeRO", SC'20, §3.1 and Table 1): mixed-precision training
keeps 16-bit weights and gradients (2 + 2 bytes per parameter) and K bytes of optimizer state
(K = 12 for Adam: fp32 master weights, momentum and variance). ZeRO stage 1 partitions the
optimizer state over the N_d data-parallel ranks, stage 2 also the gradients, stage 3 also
the weights; stage 3 then holds the layers it computes gathered, as many as its prefetch
keeps resident (two: ``dlsim.parallel.builder``). With hybrid sharding the state is
partitioned over the ``shard`` ranks of a shard group instead of all N_d
(``dlsim.parallel.sharding``): stage 3 holds (2 + 2 + K)·Ψ/(t·p·N_shard) plus its gathered
layers, stage 1 (Megatron-Core's distributed optimizer) 4·Ψ/(t·p) + K·Ψ/(t·p·N_shard).
Tensor parallelism (Shoeybi et al. 2019) splits
every weight matrix and the vocabulary t ways, so model state is divided by t (the layer
norms' few h-sized vectors, which Megatron-LM replicates, are counted as split: under 0.1 %
of a block for h >= 1024); a pipeline stage holds its own layers' state only.

Activations (Korthikanti et al. 2022, "Reducing Activation Recomputation", §4, Table 2): a GPT
block stores s*b*h*(34 + 5*a*s/h) bytes at 16 bit. Tensor parallelism splits all but the
10*s*b*h that every rank keeps (layer-norm inputs, dropout masks, the inputs of the attention
and MLP): s*b*h*(10 + 24/t + 5*a*s/(h*t)), which is what dlsim's tensor parallelism runs;
with ``sequence_parallel`` that part is split too: s*b*h*(34 + 5*a*s/h)/t. Selective
recomputation drops the attention core (5*a*s^2*b): s*b*h*(10 + 24/t), or 34*s*b*h/t with
sequence parallelism; full recomputation keeps only each block's input, 2*s*b*h, which
sequence parallelism holds split along the sequence (Megatron-LM checkpoints the s/t shard
each rank holds): 2*s*b*h/t. Fused attention (``attention: flash | sdpa``,
dlsim.workload.attention) stores no s x s tensors, only an fp32 logsumexp per row: 34*s*b*h
+ 4*a*s*b, and leaves selective recomputation nothing to drop (the block's
``attention_core`` is 0). The modern decoder's blocks count what Megatron-Core with
Transformer Engine saves (``dlsim.workload.decoder``: fused RMSNorm-linear, fused SwiGLU,
grouped-query K and V). Under FP8/FP4 a block's linear-layer inputs are saved as TE's
low-precision casts (``BlockActivations.gemm_inputs``; GPT: 27*s*b*h + 5*a*s^2*b, or
29*s*b*h + 4*a*s*b fused). The embedding and head are counted as split t ways (their
vocabulary-parallel logits dominate).
A pipeline stage holds the activations of every micro-batch in flight (GPipe all m, 1F1B at
most p; ``dlsim.parallel.pipeline.in_flight``).

FP8/FP4 training (Transformer Engine) keeps the 16-bit weights and adds its cached
low-precision copies of the blocks' linear weights, a row-wise and a transposed one
(``dlsim.workload.precision.weight_cache_bytes_per_param``: 2 bytes per parameter for FP8,
1.125 for NVFP4), split and partitioned as the weights are.

Offload (Ren et al., "ZeRO-Offload", ATC'21, §4.1): the optimizer state moves to host memory
and the optimizer step runs on the CPU; each step the device's gradients go down and its
updated 16-bit weights come back over PCIe.

Context parallelism (``dlsim.parallel.context``) keeps s/c of every sequence on a rank, so
its stored activations are 1/c; model state is whole on every context rank, and ZeRO
partitions it over the data x context ranks its gradients sync over (Megatron-Core's
distributed optimizer over the dp-cp group). Expert parallelism (``dlsim.parallel.expert``)
gives a rank experts/e of each MoE layer's routed experts, split expert_tensor ways, with
their gradients and optimizer state; ZeRO partitions those over the expert-data group.

LoRA (Hu et al., "LoRA", ICLR'22, §4.1): the base weights are frozen in 16 bits with neither
gradients nor optimizer state; each adapted d_in x d_out matrix gains A (d_in x r) and
B (r x d_out), r*(d_in + d_out) trainable parameters with full mixed-precision state.
Activations are as in full fine-tuning: the frozen matrices still need their inputs for the
input gradients (the adapters' own s*b*r intermediates, r/h of one hidden state, are left out).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlsim.contract.scenario import LoraSpec
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.parallel.expert import routed_params
from dlsim.workload.autocast import CACHE_BYTES, cast_elements
from dlsim.workload.lora import lora_parameters
from dlsim.workload.model import Layer, Model
from dlsim.workload.precision import (
    is_low_precision,
    saved_input_ratio,
    weight_cache_bytes_per_param,
)

# Bytes per parameter of optimizer state (ZeRO §3.1: K = 12 for mixed-precision Adam, whose
# state holds fp32 master weights; pure fp32 training needs no master copy).
OPTIMIZER_STATE_BYTES = {
    ("adam", True): 12,   # fp32 master weights, momentum, variance
    ("adam", False): 8,   # momentum, variance
    ("sgd", True): 8,     # fp32 master weights, momentum
    ("sgd", False): 4,    # momentum
}
ZERO3_RESIDENT_LAYERS = 2  # the layer running and the one prefetched (dlsim.parallel.data_parallel)
RECOMPUTE = ("none", "selective", "full")
OFFLOAD = ("none", "optimizer")


def is_mixed(dtype: str) -> bool:
    return DTYPE_BYTES[dtype] < 4


def weight_bytes_per_param(dtype: str) -> int:
    """Weights are kept in the training dtype, and fp8 training keeps them in bf16."""
    return max(DTYPE_BYTES[dtype], 2)


def gradient_bytes_per_param(dtype: str, grad_dtype: str | None = None) -> int:
    """Gradients are kept (and reduced) in ``grad_dtype``; by default in the training
    dtype, and fp8 training keeps them in bf16."""
    return DTYPE_BYTES[grad_dtype] if grad_dtype else max(DTYPE_BYTES[dtype], 2)


@dataclass(frozen=True)
class MemoryPlan:
    """Bytes per device by what they hold (``gathered``: ZeRO-3's all-gathered layers);
    ``host`` and ``offload_bytes_per_step`` are what offloading puts in host memory and
    moves over PCIe each step."""

    params: float
    grads: float
    optimizer: float
    activations: float
    gathered: float = 0.0
    host: float = 0.0
    offload_bytes_per_step: float = 0.0
    trainable_params: float = 0.0

    @property
    def total(self) -> float:
        return self.params + self.grads + self.optimizer + self.activations + self.gathered

    def as_dict(self) -> dict[str, float]:
        parts = {"params": self.params, "grads": self.grads, "optimizer": self.optimizer,
                 "activations": self.activations}
        return parts | ({"gathered": self.gathered} if self.gathered else {})


def stored_activations(layer: Layer, tensor: int, recompute: str,
                       sequence_parallel: bool = False, dtype: str = "bf16") -> float:
    """One micro-batch of ``layer``'s stored activations (Korthikanti et al. 2022, Table 2),
    its linear-layer inputs saved as TE saves them at ``dtype`` (``BlockActivations``)."""
    block = layer.block
    if block is None:
        return layer.activation_bytes / tensor
    if recompute == "full":
        return block.block_input / (tensor if sequence_parallel else 1)
    dropped = block.attention_core if recompute == "selective" else 0.0
    cast = saved_input_ratio(dtype)
    copies = block.shared_gemm_inputs * cast if is_low_precision(dtype) else 0.0
    total = layer.activation_bytes - (1.0 - cast) * block.gemm_inputs + copies
    replicated = block.replicated - (1.0 - cast) * block.replicated_gemm_inputs
    kept = replicated / (tensor if sequence_parallel else 1)
    return (total - dropped - replicated) / tensor + kept


def pipeline_stages(model: Model, pipeline: int,
                    counts: Sequence[int] | None = None) -> list[list[int]]:
    """Transformer blocks cut into ``pipeline`` runs of equal count (or of ``counts`` blocks
    each, Megatron-Core's uneven layouts), the layers before the first block on the first
    stage and those after the last on the last (Megatron-LM's layout); models without
    blocks cut into runs of equal layer count."""
    blocks = [i for i, layer in enumerate(model.layers) if layer.block is not None]
    if len(blocks) < pipeline:
        return [part.tolist() for part in np.array_split(np.arange(len(model.layers)),
                                                         pipeline)]
    parts = ([part.tolist() for part in np.array_split(np.array(blocks), pipeline)]
             if counts is None else
             [blocks[a:b] for a, b in itertools.pairwise([0, *itertools.accumulate(counts)])])
    parts[0] = list(range(blocks[0])) + parts[0]
    parts[-1] = parts[-1] + list(range(blocks[-1] + 1, len(model.layers)))
    return parts


def memory_per_device(model: Model, dtype: str, optimizer: str, *, data: int = 1,
                      tensor: int = 1, pipeline: int = 1,
                      stage_layers: Sequence[int] | None = None,
                      in_flight_microbatches: float = 1, zero_stage: int = 0,
                      recompute: str = "none", offload: str = "none",
                      lora: LoraSpec | None = None,
                      sequence_parallel: bool = False, context: int = 1, expert: int = 1,
                      expert_tensor: int = 1, shard: int | None = None,
                      grad_dtype: str | None = None, autocast: bool = False) -> MemoryPlan:
    """Bytes on one device: the layers in ``stage_layers`` (default: the fullest of
    ``pipeline`` stages from ``pipeline_stages``), their model state split ``tensor`` ways
    and partitioned over ``shard`` ranks (default ``data`` x ``context``: no hybrid
    sharding) as far as ``zero_stage`` says, and ``in_flight_microbatches`` micro-batches
    of their stored activations, 1/``context`` of each sequence; routed experts
    ``expert`` x ``expert_tensor`` ways, their state over the expert-data ranks. Under
    ``autocast`` (PyTorch AMP, ``dlsim.workload.autocast``) the weights are fp32 and are the
    optimizer's master copy, and each micro-batch in flight holds 16-bit copies of the
    weights it cast."""
    if recompute not in RECOMPUTE or offload not in OFFLOAD:
        raise ValueError(f"recompute must be one of {RECOMPUTE}, offload one of {OFFLOAD}")
    if stage_layers is None:
        return max((memory_per_device(
            model, dtype, optimizer, data=data, tensor=tensor, stage_layers=part,
            in_flight_microbatches=in_flight_microbatches, zero_stage=zero_stage,
            recompute=recompute, offload=offload, lora=lora,
            sequence_parallel=sequence_parallel, context=context, expert=expert,
            expert_tensor=expert_tensor, shard=shard, grad_dtype=grad_dtype,
            autocast=autocast)
            for part in pipeline_stages(model, pipeline)), key=lambda plan: plan.total)
    layers = [model.layers[i] for i in stage_layers]
    routed = sum(routed_params(layer) for layer in layers)
    base = (sum(layer.params for layer in layers) - routed) / tensor
    experts = routed / (expert * expert_tensor)
    trainable = base if lora is None else lora_parameters(layers, lora.rank, lora.targets) / tensor
    frozen = base if lora is not None else 0.0
    expert_data = data * context * tensor // (expert * expert_tensor)
    shard = data * context if shard is None else shard
    share = [1.0 if zero_stage < stage else 1.0 / shard for stage in (1, 2, 3)]
    expert_share = [1.0 if zero_stage < stage else 1.0 / expert_data for stage in (1, 2, 3)]
    if lora is not None:
        experts = 0.0  # LoRA adapts the named matrices only; no routed expert trains
        frozen += routed / (expert * expert_tensor)
    state = OPTIMIZER_STATE_BYTES[(optimizer, is_mixed(dtype) and not autocast)]
    optimizer_bytes = trainable * state * share[0] + experts * state * expert_share[0]
    grad_bytes = gradient_bytes_per_param(dtype, grad_dtype)
    grads = trainable * grad_bytes * share[1] + experts * grad_bytes * expert_share[1]
    weight_bytes = 4 if autocast else weight_bytes_per_param(dtype)
    params = ((frozen * 2 + trainable * weight_bytes) * share[2]
              + experts * weight_bytes * expert_share[2])
    if is_low_precision(dtype):  # TE's cached FP8/FP4 copies of the blocks' linear weights
        blocks = (sum(layer.params for layer in layers if layer.role == "block")
                  - routed) / tensor
        params += weight_cache_bytes_per_param(dtype) * (
            blocks * share[2] + routed / (expert * expert_tensor) * expert_share[2])
    activations = in_flight_microbatches * sum(
        stored_activations(layer, tensor, recompute, sequence_parallel, dtype)
        for layer in layers) / context
    if autocast:
        cast = cast_elements(model)
        activations += in_flight_microbatches * CACHE_BYTES * sum(
            cast[i] for i in stage_layers) / tensor
    gathered = 0.0
    if zero_stage == 3 and shard > 1:
        largest = max(((layer.params - routed_params(layer)) / tensor
                       + routed_params(layer) / (expert * expert_tensor)
                       for layer in layers), default=0.0)
        gathered = ZERO3_RESIDENT_LAYERS * largest * weight_bytes_per_param(dtype)
    host = traffic = 0.0
    if offload == "optimizer":
        host, optimizer_bytes = optimizer_bytes, 0.0
        owned = trainable * share[0] + experts * expert_share[0]
        traffic = owned * (grad_bytes + weight_bytes_per_param(dtype))
    return MemoryPlan(params, grads, optimizer_bytes, activations, gathered, host, traffic,
                      trainable)


def stage_memory(model: Model, parts: list[list[int]], dtype: str, optimizer: str,
                 in_flight_per_stage: Sequence[float], **options: Any) -> MemoryPlan:
    """The fullest pipeline stage, each stage with its own micro-batches in flight."""
    return max((memory_per_device(model, dtype, optimizer, stage_layers=layers,
                                  in_flight_microbatches=held, **options)
                for layers, held in zip(parts, in_flight_per_stage)),
               key=lambda plan: plan.total)


# The usual ways to save memory, in the order a practitioner reaches for them: sequence
# parallelism costs no extra traffic under tensor parallelism, selective recomputation a few
# percent of time (Korthikanti et al. 2022, §5), ZeRO-3 half again
# the gradient traffic, full recomputation a forward pass, offload a trip over PCIe.
SAVINGS = (("sequence_parallel", True), ("recompute", "selective"), ("zero_stage", 3),
           ("recompute", "full"), ("offload", "optimizer"))


def savings(plan_of: Callable[..., MemoryPlan], options: dict[str, Any],
            zero_allowed: bool) -> dict[str, float]:
    """Bytes per device as each of ``SAVINGS`` is added in turn to ``options`` (skipping
    those already set, those ``options`` does not name, as a plan without tensor
    parallelism does not name sequence parallelism, and ZeRO-3 where it does not apply):
    what an overflowing plan could try. ``plan_of(**options)`` gives the plan's memory."""
    out: dict[str, float] = {}
    changed = dict(options)
    fields = list(dict.fromkeys(field for field, _ in SAVINGS))
    for field, value in SAVINGS:
        if (field not in options or changed[field] == value
                or (field == "zero_stage" and not zero_allowed)
                or (field == "recompute" and changed[field] == "full")):
            continue
        changed[field] = value
        out[" + ".join(f"{k}: {_yaml(changed[k])}" for k in fields
                       if changed.get(k) != options.get(k))] = plan_of(**changed).total
    return out


def _yaml(value: Any) -> str:
    """A scenario value as the user writes it (``true``, not ``True``)."""
    return str(value).lower() if isinstance(value, bool) else str(value)
