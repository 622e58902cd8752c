"""The modern decoder as layers: Llama 2 and 3, Mixtral, Qwen3 (dense and MoE), DeepSeek-V3,
from one ``TransformerShape`` (``dlsim.workload.shapes``).

A block is RMSNorm (h weights, no bias), attention, RMSNorm, an MLP, with rotary positions
(no position table) and an output projection tied to the embedding only if the shape says so.
Attention is grouped-query (``kv_heads`` key/value heads shared by the query heads: Llama-2 70B
and Llama 3 have 8; heads of ``head_size``, hidden/heads unless ``head_dim`` says otherwise)
or multi-head latent (MLA, DeepSeek-V2 §2.1 / V3 §2.1.1: the input is projected down to a
query latent of ``q_lora_rank`` and a key-value latent of ``kv_lora_rank`` plus one shared
rotary key of ``qk_rope_head_dim``, each latent RMSNorm-ed and projected up to the heads;
training runs the up projections, not the absorbed inference form). The MLP is SwiGLU, three
bias-free matrices (gate, up, down) of ``ffn_hidden``, or, after the first ``dense_layers``
blocks, a mixture of experts: a router GEMM h x experts, ``top_k`` routed SwiGLU experts of
``expert_ffn_hidden`` for tokens*top_k token copies (one grouped GEMM reading every expert's
weights) and ``shared_experts`` SwiGLU experts of the same width that every token passes.

FLOPs: a GEMM (m x k)(k x n) is 2mkn; attention's QK^T and AV are 4·b·s²·a·d_head (MLA:
2·b·s²·a·(d_qk + d_v), d_qk = nope + rope). Parameters per block: q (h x a·d), k and v
(h x kv·d each), o (a·d x h), 3·h·ffn (dense) or h·E + (E + shared)·3·h·f_e (MoE), and 2h of
norms; MLA replaces q/k/v by q_a (h x q_lora) + its norm + q_b (q_lora x a·d_qk), kv_a
(h x (kv_lora + rope)) + its norm + kv_b (kv_lora x a·(nope + d_v)), and o is a·d_v x h.

Stored activations are the tensors Megatron-Core with Transformer Engine saves for backward
(``Saved``; Korthikanti et al. 2022 §4.1 count every tensor autograd keeps, and these are
the tensors the fused kernels keep). A block has no dropout. RMSNorm fused into the linear
layer it feeds (TE ``LayerNormLinear`` saves ``inputmat``, ``ln_out``, ``rsigma``): the
norm's input, its fp32 1/rms per token and the GEMM's input, ``2·dt·h + 4`` bytes a token,
for the QKV projection and for fc1. Attention: Q and K after rotation (Megatron's fused RoPE
saves only its frequency table) and V at ``kv_heads`` (grouped-query K and V are never
expanded); a fused kernel (FlashAttention's forward and TE's fused attention save q, k, v,
out and the softmax logsumexp) keeps its output, which is also the output projection's
input, and the fp32 logsumexp per row and head (4·a·s·b bytes); eager attention keeps the
softmax output (2·a·s²·b at 16 bit: the attention core selective recomputation drops) and
the AV output for the projection. Dense MLP: Megatron's fused SwiGLU (``bias_swiglu_impl``)
saves only its input, the gate and up outputs (2·ffn), and recomputes SiLU in backward; fc2
saves the SwiGLU output (ffn): 6·s·b·ffn bytes at 16 bit, not the 8 of SiLU and a product
written out. Per token at 16 bit a dense GQA block with a fused kernel saves
8h + 4·a·d + 4·kv·d + 6·ffn + 8 + 4a bytes. Under FP8/FP4 TE saves each linear layer's
input as its cast (``BlockActivations``: the QKV, fc1 and fc2 inputs shrink to one byte;
the output projection adds a one-byte cast beside the fused kernel's 16-bit output). MLA
(Megatron-Core's ``MLASelfAttention``): a separate RMSNorm (input, 1/rms) whose output both
down projections save (one 16-bit tensor, a cast each under FP8), each latent's RMSNorm fused
into its up projection (input, 1/rms, output: 4sb·(q_lora + kv_lora) + 8sb; without a query
latent, 4sb·kv_lora + 4sb), Q and K of the heads (4sb·a·d_qk), V (2sb·a·d_v) and the core
as above. A MoE MLP: its RMSNorm (input, 1/rms) and the output the
16-bit router saves, the router's probabilities (2sb·E), the permuted token copies the
experts' fc1 saves and their outputs waiting for the weighted combine (4sb·top_k·h), the
experts' and shared experts' SwiGLU as in the dense MLP (6sb·top_k·f_e, 6sb·shared·f_e).
Tensor parallelism without sequence parallelism replicates the norm inputs, their 1/rms and
the inputs of the QKV projection and of the MLP.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from dlsim.hardware.profiles import AttentionKernel
from dlsim.workload.model import (
    BlockActivations,
    Kernel,
    Layer,
    Matrix,
    Model,
    MoEBlock,
    attention_kernels,
    backward_of,
    elementwise,
    gemm,
)
from dlsim.workload.moe import ROUTED_KERNELS, moe_kernels, router, shared_expert_kernels
from dlsim.workload.shapes import MLAShape, MoEShape, TransformerShape

FP32_BYTES = 4  # RMSNorm's 1/rms and fused attention's logsumexp are saved in fp32


@dataclass(frozen=True)
class Saved:
    """Bytes one part of a block saves for backward, as ``BlockActivations`` splits them:
    all of them, those every tensor rank keeps without sequence parallelism, and the
    linear-layer inputs (only the layer saves them; of them replicated; also saved 16-bit
    by another kernel)."""

    total: float
    replicated: float = 0.0
    gemm_inputs: float = 0.0
    replicated_gemm_inputs: float = 0.0
    shared_gemm_inputs: float = 0.0

    def __add__(self, other: Saved) -> Saved:
        return Saved(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


def _rmsnorm_linear(h: int, t: int, dt: int, replicated: bool = True) -> Saved:
    """A fused RMSNorm and the linear layer it feeds (TE ``LayerNormLinear``, Megatron-Core's
    ``TELayerNormColumnParallelLinear``: it saves ``inputmat``, ``ln_out``, ``rsigma``): the
    norm's input, its fp32 1/rms per token and its output, the GEMM's input; all on every
    tensor rank without sequence parallelism unless not ``replicated``."""
    gemm_input = dt * t * h
    norm = dt * t * h + FP32_BYTES * t
    if not replicated:
        return Saved(norm + gemm_input, gemm_inputs=gemm_input)
    return Saved(norm + gemm_input, norm + gemm_input, gemm_input, gemm_input)


class _Part:
    """Forward kernels, weight matrices, other parameters and saved bytes of one part of a
    block."""

    def __init__(self, forward: tuple[Kernel, ...], matrices: tuple[Matrix, ...],
                 saved: Saved, extra_params: int = 0):
        self.forward, self.matrices = forward, matrices
        self.saved, self.extra_params = saved, extra_params

    @property
    def params(self) -> int:
        return sum(m.d_in * m.d_out for m in self.matrices) + self.extra_params


def _attention_core(kernel: AttentionKernel, a: int, s: int, b: int, out: float, dt: int
                    ) -> Saved:
    """What the attention core saves besides Q, K and V, and the output projection's input
    (``out`` elements). Fused (FlashAttention's and TE's fused-attention forward save q, k,
    v, out and the fp32 softmax logsumexp, a per row and head): 4·a·s·b bytes, and the
    output, which the projection's input shares. Eager: the softmax output (a·s²·b, which AV
    saves too) and the AV output, which only the projection saves."""
    if kernel == "eager":
        return Saved(dt * a * s * s * b + dt * out, gemm_inputs=dt * out)
    return Saved(FP32_BYTES * a * s * b + dt * out, shared_gemm_inputs=dt * out)


def _gqa(shape: TransformerShape, b: int, dt: int, kernel: AttentionKernel,
         window: int | None = None) -> _Part:
    """Grouped-query attention, its queries attending within ``window`` keys when given."""
    h, a, s = shape.hidden, shape.heads, shape.seq_len
    q, kv = a * shape.head_size, shape.kv_heads * shape.head_size
    t = b * s
    forward = (
        elementwise(t * h, dt, name="rmsnorm1"),
        gemm(t, h, q + 2 * kv, dt, "qkv"),
        elementwise(t * (q + kv), dt, name="rope"),
        *attention_kernels(kernel, b, s, a, shape.head_size, shape.head_size,
                           t * q + 2 * t * kv, True, dt, window),
        gemm(t, q, h, dt, "proj"),
    )
    matrices = (Matrix("q_proj", h, q), Matrix("k_proj", h, kv), Matrix("v_proj", h, kv),
                Matrix("o_proj", q, h))
    # gpt-oss: a bias on each projection's outputs (added in the GEMM's epilogue, no
    # kernel of its own) and a learned sink logit per head
    extra = (q + 2 * kv + h if shape.linear_bias else 0) + (a if shape.attention_sinks else 0)
    # Q and K after rotation (the fused RoPE saves only its frequencies), V: kv_heads only
    qkv = Saved(dt * t * (q + 2 * kv))
    saved = _rmsnorm_linear(h, t, dt) + qkv + _attention_core(kernel, a, s, b, t * q, dt)
    return _Part(forward, matrices, saved, extra_params=extra)


def _mla(shape: TransformerShape, mla: MLAShape, b: int, dt: int,
         kernel: AttentionKernel) -> _Part:
    h, a, s = shape.hidden, shape.heads, shape.seq_len
    t = b * s
    rope, kvl, ql = mla.qk_rope_head_dim, mla.kv_lora_rank, mla.q_lora_rank or 0
    qk, v = mla.qk_nope_head_dim + rope, mla.v_head_dim
    kv_up = Matrix("kv_b_proj", kvl, a * (mla.qk_nope_head_dim + v))
    q_mats: tuple[Matrix, ...]
    if ql:
        q_mats = (Matrix("q_a_proj", h, ql), Matrix("q_b_proj", ql, a * qk))
        q_up = gemm(t, ql, a * qk, dt, "qkv")
    else:  # queries projected at full rank from the block input
        q_mats = (Matrix("q_proj", h, a * qk),)
        q_up = gemm(t, h, a * qk, dt, "qkv")
    forward = (
        elementwise(t * h, dt, name="rmsnorm1"),
        gemm(t, h, ql + kvl + rope, dt, "mla_down"),                     # q_a and kv_a
        elementwise(t * (ql + kvl), dt, name="mla_norm"),
        q_up,
        gemm(t, kvl, kv_up.d_out, dt, "qkv"),
        elementwise(t * (a * rope + rope), dt, name="rope"),
        *attention_kernels(kernel, b, s, a, qk, v, 2 * t * a * qk + t * a * v, True, dt),
        gemm(t, a * v, h, dt, "proj"),
    )
    matrices = (*q_mats, Matrix("kv_a_proj_with_mqa", h, kvl + rope), kv_up,
                Matrix("o_proj", a * v, h))
    # Megatron-Core's MLA: a separate RMSNorm whose output the down projections (q_a, or
    # q at full rank, and kv_a) both save (one 16-bit tensor; under FP8 a cast each), each
    # latent's RMSNorm fused into its up projection, Q and K of the heads, V, the core
    norm = dt * t * h + FP32_BYTES * t
    down_in = dt * t * h
    saved = Saved(norm + down_in, norm + down_in, down_in, down_in, down_in)
    for latent in (ql, kvl):
        if latent:  # counted split over tensor ranks, as dlsim always has
            saved += _rmsnorm_linear(latent, t, dt, replicated=False)
    saved += Saved(dt * t * a * (2 * qk + v)) + _attention_core(kernel, a, s, b, t * a * v, dt)
    return _Part(forward, matrices, saved, extra_params=ql + kvl)        # the latent norms


def _dense_mlp(h: int, f: int, t: int, dt: int) -> _Part:
    forward = (gemm(t, h, 2 * f, dt, "mlp_up"),                          # gate and up
               elementwise(t * f, dt, 3.0, "swiglu"),
               gemm(t, f, h, dt, "mlp_down"))
    matrices = (Matrix("gate_proj", h, f), Matrix("up_proj", h, f), Matrix("down_proj", f, h))
    # fc1 with its fused RMSNorm; Megatron-Core's fused SwiGLU (``bias_swiglu_impl``) saves
    # only its input, the gate and up outputs (2f), and recomputes SiLU in backward; fc2
    # saves its input, the SwiGLU output (f)
    down_in = dt * t * f
    saved = _rmsnorm_linear(h, t, dt) + Saved(dt * t * 2 * f + down_in, gemm_inputs=down_in)
    return _Part(forward, matrices, saved)


def expert_params(h: int, f: int, bias: bool) -> int:
    """One routed SwiGLU expert's parameters: 3·h·f, plus the gate/up (2f) and down (h)
    biases of gpt-oss's experts."""
    return 3 * h * f + (2 * f + h if bias else 0)


def _moe_mlp(h: int, moe: MoEShape, t: int, dt: int, bias: bool = False) -> _Part:
    e, k, f = moe.experts, moe.top_k, moe.expert_ffn_hidden
    copies = t * k
    shared = moe.shared_experts * f
    forward = (router(h, e, t, dt), *moe_kernels(h, f, e, k, dt, t, copies, e),
               *shared_expert_kernels(h, shared, t, dt))
    matrices = (Matrix("router", h, e),
                *((Matrix("shared_gate_proj", h, shared), Matrix("shared_up_proj", h, shared),
                   Matrix("shared_down_proj", shared, h)) if shared else ()))
    # Megatron-Core's MoE layer: a separate RMSNorm (input, fp32 1/rms) whose output the
    # 16-bit router GEMM saves (and the shared experts' fc1 beside it), the router's
    # probabilities; the permutation keeps only indices, the experts' fc1 (TE GroupedLinear)
    # saves the permuted copies, the unpermute their outputs with the probabilities for the
    # weighted combine; each expert's fused SwiGLU saves 2f and its fc2 input f
    norm_out = dt * t * h
    norm = Saved(dt * t * h + FP32_BYTES * t + norm_out, dt * t * h + FP32_BYTES * t + norm_out)
    probabilities = Saved(dt * t * e)
    expert_in, expert_down_in = dt * copies * h, dt * copies * f
    experts = Saved(expert_in + dt * copies * 2 * f + expert_down_in + dt * copies * h,
                    gemm_inputs=expert_in + expert_down_in)
    shared_part = Saved(dt * t * 3 * shared, gemm_inputs=dt * t * shared,
                        shared_gemm_inputs=norm_out if shared else 0.0)
    saved = norm + probabilities + experts + shared_part
    router_bias = e if bias else 0
    return _Part(forward, matrices, saved,
                 extra_params=e * expert_params(h, f, bias) + router_bias)


def decoder_layers(name: str, shape: TransformerShape, b: int, dt: int,
                   kernel: AttentionKernel = "eager") -> Model:
    """The layers of a decoder ``shape`` for micro-batch ``b`` at ``dt`` bytes per element,
    its attention run by ``kernel`` (``dlsim.workload.attention``)."""
    h, v, t = shape.hidden, shape.vocab, b * shape.seq_len
    full = (_gqa(shape, b, dt, kernel) if shape.mla is None
            else _mla(shape, shape.mla, b, dt, kernel))
    windowed = (None if not any(shape.windowed(i) for i in range(shape.layers))
                else _gqa(shape, b, dt, kernel, shape.sliding_window))
    hidden_bytes = t * h * dt
    core = 2 * shape.heads * shape.seq_len ** 2 * b * dt / 2 if kernel == "eager" else 0.0
    dense = _dense_mlp(h, shape.ffn_hidden, t, dt)
    moe = None if shape.moe is None else _moe_mlp(h, shape.moe, t, dt, shape.linear_bias)
    first_moe = shape.layers - shape.moe_layers

    def layer(i: int) -> Layer:
        mlp = dense if moe is None or i < first_moe else moe
        attention = windowed if windowed is not None and shape.windowed(i) else full
        forward = (*attention.forward, elementwise(t * h, dt, 3.0, "residual1+rmsnorm2"),
                   *mlp.forward, elementwise(t * h, dt, 3.0, "residual2"))
        saved = attention.saved + mlp.saved
        block = BlockActivations(core, t * h * dt, saved.replicated, saved.gemm_inputs,
                                 saved.replicated_gemm_inputs, saved.shared_gemm_inputs)
        moe_block = None
        if mlp is moe and shape.moe is not None:
            f = shape.moe.expert_ffn_hidden
            moe_block = MoEBlock(shape.moe.experts, shape.moe.top_k,
                                 expert_params(h, f, shape.linear_bias), t, h * dt,
                                 ROUTED_KERNELS, shape.moe.capacity_factor,
                                 shape.moe.router_imbalance, h, f, dt)
        return Layer(f"block{i}", attention.params + mlp.params + 2 * h, forward,
                     backward_of(forward), saved.total, hidden_bytes,
                     matrices=attention.matrices + mlp.matrices, block=block, role="block",
                     moe=moe_block)

    embed_fwd = (elementwise(t * h, dt, name="embedding"),)
    head_fwd = (elementwise(t * h, dt, 3.0, "final_layernorm"),
                gemm(t, h, v, dt, "logits"),
                elementwise(t * v, dt, 3.0, "cross_entropy"))
    head_params = h if shape.tied_embeddings else v * h + h             # final norm (+ head)
    layers = [Layer("embedding", v * h, embed_fwd, backward_of(embed_fwd), hidden_bytes,
                    hidden_bytes, role="embedding")]
    layers += [layer(i) for i in range(shape.layers)]
    layers.append(Layer("lm_head", head_params, head_fwd, backward_of(head_fwd),
                        t * (h + v) * dt, matrices=(Matrix("lm_head", h, v),), role="head"))
    return Model(name, tuple(layers))
