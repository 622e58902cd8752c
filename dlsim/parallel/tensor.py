"""Tensor (intra-layer) parallelism as Megatron-LM runs it (Shoeybi et al. 2019, §3).

A transformer block's two GEMM pairs are split over the t ranks of a tensor group: QKV and
MLP-up column-wise, the attention output projection and MLP-down row-wise. Attention heads
are divided among the ranks, so QK^T, softmax and AV, and GeLU on the split MLP activations,
are 1/t per rank; layernorms, dropout and residual adds run replicated on every rank. Each
block all-reduces its b·s·h output twice in forward (after attention and after the MLP, the
g operator) and its input gradient twice in backward (the f operator), on a stream that the
next kernel waits for. Embedding and LM head are vocab-parallel (§3): each rank holds V/t
rows of the (tied) embedding, the embedding output is all-reduced in forward, the logits GEMM
and cross-entropy run on V/t columns, and the head's input gradient is all-reduced in
backward; the loss's max and sum all-reduces are b·s scalars and are left out.

Sequence parallelism (Korthikanti et al. 2022, §4.2.2) splits the replicated part too: the
layernorms, dropout and residual adds run on s/t of the sequence on each rank. The f and g
operators become an all-gather of the b·s·h input before each column-parallel GEMM and a
reduce-scatter of the b·s·h output after each row-parallel GEMM (in backward a reduce-scatter
and an all-gather); on a ring an all-reduce is a reduce-scatter plus an all-gather, so the
bytes are those of the all-reduces they replace. The embedding's forward all-reduce becomes a
reduce-scatter (an all-gather in backward) and the head's backward all-reduce an all-gather
before the logits in forward (a reduce-scatter in backward). Megatron-LM also all-gathers a
column-parallel GEMM's input again in backward for its weight gradient, overlapped with the
input-gradient GEMM; that re-gather is left out, as the paper's count leaves it out. The
embedding lookup still runs on the whole sequence (its vocab-parallel partial sums are what
the reduce-scatter adds up).

What is modelled per rank: a split kernel's FLOPs and bytes are 1/t of the whole (the
replicated input that a column-parallel GEMM reads is not added back: these GEMMs are
compute-bound), and a layer's parameters are 1/t (the O(h) replicated layernorm weights and
biases are less than 0.1% of a block).
"""

from __future__ import annotations

from dataclasses import replace

from dlsim.workload.model import Kernel, Layer, Model

# shared experts split like the dense MLP (Megatron-Core's SharedExpertMLP)
SHARED = frozenset({"shared_up", "shared_act", "shared_down"})
# LoRA adapters (dlsim.workload.lora): all write their rank's share of the adapted outputs; a
# row-parallel GEMM's reads its rank's share of the input, a column-parallel one's
# ("qkv_lora_in", "mlp_up_lora_in") the whole gathered input on every rank
LORA_SPLIT = frozenset({"proj_lora_in", "mlp_down_lora_in", "qkv_lora_out", "proj_lora_out",
                        "mlp_up_lora_out", "mlp_down_lora_out", "lora_lora_out"})
SPLIT = frozenset({"qkv", "rope", "attention", "softmax", "proj", "mlp_up", "gelu", "swiglu",
                   "mlp_down", "logits", "cross_entropy"}) | SHARED | LORA_SPLIT
# The kernels that tensor parallelism leaves whole on every rank and sequence parallelism
# splits along the sequence: GPT's and BERT's layernorms, the decoder's RMSNorms, residual
# adds with their dropout (dlsim.workload.model, dlsim.workload.decoder), the MoE router and
# MLA's low-rank down projections (Megatron-Core's linear_q_down_proj / linear_kv_down_proj
# are duplicated, not split, over the tensor ranks). MLA's latent norms ("mla_norm") stay
# whole, and the routed experts ("expert_up", "expert_act", "expert_down") are not split by
# ``tensor``: expert parallelism with expert_tensor decides them.
SEQUENCE_SPLIT = frozenset({"layernorm1", "rmsnorm1", "residual1+layernorm2",
                            "residual1+rmsnorm2", "residual2", "final_layernorm", "router",
                            "mla_down"})
# Selective recomputation re-runs the attention core only (Korthikanti et al. 2022, §4.2).
ATTENTION_CORE = frozenset({"attention", "softmax"})


def _shard(kernels: tuple[Kernel, ...], t: int, split: frozenset[str]) -> tuple[Kernel, ...]:
    return tuple(replace(k, flops=k.flops / t, bytes=k.bytes / t) if k.name in split else k
                 for k in kernels)


ALLREDUCES: dict[str, tuple[int, int]] = {"block": (2, 2), "embedding": (1, 0), "head": (0, 1)}


def allreduces(layer: Layer) -> tuple[int, int]:
    """Tensor-parallel all-reduces of one layer: (in forward, in backward), by its role; a
    MoE block without shared experts has only its attention's: its routed experts take
    their tokens from the sequence-parallel shards by all-to-all (``dlsim.parallel.expert``;
    Megatron-Core's ``MoEAlltoAllTokenDispatcher``), and only a shared expert, split like
    the dense MLP, gathers and reduces over the tensor group."""
    if layer.role == "block" and layer.moe is not None and not any(
            k.name in SHARED for k in layer.forward):
        return 1, 1
    return ALLREDUCES.get(layer.role, (0, 0))


Collectives = tuple[tuple[str, int], ...]  # (op, how many) in the order a pass runs them


def tensor_collectives(layer: Layer,
                       sequence_parallel: bool = False) -> tuple[Collectives, Collectives]:
    """Tensor-parallel collectives of b·s·h of one layer: (in forward, in backward)."""
    forward, backward = allreduces(layer)
    if not sequence_parallel:
        return (tuple((("allreduce", forward),) if forward else ()),
                tuple((("allreduce", backward),) if backward else ()))
    if layer.role == "block":  # g before QKV and MLP-up, g-bar after projection and MLP-down
        both = (("allgather", forward), ("reducescatter", forward))
        return both, both
    if layer.role == "embedding":
        return (("reducescatter", 1),), (("allgather", 1),)
    if layer.role == "head":
        return (("allgather", 1),), (("reducescatter", 1),)
    return (), ()


def shard_model(model: Model, t: int, sequence_parallel: bool = False) -> Model:
    """What one rank of a tensor group of ``t`` computes and holds; with
    ``sequence_parallel`` the layernorms and residuals too run on 1/t of the sequence."""
    if t == 1:
        return model
    split = SPLIT | SEQUENCE_SPLIT if sequence_parallel else SPLIT
    layers = tuple(replace(layer, forward=_shard(layer.forward, t, split),
                           backward=_shard(layer.backward, t, split), params=layer.params // t)
                   for layer in model.layers)
    return Model(model.name, layers)
