"""The modern decoders (dlsim.workload.decoder) against published sizes and closed forms.

Published totals: Llama 3 8B 8.03B, 70B 70.6B, Llama 3.1 405B 405.9B (Llama 3 paper Table 3 /
model cards; exact counts from the Hugging Face model pages' safetensors), Mixtral 8x7B
46.7B with 12.9B active (Jiang et al. 2024 §2), Mixtral 8x22B 141B with 39B active (Mistral
AI's release), Qwen3-30B-A3B 30.5B with 3.3B active and Qwen3-235B-A22B 235B with 22B active
(Qwen3 technical report Table 2 / model cards), DeepSeek-V3 671B with 37B active (technical
report, abstract: the main model; its 14B multi-token-prediction module is not counted, as
the 671B does not count it). Qwen and DeepSeek print their counts cut to the digit shown
(3.35B as 3.3B, 37.55B as 37B), Meta and Mistral round them, so a count passes when it lies
within half a unit below and one unit above the printed figure.

The closed forms are written out here from the shape, independently of the builder: GEMMs
2mkn, attention 4·b·s²·a·d_head (MLA 2·b·s²·a·(d_qk + d_v)), SwiGLU 3·2·b·s·h·f.
"""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.workload.decoder import decoder_layers
from dlsim.workload.model import Layer, Model
from dlsim.workload.moe import ROUTED_KERNELS
from dlsim.workload.presets import transformer_model
from dlsim.workload.shapes import TRANSFORMER_SHAPES, MoEShape, llama

B, DT = 2, 2  # micro-batch, bytes per element

# preset -> (published total, its unit, published active or None, its unit)
PUBLISHED = {
    "llama-3-8b": (8.03e9, 0.01e9, None, None),
    "llama-3-70b": (70.6e9, 0.1e9, None, None),
    "llama-3.1-405b": (405.9e9, 0.1e9, None, None),
    "mixtral-8x7b": (46.7e9, 0.1e9, 12.9e9, 0.1e9),
    "mixtral-8x22b": (141e9, 1e9, 39e9, 1e9),
    "qwen3-30b-a3b": (30.5e9, 0.1e9, 3.3e9, 0.1e9),
    "qwen3-235b-a22b": (235e9, 1e9, 22e9, 1e9),
    "deepseek-v3": (671e9, 1e9, 37e9, 1e9),
}
# exact counts where the checkpoint's is published (Hugging Face safetensors metadata)
EXACT = {"llama-3-8b": 8_030_261_248, "llama-3-70b": 70_553_706_496,
         "llama-3.1-405b": 405_853_388_800, "mixtral-8x7b": 46_702_792_704}


def _model(name: str, b: int = B) -> Model:
    return transformer_model(name, TRANSFORMER_SHAPES[name], b, DT)


def _as_printed(count: int, published: float, unit: float) -> bool:
    return published - unit / 2 <= count < published + unit


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameters_equal_the_published_totals(name):
    total, unit, active, active_unit = PUBLISHED[name]
    model = _model(name, 1)
    assert _as_printed(model.parameters, total, unit), model.parameters
    if name in EXACT:
        assert model.parameters == EXACT[name]
    if active is None:
        assert model.active_parameters == model.parameters
    else:
        assert _as_printed(model.active_parameters, active, active_unit), \
            model.active_parameters


def test_deepseek_v3_parameters_by_hand():
    """DeepSeek-V3 summed from its config: MLA (q_a, its norm, q_b, kv_a, its norm, kv_b,
    o), 3 dense SwiGLU blocks of 18432, 58 MoE blocks of a router, 256 routed and 1 shared
    expert of 2048, two norms a block, untied embedding and head, the final norm."""
    h, a, v = 7168, 128, 129280
    mla = (h * 1536 + 1536 + 1536 * a * 192 + h * (512 + 64) + 512 + 512 * a * (128 + 128)
           + a * 128 * h)
    dense, expert = 3 * h * 18432, 3 * h * 2048
    moe = h * 256 + 257 * expert
    total = 61 * (mla + 2 * h) + 3 * dense + 58 * moe + 2 * v * h + h
    assert _model("deepseek-v3", 1).parameters == total
    assert _model("deepseek-v3", 1).active_parameters == total - 58 * (256 - 8) * expert


def test_gpt_oss_120b_parameters_equal_the_model_card():
    """gpt-oss-120b summed from its config (module docstring of dlsim.workload.shapes): per
    block q/k/v/o of 64 query and 8 KV heads of 64 with their biases, a sink per head, a
    biased router over 128 experts, 128 SwiGLU experts of 2880 with gate/up and down biases,
    two norms; untied embedding and head of 201,088, the final norm. The card (arXiv
    2508.10925, Table 1) prints 116.83B total and 5.13B active, the active count with the
    unembedding but not the embedding (dlsim's active_parameters counts the embedding
    whole, as Mixtral's 12.9B does)."""
    h, a, kv, d, e, f, v, layers = 2880, 64, 8, 64, 128, 2880, 201088, 36
    attention = 2 * h * a * d + 2 * h * kv * d + (a * d + 2 * kv * d + h) + a
    expert = 3 * h * f + 2 * f + h
    router = h * e + e
    total = layers * (attention + router + e * expert + 2 * h) + 2 * v * h + h
    active = total - layers * (e - 4) * expert
    model = _model("gpt-oss-120b", 1)
    assert model.parameters == total
    assert model.active_parameters == active
    assert round(total / 1e9, 2) == 116.83
    assert round((active - v * h) / 1e9, 2) == 5.13
    # the card's breakdown: MLP 114.71B, attention 0.96B, embedding and unembedding 1.16B
    assert round(layers * (router + e * expert) / 1e9, 2) == 114.71
    assert round(layers * attention / 1e9, 2) == 0.96
    assert round(2 * v * h / 1e9, 2) == 1.16


def test_sliding_window_attention_is_priced_within_its_band():
    """gpt-oss's even blocks attend within 128 keys: a causal band of w keys over s tokens
    has s·w − w²/2 query-key pairs (s²/2 without it), so fused attention's forward is
    2·b·a·(d_qk + d_v)·(s·w − w²/2) there and 2·b·a·(d_qk + d_v)·s²/2 in the odd blocks;
    eager attention masks the whole square and does the same work in both."""
    shape = TRANSFORMER_SHAPES["gpt-oss-120b"]
    s, w, a, d = shape.seq_len, 128, 64, 64
    fused = transformer_model("g", shape, B, DT, "flash")
    banded, full = _block(fused, 0), _block(fused, 1)
    assert _flops(banded, "attention") == 2 * B * a * 2 * d * (s * w - w * w / 2)
    assert _flops(full, "attention") == 2 * B * a * 2 * d * s * s / 2
    assert [shape.windowed(i) for i in range(4)] == [True, False, True, False]
    assert banded.params == full.params
    kernel = {k.name: k for k in banded.forward}["attention"]
    assert kernel.fused is not None and kernel.fused.seq_len == w
    eager = _model("gpt-oss-120b")
    assert _flops(_block(eager, 0), "attention") == _flops(_block(eager, 1), "attention") \
        == 4 * B * s * s * a * d
    # a window as long as the sequence is no window at all
    wide = replace(shape, sliding_window=s)
    assert _flops(_block(transformer_model("w", wide, B, DT, "flash"), 0), "attention") \
        == _flops(full, "attention")


def _block(model: Model, i: int = 0) -> Layer:
    return [layer for layer in model.layers if layer.role == "block"][i]


def _flops(layer: Layer, *names: str) -> float:
    return sum(k.flops for k in layer.forward if k.name in names)


def test_gqa_key_value_projections_shrink_by_heads_over_kv_heads():
    """Llama 3 8B (32 heads, 8 KV heads of 128) against the same shape with 32 KV heads:
    the K and V projections, their stored outputs and the bytes attention reads shrink by
    4x; nothing else changes."""
    gqa = TRANSFORMER_SHAPES["llama-3-8b"]
    mha = replace(gqa, kv_heads=gqa.heads)
    h, s, d, t = gqa.hidden, gqa.seq_len, 128, B * gqa.seq_len
    small, full = _block(decoder_layers("g", gqa, B, DT)), _block(decoder_layers("m", mha, B, DT))
    kv, kv_mha = 8 * d, 32 * d
    assert _flops(small, "qkv") == 2 * t * h * (h + 2 * kv)
    assert _flops(full, "qkv") - _flops(small, "qkv") == 2 * t * h * 2 * (kv_mha - kv)
    assert full.params - small.params == 2 * h * (kv_mha - kv)
    assert {m.name: m.d_out for m in small.matrices}["k_proj"] == kv
    assert full.activation_bytes - small.activation_bytes == 4 * t * (kv_mha - kv) * DT / 2
    attn = {k.name: k for k in small.forward}["attention"]
    attn_mha = {k.name: k for k in full.forward}["attention"]
    assert attn.flops == attn_mha.flops == 4 * B * s * s * 32 * d
    assert attn_mha.bytes - attn.bytes == DT * 2 * t * (kv_mha - kv)


def test_swiglu_forward_flops_per_layer():
    shape = TRANSFORMER_SHAPES["llama-3-70b"]
    t, h, f = B * shape.seq_len, shape.hidden, shape.ffn_hidden
    assert _flops(_block(_model("llama-3-70b")), "mlp_up", "mlp_down") == 3 * 2 * t * h * f


def test_qwen3_head_dim_differs_from_hidden_over_heads():
    """Qwen3-235B-A22B: 64 heads of 128 (8192 wide) on a hidden size of 4096."""
    shape = TRANSFORMER_SHAPES["qwen3-235b-a22b"]
    block, t, s = _block(_model("qwen3-235b-a22b")), B * shape.seq_len, shape.seq_len
    assert {m.name: (m.d_in, m.d_out) for m in block.matrices}["q_proj"] == (4096, 64 * 128)
    assert {m.name: (m.d_in, m.d_out) for m in block.matrices}["o_proj"] == (64 * 128, 4096)
    assert _flops(block, "attention") == 4 * B * s * s * 64 * 128
    assert _flops(block, "proj") == 2 * t * 64 * 128 * 4096


@pytest.mark.parametrize("name", ["mixtral-8x7b", "qwen3-30b-a3b", "deepseek-v3"])
def test_moe_flops_per_token(name):
    """Forward FLOPs of a MoE MLP per token: the router 2·h·E, top_k SwiGLU experts and the
    shared ones, 3·2·h·f_e each."""
    shape = TRANSFORMER_SHAPES[name]
    moe = shape.moe
    assert moe is not None
    h, t = shape.hidden, B * shape.seq_len
    block = _block(_model(name), moe.dense_layers)
    names = ("router", *ROUTED_KERNELS, "shared_up", "shared_act", "shared_down")
    gemms = sum(k.flops for k in block.forward if k.name in names and k.kind == "gemm")
    per_token = 2 * h * moe.experts + (moe.top_k + moe.shared_experts) * 3 * 2 * h * \
        moe.expert_ffn_hidden
    assert gemms / t == per_token
    assert block.moe is not None
    assert (block.moe.experts, block.moe.top_k, block.moe.expert_params, block.moe.tokens,
            block.moe.token_bytes) == (moe.experts, moe.top_k, 3 * h * moe.expert_ffn_hidden,
                                       t, h * DT)
    assert block.moe.expert_kernels == ROUTED_KERNELS
    assert {"expert_up", "expert_act", "expert_down"} <= {k.name for k in block.forward}


def test_deepseek_v3_dense_blocks_come_first_and_mla_attention():
    model = _model("deepseek-v3")
    blocks = [layer for layer in model.layers if layer.role == "block"]
    assert [b.moe is None for b in blocks[:4]] == [True, True, True, False]
    assert all(b.moe is not None for b in blocks[3:])
    s, a = 4096, 128
    assert _flops(blocks[0], "attention") == 2 * B * s * s * a * (128 + 64 + 128)
    t, h = B * s, 7168
    assert _flops(blocks[0], "mla_down") == 2 * t * h * (1536 + 512 + 64)
    assert _flops(blocks[0], "qkv") == 2 * t * (1536 * a * 192 + 512 * a * 256)
    assert _flops(blocks[0], "proj") == 2 * t * a * 128 * h


def test_llama2_blocks_count_what_megatron_saves():
    """The Llama-2 block with eager attention as Megatron-Core with Transformer Engine saves
    it at 16 bit (``dlsim.workload.decoder``): 12sbh of norm inputs, GEMM inputs, Q and the
    AV output, 4sb·kv of K and V, 6sb·ffn of the fused SwiGLU's input and output, the
    softmax output 2as²b and two fp32 1/rms per token."""
    shape = TRANSFORMER_SHAPES["llama-2-70b"]
    h, a, f, s = shape.hidden, shape.heads, shape.ffn_hidden, shape.seq_len
    t, kv = B * s, 8 * 128
    block = _block(_model("llama-2-70b"))
    assert block.activation_bytes == (12 * t * h + 4 * t * kv + 6 * t * f
                                      + 2 * a * s * s * B) * DT / 2 + 8 * t
    assert block.params == 2 * h * h + 2 * h * kv + 3 * h * f + 2 * h
    assert [k.name for k in block.forward] == [
        "rmsnorm1", "qkv", "rope", "attention", "softmax", "proj", "residual1+rmsnorm2",
        "mlp_up", "swiglu", "mlp_down", "residual2"]


def test_tied_embeddings_drop_the_head_matrix():
    shape = TRANSFORMER_SHAPES["llama-3-8b"]
    untied = decoder_layers("u", shape, 1, DT).parameters
    tied = decoder_layers("t", replace(shape, tied_embeddings=True), 1, DT).parameters
    assert untied - tied == shape.vocab * shape.hidden


@given(st.sampled_from([1, 2, 4, 8, 16, 32]), st.sampled_from([32, 64, 128]))
def test_gqa_parameters_fall_as_heads_per_kv_head_grow(kv_heads, d):
    """Fewer key-value heads (more query heads sharing each), fewer parameters: two layers
    of K and V projections, h x kv_heads·d each."""
    heads, layers = 32, 2
    h = heads * d

    def params(kv: int) -> int:
        return decoder_layers("x", llama(layers, h, heads, kv, 4 * h, 64, 1000), 1,
                              DT).parameters
    for k in (k for k in (1, 2, 4, 8, 16, 32) if k < kv_heads):
        assert params(kv_heads) - params(k) == layers * 2 * h * (kv_heads - k) * d > 0


@given(st.integers(1, 4), st.sampled_from([64, 128]), st.sampled_from([96, 256]),
       st.integers(1, 3))
def test_single_expert_moe_is_a_dense_swiglu_plus_its_router(layers, h, f, b):
    """top_k = experts = 1 and no shared expert: the dense SwiGLU's GEMM FLOPs plus the
    router's 2·t·h·1, and the dense model's parameters plus the router's h."""
    dense = llama(layers, h, 4, 2, f, 32, 500)
    moe = replace(dense, moe=MoEShape(experts=1, top_k=1, expert_ffn_hidden=f))

    def gemm_flops(model: Model) -> float:
        return sum(k.flops for layer in model.layers for k in layer.forward
                   if k.kind in ("gemm", "attention"))
    m_dense, m_moe = decoder_layers("d", dense, b, DT), decoder_layers("m", moe, b, DT)
    assert gemm_flops(m_moe) == gemm_flops(m_dense) + layers * 2 * b * 32 * h * 1
    assert m_moe.parameters == m_dense.parameters + layers * h
    assert m_moe.active_parameters == m_moe.parameters


@given(st.integers(1, 64), st.integers(1, 64), st.integers(0, 2))
def test_active_parameters_count_top_k_of_the_experts(experts, top_k, shared):
    top_k = min(top_k, experts)
    shape = llama(3, 64, 4, 4, 128, 16, 100,
                  moe=MoEShape(experts, top_k, 32, shared_experts=shared, dense_layers=1))
    model = decoder_layers("x", shape, 1, DT)
    assert model.parameters - model.active_parameters == 2 * (experts - top_k) * 3 * 64 * 32


def test_dlsim_list_models_prints_parameters_and_active_parameters():
    res = CliRunner().invoke(app, ["list", "models", "--json"])
    assert res.exit_code == 0, res.output
    rows = {r["name"]: r for r in json.loads(res.output)}
    for name in PUBLISHED:
        model = _model(name, 1)
        assert rows[name]["parameters"] == model.parameters
        assert rows[name]["active_parameters"] == model.active_parameters
    assert rows["gpt2-124m"]["active_parameters"] == rows["gpt2-124m"]["parameters"]


# Qwen/Qwen1.5-MoE-A2.7B's config.json (its shape keys; they are also the defaults of
# transformers' Qwen2MoeConfig): 14.3B parameters, 2.7B active (the model card)
QWEN2_MOE = {"architectures": ["Qwen2MoeForCausalLM"], "model_type": "qwen2_moe",
             "num_hidden_layers": 24, "hidden_size": 2048, "num_attention_heads": 16,
             "num_key_value_heads": 16, "intermediate_size": 5632, "vocab_size": 151936,
             "max_position_embeddings": 8192, "tie_word_embeddings": False,
             "moe_intermediate_size": 1408, "shared_expert_intermediate_size": 5632,
             "num_experts": 60, "num_experts_per_tok": 4, "decoder_sparse_step": 1,
             "mlp_only_layers": []}


def test_a_qwen2_moe_config_is_its_published_size(tmp_path):
    """The shared expert of 5,632 is four experts of 1,408; per block q/k/v/o of 2048, a
    router over 60 experts, 60 + 4 SwiGLU experts, two norms; untied embedding and head,
    the final norm. Its q/k/v biases and shared-expert gate (7 · 2048 weights a block) are
    left out."""
    import json

    from dlsim.contract.scenario import ModelSpec
    from dlsim.workload.presets import build_model

    path = tmp_path / "config.json"
    path.write_text(json.dumps(QWEN2_MOE))
    model = build_model(ModelSpec.model_validate({"hf_config": str(path)}), 1, DT)
    h, e, f, v = 2048, 60, 1408, 151936
    block = 4 * h * h + h * e + (e + 4) * 3 * h * f + 2 * h
    assert model.parameters == 24 * block + 2 * v * h + h
    assert model.active_parameters == model.parameters - 24 * (e - 4) * 3 * h * f
    assert _as_printed(model.parameters, 14.3e9, 0.1e9)
    assert _as_printed(model.active_parameters, 2.7e9, 0.1e9)


def test_a_qwen2_moe_shared_expert_must_be_whole_experts(tmp_path):
    import json

    from dlsim.contract.errors import ScenarioError
    from dlsim.contract.scenario import load_scenario

    path = tmp_path / "config.json"
    path.write_text(json.dumps({**QWEN2_MOE, "shared_expert_intermediate_size": 5000}))
    scenario = {"name": "q", "model": {"hf_config": str(path)},
                "cluster": {"preset": "dgx-h100", "nodes": 1},
                "training": {"global_batch": 8, "microbatch": 1}, "parallelism": {"data": 8}}
    with pytest.raises(ScenarioError, match="shared_expert_intermediate_size"):
        load_scenario(scenario)
