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

What is modelled per rank: a split kernel's FLOPs and bytes are 1/t of the whole (the
replicated input that a column-parallel GEMM reads is not added back: these GEMMs are
compute-bound), and a layer's parameters are 1/t (the O(h) replicated layernorm weights and
biases are less than 0.1% of a block).
"""

from __future__ import annotations

from dataclasses import replace

from dlsim.config import ModelSpec
from dlsim.errors import ScenarioError
from dlsim.llama import LLAMA_SHAPES
from dlsim.workload import TRANSFORMER_PRESETS, Kernel, Layer, Model

SPLIT = frozenset({"qkv", "rope", "attention", "softmax", "proj", "mlp_up", "gelu", "swiglu",
                   "mlp_down", "logits", "cross_entropy"})
# Selective recomputation re-runs the attention core only (Korthikanti et al. 2022, §4.2).
ATTENTION_CORE = frozenset({"attention", "softmax"})


def _shard(kernels: tuple[Kernel, ...], t: int) -> tuple[Kernel, ...]:
    return tuple(replace(k, flops=k.flops / t, bytes=k.bytes / t) if k.name in SPLIT else k
                 for k in kernels)


def allreduces(layer: Layer) -> tuple[int, int]:
    """Tensor-parallel all-reduces of one layer: (in forward, in backward)."""
    names = {k.name for k in layer.forward}
    if "qkv" in names:
        return 2, 2
    if "embedding" in names:
        return 1, 0
    if "logits" in names:
        return 0, 1
    return 0, 0


def shard_model(model: Model, t: int) -> Model:
    """What one rank of a tensor group of ``t`` computes and holds."""
    if t == 1:
        return model
    layers = tuple(replace(layer, forward=_shard(layer.forward, t),
                           backward=_shard(layer.backward, t), params=layer.params // t)
                   for layer in model.layers)
    return Model(model.name, layers)


def transformer_shape(spec: ModelSpec) -> dict[str, int] | None:
    """The sizes tensor parallelism divides (heads, key-value heads, hidden), or None for
    models it does not apply to."""
    if spec.preset in LLAMA_SHAPES:
        shape = LLAMA_SHAPES[spec.preset]
        return {"attention heads": shape.heads, "key-value heads": shape.kv_heads,
                "hidden size": shape.hidden}
    if spec.preset is not None:
        gpt = TRANSFORMER_PRESETS.get(spec.preset)
        return {"attention heads": gpt[2], "hidden size": gpt[1]} if gpt else None
    if spec.kind == "transformer":
        return {"attention heads": spec.heads, "hidden size": spec.hidden}
    return None


def check_tensor_degree(spec: ModelSpec, t: int) -> None:
    """Megatron-LM needs the (key-value) heads and the hidden size divisible by t."""
    if t == 1:
        return
    shape = transformer_shape(spec)
    if shape is None:
        raise ScenarioError("tensor parallelism is modelled for transformer models only; "
                            "use tensor: 1.", field="parallelism.tensor")
    for what, size in shape.items():
        if size % t:
            raise ScenarioError(f"tensor ({t}) must divide the model's {what} ({size}).",
                                field="parallelism.tensor")
