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

Stored activations apply Korthikanti et al. 2022's counting (§4.1: every tensor autograd
keeps, 2 bytes per element at 16 bit) to this block, which has no dropout: the inputs of both
norms (4sbh), of the QKV projection (2sbh), of the output projection (2sb·a·d) and of the MLP
(2sbh); Q after rotation, K and V (2sb·a·d + 4sb·kv·d); the softmax output (2as²b, the
attention core that selective recomputation drops; fused attention, ``dlsim.workload.attention``,
keeps only an fp32 logsumexp per row, 2asb, and leaves selective recomputation nothing to
drop); in a dense MLP the gate and up outputs,
SiLU's output and the product fed to the down projection (8sb·ffn). MLA keeps instead the
latents both as norm inputs and as up-projection inputs (4sb·(q_lora + kv_lora); without a
query latent, 4sb·kv_lora), Q and K of the heads (4sb·a·d_qk) and V (2sb·a·d_v). A MoE MLP
keeps the router's probabilities (2sb·E), the permuted token copies going into the experts and
their outputs waiting for the weighted combine (4sb·top_k·h), the experts' SwiGLU tensors
(8sb·top_k·f_e) and the shared experts' (8sb·shared·f_e). Tensor parallelism without sequence
parallelism replicates the norm inputs and the inputs of the QKV and MLP projections (8sbh).
For the Llama-2 shapes these are the counts of the Llama block dlsim has always built.
"""

from __future__ import annotations

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


class _Part:
    """Forward kernels, weight matrices, other parameters and stored elements (at 2 bytes
    each: Korthikanti's count) of one part of a block."""

    def __init__(self, forward: tuple[Kernel, ...], matrices: tuple[Matrix, ...],
                 stored_elements: int, extra_params: int = 0):
        self.forward, self.matrices = forward, matrices
        self.stored_elements, self.extra_params = stored_elements, extra_params

    @property
    def params(self) -> int:
        return sum(m.d_in * m.d_out for m in self.matrices) + self.extra_params


def _scores(kernel: AttentionKernel, a: int, s: int, b: int) -> int:
    """Stored elements of the attention core: the softmax output (2·a·s²·b) unfused; fused,
    the fp32 logsumexp per row (a·s·b floats: 2·a·s·b at 2 bytes)."""
    return 2 * a * s * s * b if kernel == "eager" else 2 * a * s * b


def _gqa(shape: TransformerShape, b: int, dt: int, kernel: AttentionKernel) -> _Part:
    h, a, s = shape.hidden, shape.heads, shape.seq_len
    q, kv = a * shape.head_size, shape.kv_heads * shape.head_size
    t = b * s
    forward = (
        elementwise(t * h, dt, name="rmsnorm1"),
        gemm(t, h, q + 2 * kv, dt, "qkv"),
        elementwise(t * (q + kv), dt, name="rope"),
        *attention_kernels(kernel, b, s, a, shape.head_size, shape.head_size,
                           t * q + 2 * t * kv, True, dt),
        gemm(t, q, h, dt, "proj"),
    )
    matrices = (Matrix("q_proj", h, q), Matrix("k_proj", h, kv), Matrix("v_proj", h, kv),
                Matrix("o_proj", q, h))
    stored = 4 * t * h + 2 * t * q + 4 * t * kv + _scores(kernel, a, s, b) + 2 * t * q
    return _Part(forward, matrices, stored)


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
    stored = (4 * t * h + 4 * t * (ql + kvl) + 4 * t * a * qk + 2 * t * a * v
              + _scores(kernel, a, s, b) + 2 * t * a * v)
    return _Part(forward, matrices, stored, extra_params=ql + kvl)       # the latent norms


def _dense_mlp(h: int, f: int, t: int, dt: int) -> _Part:
    forward = (gemm(t, h, 2 * f, dt, "mlp_up"),                          # gate and up
               elementwise(t * f, dt, 3.0, "swiglu"),
               gemm(t, f, h, dt, "mlp_down"))
    matrices = (Matrix("gate_proj", h, f), Matrix("up_proj", h, f), Matrix("down_proj", f, h))
    return _Part(forward, matrices, 4 * t * h + 8 * t * f)


def _moe_mlp(h: int, moe: MoEShape, t: int, dt: int) -> _Part:
    e, k, f = moe.experts, moe.top_k, moe.expert_ffn_hidden
    copies = t * k
    shared = moe.shared_experts * f
    forward = (router(h, e, t, dt), *moe_kernels(h, f, e, k, dt, t, copies, e),
               *shared_expert_kernels(h, shared, t, dt))
    matrices = (Matrix("router", h, e),
                *((Matrix("shared_gate_proj", h, shared), Matrix("shared_up_proj", h, shared),
                   Matrix("shared_down_proj", shared, h)) if shared else ()))
    stored = 4 * t * h + 2 * t * e + 4 * copies * h + 8 * copies * f + 8 * t * shared
    return _Part(forward, matrices, stored, extra_params=e * 3 * h * f)


def decoder_layers(name: str, shape: TransformerShape, b: int, dt: int,
                   kernel: AttentionKernel = "eager") -> Model:
    """The layers of a decoder ``shape`` for micro-batch ``b`` at ``dt`` bytes per element,
    its attention run by ``kernel`` (``dlsim.workload.attention``)."""
    h, v, t = shape.hidden, shape.vocab, b * shape.seq_len
    attention = (_gqa(shape, b, dt, kernel) if shape.mla is None
                 else _mla(shape, shape.mla, b, dt, kernel))
    hidden_bytes = t * h * dt
    core = 2 * shape.heads * shape.seq_len ** 2 * b * dt / 2 if kernel == "eager" else 0.0
    block = BlockActivations(core, t * h * dt, 4 * t * h * dt)
    dense = _dense_mlp(h, shape.ffn_hidden, t, dt)
    moe = None if shape.moe is None else _moe_mlp(h, shape.moe, t, dt)
    first_moe = shape.layers - shape.moe_layers

    def layer(i: int) -> Layer:
        mlp = dense if moe is None or i < first_moe else moe
        forward = (*attention.forward, elementwise(t * h, dt, 3.0, "residual1+rmsnorm2"),
                   *mlp.forward, elementwise(t * h, dt, 3.0, "residual2"))
        stored = (attention.stored_elements + mlp.stored_elements) * dt / 2
        moe_block = None
        if mlp is moe and shape.moe is not None:
            f = shape.moe.expert_ffn_hidden
            moe_block = MoEBlock(shape.moe.experts, shape.moe.top_k, 3 * h * f, t, h * dt,
                                 ROUTED_KERNELS, shape.moe.capacity_factor,
                                 shape.moe.router_imbalance, h, f, dt)
        return Layer(f"block{i}", attention.params + mlp.params + 2 * h, forward,
                     backward_of(forward), stored, hidden_bytes,
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
