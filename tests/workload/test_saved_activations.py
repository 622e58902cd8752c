"""Stored activations against what autograd actually saves, and against closed forms.

The torch test records every tensor a small Llama-style block saves for backward
(``torch.autograd.graph.saved_tensors_hooks``) and holds the bytes against
``dlsim.workload.decoder``'s count for the same shape. The block is written the way
Megatron-Core with Transformer Engine runs it: RMSNorm as one function saving its input and
fp32 1/rms (TE's fused norm), Megatron's fused SwiGLU saving only its input, rotary
positions, grouped-query attention through ``scaled_dot_product_attention`` (torch's CPU
flash kernel saves Q, K and V at their own head counts, the output and an fp32 logsumexp,
as FlashAttention does). What torch saves differently is stated where it is tested: SiLU
and a product written out save 8 bytes an ffn element, not 6. FP8 has no CPU kernel; its
counts are checked against the closed forms of TE's casts.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.parallel.memory import stored_activations
from dlsim.workload.decoder import decoder_layers
from dlsim.workload.model import Layer, transformer_layers
from dlsim.workload.shapes import llama

torch = pytest.importorskip("torch")
F = torch.nn.functional

B, S, H, A, KV, D, FFN = 2, 32, 64, 4, 2, 16, 96
EPS = 1e-6


class RMSNorm(torch.autograd.Function):
    """y = x / rms(x) * w, saving x and 1/rms in fp32 (TE's rmsnorm forward)."""

    @staticmethod
    def forward(ctx, x, w):  # type: ignore[no-untyped-def]
        rs = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + EPS)
        ctx.save_for_backward(x, w, rs)
        return (x.float() * rs).to(x.dtype) * w

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        x, w, rs = ctx.saved_tensors
        xf, g = x.float(), (dy * w).float()
        dx = rs * (g - xf * rs.pow(2) * (g * xf).mean(-1, keepdim=True))
        dw = (dy.float() * xf * rs).sum(dim=tuple(range(x.dim() - 1)))
        return dx.to(x.dtype), dw.to(w.dtype)


class SwiGLU(torch.autograd.Function):
    """silu(x1) * x2 of x = [x1, x2], saving only x (Megatron-Core's ``bias_swiglu_impl``)."""

    @staticmethod
    def forward(ctx, x):  # type: ignore[no-untyped-def]
        ctx.save_for_backward(x)
        x1, x2 = x.chunk(2, dim=-1)
        return F.silu(x1) * x2

    @staticmethod
    def backward(ctx, dy):  # type: ignore[no-untyped-def]
        (x,) = ctx.saved_tensors
        x1, x2 = x.float().chunk(2, dim=-1)
        sig = torch.sigmoid(x1)
        dx1 = dy.float() * x2 * sig * (1 + x1 * (1 - sig))
        return torch.cat([dx1, dy.float() * x1 * sig], dim=-1).to(x.dtype)


def _rotate(x, cos, sin):  # type: ignore[no-untyped-def]
    x1, x2 = x.chunk(2, dim=-1)
    return x * cos + torch.cat([-x2, x1], dim=-1) * sin


def _block(x, p, cos, sin, fused_swiglu=True):  # type: ignore[no-untyped-def]
    """A pre-norm Llama block: RMSNorm, GQA with RoPE, RMSNorm, SwiGLU, two residuals."""
    b, s, _ = x.shape
    n1 = RMSNorm.apply(x, p["norm1"])
    q = _rotate(F.linear(n1, p["q"]).view(b, s, A, D), cos, sin)
    k = _rotate(F.linear(n1, p["k"]).view(b, s, KV, D), cos, sin)
    v = F.linear(n1, p["v"]).view(b, s, KV, D)
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2),
                                         v.transpose(1, 2), is_causal=True, enable_gqa=True)
    x = x + F.linear(out.transpose(1, 2).reshape(b, s, A * D), p["o"])
    n2 = RMSNorm.apply(x, p["norm2"])
    up = F.linear(n2, p["fc1"])
    if fused_swiglu:
        act = SwiGLU.apply(up)
    else:
        gate, lin = up.chunk(2, dim=-1)
        act = F.silu(gate) * lin
    return x + F.linear(act, p["fc2"])


def _params():  # type: ignore[no-untyped-def]
    g = torch.Generator().manual_seed(0)
    shapes = {"norm1": (H,), "norm2": (H,), "q": (A * D, H), "k": (KV * D, H),
              "v": (KV * D, H), "o": (H, A * D), "fc1": (2 * FFN, H), "fc2": (H, FFN)}
    return {name: (torch.randn(*shape, generator=g) * 0.1).to(torch.bfloat16)
            .requires_grad_() for name, shape in shapes.items()}


def _saved_bytes(fused_swiglu: bool = True) -> tuple[int, object]:
    """Bytes of the distinct storages the block saves for backward, the weights and the
    rotary tables (constants of the model, not activations) left out."""
    params = _params()
    pos = torch.arange(S, dtype=torch.float32)[:, None] / 10000 ** (
        torch.arange(D, dtype=torch.float32) % (D // 2) / (D // 2))
    cos, sin = (f(pos)[:, None, :].to(torch.bfloat16) for f in (torch.cos, torch.sin))
    x = torch.randn(B, S, H, generator=torch.Generator().manual_seed(1)).to(
        torch.bfloat16).requires_grad_()
    constants = {t.untyped_storage().data_ptr() for t in (*params.values(), cos, sin)}
    saved: dict[int, int] = {}

    def pack(t):  # type: ignore[no-untyped-def]
        storage = t.untyped_storage()
        if storage.data_ptr() not in constants:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        y = _block(x, params, cos, sin, fused_swiglu)
    y.float().square().mean().backward()  # the saved tensors serve a real backward
    return sum(saved.values()), params


def _dlsim_block() -> Layer:
    shape = llama(1, H, A, KV, FFN, S, 128)
    return decoder_layers("tiny", shape, B, 2, "flash").layers[1]


def test_dlsim_counts_the_bytes_torch_saves_for_a_llama_block():
    saved, _ = _saved_bytes()
    t = B * S
    # closed form, independently: norm inputs and GEMM inputs 4·2th, fp32 1/rms 2·4t,
    # Q, K, V 2t(a + 2kv)d, output 2t·a·d, fp32 logsumexp 4·a·t, SwiGLU 2t·2f + 2t·f
    closed = 8 * t * H + 8 * t + 2 * t * (A + 2 * KV) * D + 2 * t * A * D + 4 * A * t \
        + 6 * t * FFN
    assert saved == closed
    assert _dlsim_block().activation_bytes == saved


def test_the_custom_functions_compute_the_block_torch_would():
    """The fused RMSNorm and SwiGLU give eager torch's gradients (so the block whose saved
    tensors are counted is the real block)."""
    params = _params()
    cos = sin = torch.ones(S, 1, D, dtype=torch.bfloat16)

    def grads(fused: bool):  # type: ignore[no-untyped-def]
        x = torch.linspace(-2, 2, B * S * H).reshape(B, S, H).to(torch.bfloat16)
        x.requires_grad_()
        if fused:
            y = _block(x, params, cos, sin)
        else:
            def norm(z, w):  # type: ignore[no-untyped-def]
                return (z.float() * torch.rsqrt(z.float().pow(2).mean(-1, keepdim=True)
                                                + EPS)).to(z.dtype) * w
            saved = RMSNorm.apply
            RMSNorm.apply = norm  # type: ignore[method-assign]
            try:
                y = _block(x, params, cos, sin, fused_swiglu=False)
            finally:
                RMSNorm.apply = saved  # type: ignore[method-assign]
        y.float().square().mean().backward()
        out = x.grad.float().clone()
        for p in params.values():
            p.grad = None
        return out

    fused, eager = grads(True), grads(False)
    assert torch.allclose(fused, eager, rtol=0.05, atol=2e-3)


def test_silu_and_product_written_out_save_an_ffn_element_more():
    """SiLU saves its input, the product both factors: the gate and up outputs (one
    storage), SiLU's output and the product fed to fc2, 8 bytes an ffn element against the
    fused SwiGLU's 6 (Korthikanti's eager count, the one dlsim used before)."""
    fused, _ = _saved_bytes(True)
    eager, _ = _saved_bytes(False)
    assert eager - fused == 2 * B * S * FFN


# GPT blocks: Korthikanti et al. 2022, Table 2, and Transformer Engine's FP8 casts
dims = st.tuples(st.sampled_from([1, 2, 4, 8]), st.sampled_from([8, 16]),
                 st.sampled_from([64, 256]), st.sampled_from([1, 2]))


def _gpt(h: int, a: int, s: int, b: int, attention: str) -> Layer:
    return transformer_layers("g", 1, h, a, s, 1000, b, 2, attention=attention).layers[1]


@settings(deadline=None, max_examples=25)
@given(dims)
def test_gpt_16bit_is_korthikanti_exactly(d):
    t, a, s, b = d
    h = 64 * a
    sbh = s * b * h
    eager = _gpt(h, a, s, b, "eager")
    assert stored_activations(eager, t, "none", False, "bf16") == (
        10 * sbh + (24 * sbh + 5 * a * s * s * b) / t)
    assert stored_activations(eager, t, "none", True, "bf16") == (
        (34 * sbh + 5 * a * s * s * b) / t)


@settings(deadline=None, max_examples=25)
@given(dims)
def test_gpt_fp8_saves_the_linear_inputs_as_one_byte_casts(d):
    """FP8 (TE): the qkv and fc1 inputs (replicated) and fc2's 8sbh input are saved as
    1-byte casts; the output projection's input is the AV output, which eager attention
    does not save, so its cast replaces it (27sbh), while a fused kernel keeps its 16-bit
    output and TE adds the cast beside it (29sbh)."""
    t, a, s, b = d
    h = 64 * a
    sbh = s * b * h
    eager, flash = _gpt(h, a, s, b, "eager"), _gpt(h, a, s, b, "flash")
    assert stored_activations(eager, t, "none", True, "fp8") == (
        (27 * sbh + 5 * a * s * s * b) / t)
    assert stored_activations(eager, t, "none", False, "fp8") == (
        8 * sbh + (19 * sbh + 5 * a * s * s * b) / t)
    assert stored_activations(flash, t, "none", True, "fp8") == (
        (29 * sbh + 4 * a * s * b) / t)
    assert stored_activations(eager, t, "full", True, "fp8") == 2 * sbh / t


def test_llama_fp8_casts_under_sequence_parallelism():
    """Llama-3 70B's block (h 8192, 64 heads of 128, 8 KV heads, ffn 28672, 8k tokens)
    with flash attention: BF16 per token 8h + 4q + 4kv + 6f + 8 + 4a bytes; FP8 saves the
    qkv, fc1 and fc2 inputs at one byte and adds the output projection's cast (q)."""
    h, a, kv, f, s, t = 8192, 64, 1024, 28672, 8192, 4
    layer = decoder_layers("l", llama(1, h, a, 8, f, s, 128256), 1, 2, "flash").layers[1]
    bf16 = s * (8 * h + 4 * h + 4 * kv + 6 * f + 8 + 4 * a)
    assert stored_activations(layer, t, "selective", True, "bf16") == bf16 / t
    fp8 = bf16 - s * (2 * h + f) + s * h
    assert stored_activations(layer, t, "selective", True, "fp8") == fp8 / t


def test_moe_block_counts_megatron_moe_layer():
    """A MoE block against the dense block of the same attention: the router's
    probabilities (t·E), the permuted copies into the experts and their outputs before the
    combine (2·k·t·h), the experts' and the shared expert's SwiGLU (3 elements an ffn column)
    in place of the dense SwiGLU; under FP8 the experts' fc1 and fc2 inputs and the shared
    expert's fc2 input are 1-byte casts and the shared expert's fc1 adds a cast of the norm
    output the 16-bit router keeps."""
    from dlsim.workload.shapes import MoEShape

    h, a, kv, f, s, vocab = 256, 4, 2, 512, 64, 128
    e, k, fe, shared = 8, 2, 128, 1
    moe = MoEShape(e, k, fe, shared_experts=shared, dense_layers=1)
    model = decoder_layers("m", llama(2, h, a, kv, f, s, vocab, moe=moe), 1, 2, "flash")
    dense, sparse = model.layers[1], model.layers[2]
    assert dense.moe is None and sparse.moe is not None
    t = s
    expected = 2 * (t * e + 2 * k * t * h + 3 * k * t * fe + 3 * t * shared * fe - 3 * t * f)
    assert sparse.activation_bytes - dense.activation_bytes == expected
    lost = (stored_activations(sparse, 1, "none", False, "bf16")
            - stored_activations(sparse, 1, "none", False, "fp8"))
    # the attention part nets to zero here: qkv's input loses h, proj's cast adds a·d = h
    assert lost == k * t * h + k * t * fe + t * shared * fe - t * h


def test_mla_block_counts_megatron_mla():
    """MLA at 16 bit with a fused kernel, per token: the block norm's input and 1/rms and
    its output (saved once for both down projections), each latent's fused norm-linear
    (2 bytes twice and a 4-byte 1/rms), Q and K of the heads, V, the output and the
    logsumexp; the dense SwiGLU MLP as for GQA. Under FP8 the norm output is two 1-byte
    casts (no saving), the latents' and the MLP's GEMM inputs halve, proj adds its cast."""
    from dlsim.workload.shapes import MLAShape

    h, a, f, s = 256, 4, 512, 64
    mla = MLAShape(kv_lora_rank=64, qk_nope_head_dim=32, qk_rope_head_dim=16, v_head_dim=32,
                   q_lora_rank=96)
    layer = decoder_layers("d", llama(1, h, a, a, f, s, 128, mla=mla), 1, 2, "flash").layers[1]
    qk, v, ql, kvl = 48, 32, 96, 64
    attention = (2 * h + 4 + 2 * h + (4 * ql + 4) + (4 * kvl + 4) + 2 * a * (2 * qk + v)
                 + 2 * a * v + 4 * a)
    mlp = 2 * h + 4 + 2 * h + 6 * f
    assert layer.activation_bytes == s * (attention + mlp)
    fp8 = s * (attention + mlp - ql - kvl + a * v - h - f)
    assert stored_activations(layer, 1, "none", True, "fp8") == fp8
