"""Context parallelism: ring attention over the context group, as Megatron-Core runs it with
Transformer Engine (Liu et al. 2023, "Ring Attention with Blockwise Transformers"; TE's
``AttnFuncWithCPAndKVP2P``).

Each of the c ranks of a context group holds s/c of every sequence, in the two-chunk split
of causal load balancing: the sequence is cut into 2c chunks and rank i holds chunks i and
2c-1-i, so each rank's queries see the same number of causal key blocks (2c+1 chunk pairs
with the diagonals counted whole) and each of the c ring steps is the same work. Every
per-token kernel (projections, MLP, norms, embedding and head) is therefore 1/c per rank, and
so is the attention core: 1/c of the whole sequence's QK^T and AV, run in c equal steps, one
per K/V block in hand (``dlsim.parallel.segments``). The weights are whole on every context
rank, so their gradients are all-reduced over data x context (``Grid.data_group(c=None)``).

Ring traffic, per rank and attention layer of one micro-batch: "the K/V bytes" of a layer are
its keys and values for the whole sequence on one tensor rank, KV = 2·b·s·h_kv·dtype / t
(K and V, each b·s·h_kv; h_kv = kv_heads·head_dim). A block is KV/c; the forward ring passes
c-1 blocks on, (c-1)/c·KV = 2·(c-1)/c·b·s·h_kv·dtype/t; the backward ring passes each block
with its gradients dK, dV (twice the bytes), 2·(c-1)/c·KV.

``context_comm: a2a`` (DeepSpeed-Ulysses, Jacobs et al. 2023; TE's
``AttnFuncWithCPAndQKVOA2A``) runs no ring: before the core an all-to-all over the context
group trades each rank's s/c tokens of every head for all s tokens of a/c heads (Q, K and V),
the core runs whole on those heads, and an all-to-all of its output trades back. Each
rank's buffer is its Q, K and V, b·(s/c)·(a·d + 2·h_kv)·dtype/t, then its output,
b·(s/c)·a·d·dtype/t, of which it sends (c-1)/c; backward runs the gradients the other way
(dO before the core's backward, dQ, dK, dV after it). Nothing overlaps them. The core's
work per rank is the same 1/c; a window or attention sinks need nothing from other ranks,
which is why Transformer Engine runs those only this way (or by all-gather), never by ring.
"""

from __future__ import annotations

from dataclasses import replace

from dlsim.workload.model import Kernel, Layer, Model
from dlsim.workload.shapes import TransformerShape


def _split(kernels: tuple[Kernel, ...], c: int) -> tuple[Kernel, ...]:
    return tuple(replace(k, flops=k.flops / c, bytes=k.bytes / c) for k in kernels)


def _layer_share(layer: Layer, c: int) -> Layer:
    block = layer.block
    moe = layer.moe
    return replace(
        layer, forward=_split(layer.forward, c), backward=_split(layer.backward, c),
        activation_bytes=layer.activation_bytes / c, output_bytes=layer.output_bytes / c,
        block=None if block is None else block.divided(c),
        moe=None if moe is None else replace(moe, tokens=moe.tokens // c))


def context_shard(model: Model, c: int) -> Model:
    """What one rank of a context group of ``c`` computes: every kernel, stored activation
    and boundary tensor 1/c (its share of each sequence); parameters whole."""
    if c == 1:
        return model
    return replace(model, layers=tuple(_layer_share(layer, c) for layer in model.layers),
                   input_bytes=model.input_bytes / c)


def kv_width(shape: TransformerShape) -> int:
    """Keys plus values per token of one attention layer, in elements: 2·kv_heads·head_dim;
    multi-head latent attention circulates its up-projected keys (nope and rope parts) and
    values per head, as Megatron-Core's MLA under context parallelism does."""
    mla = shape.mla
    if mla is not None:
        return shape.heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim + mla.v_head_dim)
    return 2 * shape.kv_heads * shape.head_size


def kv_bytes(shape: TransformerShape, microbatch: int, dtype_bytes: int, tensor: int) -> float:
    """The K/V bytes of one attention layer and micro-batch on one tensor rank, for the whole
    sequence: 2·b·s·h_kv·dtype / t (the module docstring's KV)."""
    return microbatch * shape.seq_len * kv_width(shape) * dtype_bytes / tensor


def needs_head_split(shape: TransformerShape) -> bool:
    """Whether ``shape``'s attention runs under context parallelism only by the a2a
    exchange: a sliding window (on a block where it is narrower than the sequence) or
    attention sinks, which Transformer Engine's ring refuses."""
    if shape.attention_sinks:
        return True
    window = shape.sliding_window
    return (window is not None and window < shape.seq_len
            and any(shape.windowed(b) for b in range(shape.layers)))


def query_width(shape: TransformerShape) -> tuple[int, int]:
    """(query, output) elements per token of one attention layer: a·d each; MLA's queries
    carry the nope and rope parts, its output the value head dim."""
    mla = shape.mla
    if mla is not None:
        return (shape.heads * (mla.qk_nope_head_dim + mla.qk_rope_head_dim),
                shape.heads * mla.v_head_dim)
    return shape.heads * shape.head_size, shape.heads * shape.head_size


def head_split_bytes(shape: TransformerShape, microbatch: int, dtype_bytes: int, tensor: int,
                     c: int) -> tuple[float, float]:
    """(Q, K and V; output) bytes of one rank's a2a buffers per attention layer and
    micro-batch (the module docstring): its s/c tokens on one tensor rank."""
    tokens = microbatch * shape.seq_len / c
    query, out = query_width(shape)
    return ((query + kv_width(shape)) * tokens * dtype_bytes / tensor,
            out * tokens * dtype_bytes / tensor)


def ring_bytes_per_rank(kv: float, c: int) -> tuple[float, float]:
    """(forward, backward) bytes one rank sends around the ring per attention layer:
    (c-1)/c·KV and 2·(c-1)/c·KV."""
    return (c - 1) / c * kv, 2 * (c - 1) / c * kv
