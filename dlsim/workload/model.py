"""Workload: a model as a list of layers, each with its kernels' FLOPs and bytes.

Counts follow the usual analytical conventions: a GEMM of (m x k)(k x n) is 2mkn FLOPs;
backward is two GEMMs of the same size (input and weight gradients); a transformer layer's
forward is 24*b*s*h^2 + 4*b*s^2*h FLOPs (Narayanan et al., SC'21, §5.1) with 12h^2 + 13h
parameters; stored activations follow Korthikanti et al. 2022, "Reducing Activation
Recomputation", Eq. 2: s*b*h*(34 + 5*a*s/h) bytes per layer at 16-bit, or 34*s*b*h + 4*a*s*b
with fused attention (``dlsim.workload.attention``: no s x s tensors, a logsumexp per row,
causal work halved). Under FP8 Transformer Engine saves the linear layers' inputs as 1-byte
casts (``BlockActivations``): 27*s*b*h + 5*a*s^2*b eager (the qkv, proj and mlp_up inputs,
2sbh each, and mlp_down's 8sbh halve), 29*s*b*h + 4*a*s*b fused (the fused kernel keeps its
16-bit output for its own backward, so proj's 1-byte cast is added beside it). Presets: the
transformers of ``dlsim.workload.shapes`` (GPT-2, GPT-3, BERT-large, the GPT models of
Megatron-LM SC'21 Table 1, and the modern decoders, Llama 2 and 3, Mixtral, Qwen3 and
DeepSeek-V3, built by ``dlsim.workload.decoder``), CNNs
(``dlsim.workload.cnn``) and MLPs; ``dlsim.workload.presets`` builds a model from any of them.
"""

from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Literal

from dlsim.hardware.profiles import AttentionKernel
from dlsim.workload.attention import BACKWARD_FLOPS, FusedAttention, fused_flops


@dataclass(frozen=True)
class Kernel:
    """One kernel: ``kind`` is gemm, conv, attention, elementwise (memory-bound) or copy
    (memory-bound data movement, such as MoE token permutation: its backward moves the
    gradients the same way back, the same bytes)."""

    kind: str
    flops: float
    bytes: float
    name: str = ""  # its role in the layer (qkv, attention, softmax, ...), for strategies
    fused: FusedAttention | None = None  # set for fused attention (dlsim.workload.attention)
    # a grouped GEMM (MoE experts, dlsim.workload.moe): ``groups`` GEMMs of flops/groups each
    # in one launch, each as efficient as a GEMM of its own size
    groups: int = 1


@dataclass(frozen=True)
class ConvShape:
    """A convolution or pooling window over a square feature map, with 'same' padding
    (kernel - 1) // 2: what spatial partitioning needs to know about a layer."""

    op: str  # conv or pool
    c_in: int
    c_out: int
    kernel: int
    stride: int
    hw_in: int
    hw_out: int


@dataclass(frozen=True)
class Matrix:
    """A weight matrix of ``d_in`` x ``d_out``: what LoRA adapts (Hu et al. 2021)."""

    name: str
    d_in: int
    d_out: int


@dataclass(frozen=True)
class BlockActivations:
    """A transformer block's stored activations as recomputation, tensor parallelism and the
    training precision see them (Korthikanti et al. 2022, §4): selective recomputation drops
    the ``attention_core`` (softmax output, dropout mask and output: 5*a*s^2*b bytes at 16
    bit); full recomputation keeps only the ``block_input`` (2*s*b*h); the ``replicated``
    part (GPT: layer-norm inputs, dropout masks, attention and MLP inputs, 10*s*b*h) is on
    every tensor rank unless sequence parallelism splits it too.

    ``gemm_inputs`` are the 16-bit bytes of linear-layer inputs that only the linear layer
    saves (``replicated_gemm_inputs`` of them replicated); ``shared_gemm_inputs`` those that
    another kernel also saves in 16 bit (a fused attention's output, which its backward
    needs, is the output projection's input). Under FP8/FP4 Transformer Engine saves a
    linear layer's input as its low-precision cast (TE ``Linear`` / ``LayerNormLinear``
    forward: the quantised input, column-wise for the weight gradient, in place of the 16-bit
    one; ``dlsim.parallel.memory.stored_activations``): the first shrink to the cast's bytes,
    the shared ones gain a cast copy beside the 16-bit tensor that is kept anyway."""

    attention_core: float
    block_input: float
    replicated: float
    gemm_inputs: float = 0.0
    replicated_gemm_inputs: float = 0.0
    shared_gemm_inputs: float = 0.0

    def divided(self, c: int) -> BlockActivations:
        """Every part over ``c`` (a context rank's 1/c of each sequence)."""
        return BlockActivations(*(getattr(self, f.name) / c for f in fields(self)))


@dataclass(frozen=True)
class MoEBlock:
    """The mixture-of-experts part of a transformer block, as expert parallelism sees it.

    The layer's kernels (``Layer.forward`` / ``backward``) are what one device holding every
    expert computes for one micro-batch under uniform routing: the routed experts' kernels
    (named in ``expert_kernels``) cover ``tokens * top_k`` token copies. ``Layer.params``
    counts every routed expert (``experts * expert_params``) plus the attention, router and
    shared experts. Expert parallelism (``dlsim.parallel.expert``) re-prices the routed
    kernels for the busiest rank and adds the all-to-all of ``token_bytes`` per copy."""

    experts: int  # routed experts
    top_k: int
    expert_params: int  # one routed expert's parameters
    tokens: int  # b*s: tokens of one micro-batch entering the router
    token_bytes: float  # one token's hidden state (h x dtype bytes): one copy dispatched
    expert_kernels: frozenset[str]  # names of the routed-expert kernels
    capacity_factor: float | None = None  # None: dropless
    router_imbalance: float = 1.0  # the busiest expert's load over the mean
    hidden: int = 0  # h: what the MoE kernels of dlsim.workload.moe are rebuilt from
    expert_ffn_hidden: int = 0  # one routed expert's intermediate size
    dtype_bytes: int = 2


LayerRole = Literal["embedding", "block", "head", "other"]
"""Where a layer sits in a transformer (the embedding, a block, the LM head), which decides
what tensor parallelism does to it (``dlsim.parallel.tensor``); "other" elsewhere."""


@dataclass(frozen=True)
class Layer:
    name: str
    params: int
    forward: tuple[Kernel, ...]
    backward: tuple[Kernel, ...]
    activation_bytes: float  # stored for the backward pass, per micro-batch
    output_bytes: float = 0.0  # the layer's output, what a pipeline sends to the next stage
    convs: tuple[ConvShape, ...] = ()  # the windows a CNN layer slides, in order
    matrices: tuple[Matrix, ...] = ()  # its weight matrices, by role (qkv, proj, ...)
    block: BlockActivations | None = None  # set for transformer blocks
    role: LayerRole = "other"
    moe: MoEBlock | None = None  # set for mixture-of-experts blocks


@dataclass(frozen=True)
class Model:
    name: str
    layers: tuple[Layer, ...]
    input_bytes: float = 0.0  # one micro-batch of input, where the model defines it

    @property
    def parameters(self) -> int:
        return sum(layer.params for layer in self.layers)

    @property
    def active_parameters(self) -> int:
        """Parameters one token passes through: a MoE block's routed experts count ``top_k``
        of ``experts`` (the convention of Mixtral's 12.9B of 46.7B, DeepSeek-V3's 37B of
        671B); the embedding table counts whole."""
        return self.parameters - sum((layer.moe.experts - layer.moe.top_k)
                                     * layer.moe.expert_params
                                     for layer in self.layers if layer.moe is not None)


MLP_PRESETS: dict[str, list[int]] = {
    "mlp-mnist": [784, 1024, 1024, 10],
    "mlp-wide": [4096, 16384, 16384, 16384, 4096],
}


def gemm(m: float, k: float, n: float, dtype_bytes: int, name: str = "") -> Kernel:
    """(m x k)(k x n): 2mkn FLOPs, reading both operands and writing the product once."""
    return Kernel("gemm", 2.0 * m * k * n, dtype_bytes * (m * k + k * n + m * n), name)


def elementwise(elements: float, dtype_bytes: int, passes: float = 2.0,
                name: str = "") -> Kernel:
    """A memory-bound kernel reading and writing ``elements`` (``passes`` tensor sweeps)."""
    return Kernel("elementwise", elements, dtype_bytes * elements * passes, name)


def backward_of(forward: tuple[Kernel, ...]) -> tuple[Kernel, ...]:
    """Input- and weight-gradient GEMMs (2x FLOPs; a grouped GEMM's are two grouped GEMMs of
    its groups, each GEMM of its forward size); elementwise backward reads twice as much, a
    copy moves the same bytes back; fused attention's backward is 2.5x its forward (it
    recomputes the scores)."""
    return tuple(_backward(k) for k in forward)


def _backward(k: Kernel) -> Kernel:
    if k.fused is not None:
        return replace(k, flops=BACKWARD_FLOPS * k.flops, bytes=2 * k.bytes,
                       fused=replace(k.fused, backward=True))
    if k.kind == "copy":
        return k
    return Kernel(k.kind, 2 * k.flops, 2 * k.bytes, k.name,
                  groups=2 * k.groups if k.groups > 1 else 1)


def attention_kernels(kernel: AttentionKernel, b: int, s: int, heads: int, d_qk: int,
                      d_v: int, reads: float, causal: bool, dtype_bytes: int,
                      window: int | None = None) -> tuple[Kernel, ...]:
    """The attention core of one block: unfused (``eager``), QK^T and AV over the whole
    square (4·b·s²·a·d for d_qk = d_v) writing and reading the scores, then the softmax over
    them (a sliding ``window`` is a mask on that square: no less work); fused, one kernel
    of ``fused_flops`` (within the ``window``, if any) reading Q, K, V (``reads`` elements)
    and writing the output."""
    if kernel == "eager":
        scores = b * heads * s * s
        return (Kernel("attention", 2.0 * b * s * s * heads * (d_qk + d_v),
                       dtype_bytes * (reads + b * s * heads * d_v + 2 * scores), "attention"),
                elementwise(scores, dtype_bytes, name="softmax"))
    keys = s if window is None else min(s, window)  # the keys one query row walks
    call = FusedAttention(kernel, (d_qk + d_v) / 2, keys, causal)
    return (Kernel("attention", fused_flops(b, s, heads, d_qk, d_v, causal, window),
                   dtype_bytes * (reads + b * s * heads * d_v), "attention", call),)


def transformer_layers(name: str, layers: int, h: int, a: int, s: int, vocab: int,
                       b: int, dtype_bytes: int, ffn: int | None = None,
                       encoder: bool = False, attention: AttentionKernel = "eager") -> Model:
    """GPT (pre-LN, final layer norm, tied logits) or, with ``encoder``, BERT (Devlin et al.
    2019): token-type embeddings and an embedding layer norm; post-LN blocks with the same
    parameters as GPT's; the masked-LM head transforms (dense h x h, GeLU, layer norm) before
    the tied decoder with its own bias. No pooler: pre-training on MLM alone."""
    ffn = ffn or 4 * h
    t = b * s  # tokens per micro-batch
    block_fwd = (
        elementwise(t * h, dtype_bytes, name="layernorm1"),
        gemm(t, h, 3 * h, dtype_bytes, "qkv"),
        *attention_kernels(attention, b, s, a, h // a, h // a, 3 * t * h, not encoder,
                           dtype_bytes),
        gemm(t, h, h, dtype_bytes, "proj"),                            # output projection
        elementwise(t * h, dtype_bytes, 3.0, "residual1+layernorm2"),
        gemm(t, h, ffn, dtype_bytes, "mlp_up"),
        elementwise(t * ffn, dtype_bytes, name="gelu"),
        gemm(t, ffn, h, dtype_bytes, "mlp_down"),
        elementwise(t * h, dtype_bytes, 3.0, "residual2"),
    )
    block_params = 4 * h * h + 2 * h * ffn + 9 * h + ffn  # = 12h^2 + 13h when ffn = 4h
    # Korthikanti's 5·a·s²·b of scores, softmax and dropout; fused attention keeps none of
    # them (its dropout mask is regenerated from the seed), only an fp32 logsumexp per row
    core = 5 * a * s * s * b if attention == "eager" else 0  # what selective recompute drops
    act = (s * b * h * (34 + 5 * a * s / h) if attention == "eager"
           else 34 * s * b * h + 4 * a * s * b) * dtype_bytes / 2
    # Linear-layer inputs (Korthikanti §4.1): qkv and mlp_up read the layer norms' outputs
    # (2sbh each, replicated), mlp_down the GeLU output (2s·b·ffn); proj reads the attention
    # output, which a fused kernel saves itself (its backward needs it), eager AV does not
    qkv_mlp_in, proj_in = 2 * t * h * dtype_bytes, t * h * dtype_bytes
    gemm_inputs = qkv_mlp_in + t * ffn * dtype_bytes + (proj_in if attention == "eager" else 0)
    block = BlockActivations(core * dtype_bytes / 2, t * h * dtype_bytes,
                             5 * t * h * dtype_bytes, gemm_inputs, qkv_mlp_in,
                             0.0 if attention == "eager" else proj_in)
    matrices = (Matrix("qkv", h, 3 * h), Matrix("proj", h, h), Matrix("mlp_up", h, ffn),
                Matrix("mlp_down", ffn, h))
    embed_fwd = (elementwise(t * h, dtype_bytes, 3.0 if encoder else 2.0, "embedding"),)
    logits = (gemm(t, h, vocab, dtype_bytes, "logits"),                 # tied weights
              elementwise(t * vocab, dtype_bytes, 3.0, "cross_entropy"))
    head_fwd: tuple[Kernel, ...] = (elementwise(t * h, dtype_bytes, 3.0, "final_layernorm"),
                                    *logits)
    head_params, head_act = 2 * h, t * (h + vocab) * dtype_bytes
    if encoder:
        head_fwd = (gemm(t, h, h, dtype_bytes, "mlm_transform"),
                    elementwise(t * h, dtype_bytes, 3.0, "gelu+layernorm"), *logits)
        head_params, head_act = h * h + 3 * h + vocab, head_act + 2 * t * h * dtype_bytes
    hidden_bytes = t * h * dtype_bytes
    out = [Layer("embedding", vocab * h + s * h + (4 * h if encoder else 0), embed_fwd,
                 backward_of(embed_fwd), hidden_bytes, hidden_bytes, role="embedding")]
    out += [Layer(f"block{i}", block_params, block_fwd, backward_of(block_fwd), act,
                  hidden_bytes, matrices=matrices, block=block, role="block")
            for i in range(layers)]
    out.append(Layer("lm_head", head_params, head_fwd, backward_of(head_fwd), head_act,
                     role="head"))
    return Model(name, tuple(out))


def mlp_layers(name: str, widths: list[int], b: int, dtype_bytes: int) -> Model:
    layers = []
    for i, (n_in, n_out) in enumerate(zip(widths, widths[1:])):
        fwd = (gemm(b, n_in, n_out, dtype_bytes), elementwise(b * n_out, dtype_bytes))
        layers.append(Layer(f"linear{i}", n_in * n_out + n_out, fwd, backward_of(fwd),
                            b * (n_in + n_out) * dtype_bytes, b * n_out * dtype_bytes))
    return Model(name, tuple(layers), b * widths[0] * dtype_bytes)
