"""LLaMA-2 as layers (Touvron et al. 2023, "Llama 2", Table 1 and the released configs;
the shapes are in ``dlsim.workload.shapes``).

A LLaMA block differs from GPT's: RMSNorm (h weights, no bias) instead of layer norm, rotary
position embeddings (no position table), grouped-query attention (``kv_heads`` key/value heads
shared by the query heads: 70B has 8), a SwiGLU MLP of three bias-free matrices (gate, up,
down) with intermediate size ``ffn_hidden``, and an output projection not tied to the embedding.
Parameters per block: 2h^2 + 2h*kv + 3h*ffn + 2h, where kv = kv_heads * h / heads.

Stored activations apply Korthikanti et al. 2022's counting (§4.1: every tensor autograd
keeps, 2 bytes per element at 16 bit) to this block, which has no dropout: the inputs of
both norms (4sbh), of the QKV and output projections and of the MLP (6sbh), Q and K after
rotation and V (2sbh + 4sb*kv), the softmax output (2as^2b, the attention core that
selective recomputation drops), and in the MLP the gate and up outputs, SiLU's output and
the product fed to the down projection (8sb*ffn). Tensor parallelism without sequence
parallelism replicates the norm inputs and the inputs of the QKV and gate/up projections
(8sbh).
"""

from __future__ import annotations

from dlsim.workload.model import (
    BlockActivations,
    Kernel,
    Layer,
    Matrix,
    Model,
    backward_of,
    elementwise,
    gemm,
)
from dlsim.workload.shapes import TransformerShape


def llama_layers(name: str, shape: TransformerShape, b: int, dt: int) -> Model:
    """The layers of a LLaMA ``shape`` (``dlsim.workload.shapes``) for micro-batch ``b``."""
    h, a, f, s, v = shape.hidden, shape.heads, shape.ffn_hidden, shape.seq_len, shape.vocab
    kv = shape.kv_heads * h // a
    t = b * s
    block_fwd = (
        elementwise(t * h, dt, name="rmsnorm1"),
        gemm(t, h, h + 2 * kv, dt, "qkv"),
        elementwise(t * (h + kv), dt, name="rope"),
        Kernel("attention", 4.0 * b * s * s * h,                        # QK^T and AV
               dt * (2 * t * h + 2 * t * kv + 2 * b * a * s * s), "attention"),
        elementwise(b * a * s * s, dt, name="softmax"),
        gemm(t, h, h, dt, "proj"),
        elementwise(t * h, dt, 3.0, "residual1+rmsnorm2"),
        gemm(t, h, 2 * f, dt, "mlp_up"),                                # gate and up
        elementwise(t * f, dt, 3.0, "swiglu"),
        gemm(t, f, h, dt, "mlp_down"),
        elementwise(t * h, dt, 3.0, "residual2"),
    )
    matrices = (Matrix("q_proj", h, h), Matrix("k_proj", h, kv), Matrix("v_proj", h, kv),
                Matrix("o_proj", h, h), Matrix("gate_proj", h, f), Matrix("up_proj", h, f),
                Matrix("down_proj", f, h))
    block_params = sum(m.d_in * m.d_out for m in matrices) + 2 * h
    stored = (12 * t * h + 4 * t * kv + 8 * t * f + 2 * a * s * s * b) * dt / 2
    block = BlockActivations(2 * a * s * s * b * dt / 2, t * h * dt, 4 * t * h * dt)
    hidden_bytes = t * h * dt
    embed_fwd = (elementwise(t * h, dt, name="embedding"),)
    head_fwd = (elementwise(t * h, dt, 3.0, "final_layernorm"),
                gemm(t, h, v, dt, "logits"),                              # untied
                elementwise(t * v, dt, 3.0, "cross_entropy"))
    layers = [Layer("embedding", v * h, embed_fwd, backward_of(embed_fwd), hidden_bytes,
                    hidden_bytes, role="embedding")]
    layers += [Layer(f"block{i}", block_params, block_fwd, backward_of(block_fwd), stored,
                     hidden_bytes, matrices=matrices, block=block, role="block")
               for i in range(shape.layers)]
    layers.append(Layer("lm_head", v * h + h, head_fwd, backward_of(head_fwd),
                        t * (h + v) * dt, matrices=(Matrix("lm_head", h, v),), role="head"))
    return Model(name, tuple(layers))
