"""``model:`` as a modern transformer: the decoder fields, ``hf_config`` imports, and the
one-paragraph errors for shapes that cannot be built (each naming its field)."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec, load_scenario
from dlsim.simulate import simulate
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import TRANSFORMER_SHAPES, MLAShape, MoEShape, shape_of

ROOT = Path(__file__).resolve().parents[2]
HF = ROOT / "examples" / "hf"
CONFIGS = sorted(p.stem for p in HF.glob("*.json"))
TINY_MOE = {"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 32,
            "vocab": 100, "kv_heads": 2, "ffn_hidden": 128, "mlp": "swiglu",
            "moe": {"experts": 4, "top_k": 2, "expert_ffn_hidden": 32, "shared_experts": 1,
                    "dense_layers": 1}}


def _scenario(model: dict) -> dict:
    return {"name": "s", "model": model, "cluster": {"preset": "dgx-h100", "nodes": 1},
            "training": {"global_batch": 8, "microbatch": 1},
            "parallelism": {"data": 8}}


def _refused(model: dict, *names: str, tmp_path: Path | None = None) -> str:
    with pytest.raises(ScenarioError) as err:
        load_scenario(_scenario(model))
    text = str(err.value)
    assert "\n" not in text
    for name in names:
        assert name in text, (name, text)
    return text


def test_bundled_configs_cover_every_modern_preset():
    assert CONFIGS == sorted(["llama-3-8b", "llama-3-70b", "llama-3.1-405b", "mixtral-8x7b",
                              "mixtral-8x22b", "qwen3-30b-a3b", "qwen3-235b-a22b",
                              "deepseek-v3", "gpt-oss-120b"])


@pytest.mark.parametrize("name", CONFIGS)
def test_hf_config_gives_the_presets_shape(name):
    """Each bundled config.json is the preset's shape; the config's seq_len is its
    max_position_embeddings, which ``seq_len:`` beside it overrides."""
    config = json.loads((HF / f"{name}.json").read_text())
    spec = ModelSpec.model_validate({"hf_config": f"examples/hf/{name}.json"})
    shape = shape_of(spec)
    assert shape == replace(TRANSFORMER_SHAPES[name], seq_len=config["max_position_embeddings"])
    preset_seq = TRANSFORMER_SHAPES[name].seq_len
    spec = ModelSpec.model_validate({"hf_config": f"examples/hf/{name}.json",
                                     "seq_len": preset_seq})
    assert shape_of(spec) == TRANSFORMER_SHAPES[name]
    assert build_model(spec, 1, 2).name == name


def test_hf_config_is_relative_to_the_scenario_file(tmp_path, monkeypatch):
    folder = tmp_path / "job"
    (folder / "Mixtral-8x7B-v0.1").mkdir(parents=True)
    (folder / "Mixtral-8x7B-v0.1" / "config.json").write_text(
        (HF / "mixtral-8x7b.json").read_text())
    scenario = _scenario({"hf_config": "Mixtral-8x7B-v0.1/config.json", "seq_len": 4096})
    (folder / "s.yaml").write_text(json.dumps(scenario))  # JSON is YAML
    monkeypatch.chdir(tmp_path)  # not the scenario's folder
    loaded = load_scenario(folder / "s.yaml")
    assert shape_of(loaded.model) == replace(TRANSFORMER_SHAPES["mixtral-8x7b"], seq_len=4096)
    assert build_model(loaded.model, 1, 2).name == "Mixtral-8x7B-v0.1"
    # the validated model keeps the path as written and the shape it read
    dumped = loaded.model.model_dump(exclude_none=True)
    assert dumped["hf_config"] == "Mixtral-8x7B-v0.1/config.json"
    assert dumped["moe"]["experts"] == 8 and dumped["seq_len"] == 4096


def test_shape_fields_as_written_equal_the_presets():
    deepseek = {"kind": "transformer", "layers": 61, "hidden": 7168, "heads": 128,
                "seq_len": 4096, "vocab": 129280, "ffn_hidden": 18432, "mlp": "swiglu",
                "moe": {"experts": 256, "top_k": 8, "expert_ffn_hidden": 2048,
                        "shared_experts": 1, "dense_layers": 3},
                "attention": {"kind": "mla", "kv_lora_rank": 512, "q_lora_rank": 1536,
                              "qk_nope_head_dim": 128, "qk_rope_head_dim": 64,
                              "v_head_dim": 128}}
    assert shape_of(ModelSpec.model_validate(deepseek)) == TRANSFORMER_SHAPES["deepseek-v3"]
    qwen = {"kind": "transformer", "layers": 94, "hidden": 4096, "heads": 64, "kv_heads": 4,
            "head_dim": 128, "seq_len": 4096, "vocab": 151936, "ffn_hidden": 12288,
            "mlp": "swiglu", "moe": {"experts": 128, "top_k": 8, "expert_ffn_hidden": 1536}}
    assert shape_of(ModelSpec.model_validate(qwen)) == TRANSFORMER_SHAPES["qwen3-235b-a22b"]


def test_swiglu_defaults_follow_llama():
    """Without ffn_hidden a SwiGLU MLP is Llama's 2/3 of 4h rounded up to 256 (11008 for
    4096: Llama-2 7B); untied unless tied_embeddings; kv_heads = heads."""
    spec = ModelSpec.model_validate({"kind": "transformer", "layers": 32, "hidden": 4096,
                                     "heads": 32, "seq_len": 4096, "vocab": 32000,
                                     "mlp": "swiglu"})
    assert shape_of(spec) == TRANSFORMER_SHAPES["llama-2-7b"]


def test_a_preset_takes_seq_len():
    spec = ModelSpec.model_validate({"preset": "llama-3.1-405b", "seq_len": 131072})
    assert shape_of(spec) == replace(TRANSFORMER_SHAPES["llama-3.1-405b"], seq_len=131072)


def test_a_moe_run_reports_active_parameters():
    summary = simulate(_scenario(TINY_MOE)).summary
    model = build_model(ModelSpec.model_validate(TINY_MOE), 1, 2)
    h, experts, top_k, f = 64, 4, 2, 32
    assert summary["parameters"] == model.parameters
    assert summary["active_parameters"] == model.parameters - (experts - top_k) * 3 * h * f
    dense = simulate(_scenario({"preset": "gpt2-124m"})).summary
    assert "active_parameters" not in dense


def test_moe_and_mla_shapes_reach_the_builder():
    shape = shape_of(ModelSpec.model_validate(TINY_MOE))
    assert shape is not None and shape.moe == MoEShape(4, 2, 32, 1, 1)
    mla = {**TINY_MOE, "kv_heads": None, "attention": {
        "kind": "mla", "kv_lora_rank": 16, "qk_nope_head_dim": 8, "qk_rope_head_dim": 4,
        "v_head_dim": 8}}
    shape = shape_of(ModelSpec.model_validate(mla))
    assert shape is not None and shape.mla == MLAShape(16, 8, 4, 8, None)


# --- bad input: one paragraph naming the field -------------------------------------------

def test_kv_heads_must_divide_heads():
    _refused({**TINY_MOE, "kv_heads": 3}, "model.kv_heads", "must divide heads (4)")


def test_top_k_at_most_experts():
    _refused({**TINY_MOE, "moe": {"experts": 4, "top_k": 5, "expert_ffn_hidden": 32}},
             "model.moe.top_k", "at most experts (4)")


def test_dense_layers_fewer_than_layers():
    _refused({**TINY_MOE, "moe": {"experts": 4, "top_k": 2, "expert_ffn_hidden": 32,
                                  "dense_layers": 2}}, "model.moe", "dense_layers (2)",
             "layers (2)")


def test_mla_needs_its_ranks():
    _refused({**TINY_MOE, "attention": {"kind": "mla", "kv_lora_rank": 16}},
             "model.attention", "qk_nope_head_dim")


def test_decoder_fields_need_swiglu():
    gpt = {"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 32,
           "vocab": 100}
    _refused({**gpt, "kv_heads": 2}, "kv_heads", "mlp: swiglu")
    _refused({**gpt, "tied_embeddings": False}, "tied_embeddings", "mlp: swiglu")


def test_banded_attention_and_biases_need_swiglu_and_grouped_query_attention():
    gpt = {"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 32,
           "vocab": 100}
    _refused({**gpt, "attention": {"sliding_window": 8}}, "attention", "mlp: swiglu")
    _refused({**gpt, "linear_bias": True}, "linear_bias", "mlp: swiglu")
    _refused({**TINY_MOE, "attention": {"full_attention_every": 2}}, "model.attention",
             "give sliding_window")
    _refused({**TINY_MOE, "attention": {"kind": "mla", "kv_lora_rank": 16,
                                        "qk_nope_head_dim": 8, "qk_rope_head_dim": 8,
                                        "v_head_dim": 16, "sinks": True}},
             "model.attention", "sinks", "not mla")


def test_gpt_oss_shape_as_written_and_its_layer_types(tmp_path):
    """The shape fields of gpt-oss-120b give the preset; a config whose layer_types are not
    every k-th block full attention is refused, naming the field."""
    oss = {"kind": "transformer", "layers": 36, "hidden": 2880, "heads": 64, "kv_heads": 8,
           "head_dim": 64, "seq_len": 4096, "vocab": 201088, "ffn_hidden": 2880,
           "mlp": "swiglu", "linear_bias": True,
           "moe": {"experts": 128, "top_k": 4, "expert_ffn_hidden": 2880},
           "attention": {"sliding_window": 128, "full_attention_every": 2, "sinks": True}}
    assert shape_of(ModelSpec.model_validate(oss)) == TRANSFORMER_SHAPES["gpt-oss-120b"]
    config = json.loads((HF / "gpt-oss-120b.json").read_text())
    types = list(config["layer_types"])
    types[3] = "sliding_attention"  # blocks 1, 5, 7, ... full: no period
    (tmp_path / "odd.json").write_text(json.dumps({**config, "layer_types": types}))
    _refused({"hf_config": str(tmp_path / "odd.json")}, "model.hf_config", "layer_types")


def test_a_preset_fixes_its_shape():
    _refused({"preset": "llama-3-8b", "layers": 4}, "only seq_len", "layers")
    with pytest.raises(ScenarioError, match="model.seq_len"):
        simulate(_scenario({"preset": "mlp-mnist", "seq_len": 128}))


def test_hf_config_unknown_architecture(tmp_path):
    (tmp_path / "gpt2.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                     "n_layer": 12}))
    text = _refused({"hf_config": str(tmp_path / "gpt2.json")}, "model.hf_config",
                    "architectures", "GPT2LMHeadModel", "LlamaForCausalLM",
                    "DeepseekV3ForCausalLM")
    assert text.count("field") == 1 + text.count("(field")  # one problem, one field


def test_hf_config_missing_or_broken(tmp_path):
    _refused({"hf_config": "no/such/config.json"}, "model.hf_config", "not found")
    (tmp_path / "bad.json").write_text("{not json")
    _refused({"hf_config": str(tmp_path / "bad.json")}, "model.hf_config", "not a JSON")
    config = json.loads((HF / "llama-3-8b.json").read_text())
    (tmp_path / "gqa.json").write_text(json.dumps({**config, "num_key_value_heads": 5}))
    _refused({"hf_config": str(tmp_path / "gqa.json")}, "model.hf_config",
             "num_key_value_heads (5)")
    moe = json.loads((HF / "mixtral-8x7b.json").read_text())
    (tmp_path / "moe.json").write_text(json.dumps({**moe, "num_experts_per_tok": 9}))
    _refused({"hf_config": str(tmp_path / "moe.json")}, "model.hf_config",
             "num_experts_per_tok (9)")
    (tmp_path / "short.json").write_text(json.dumps({**config, "hidden_size": None}))
    _refused({"hf_config": str(tmp_path / "short.json")}, "model.hf_config", "hidden_size")
    _refused({"hf_config": "examples/hf/llama-3-8b.json", "preset": "llama-3-8b"},
             "'hf_config' gives a transformer")


def test_cli_refuses_an_unknown_architecture_in_one_paragraph(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"architectures": ["FalconForCausalLM"]}))
    scenario = _scenario({"hf_config": "c.json"})
    (tmp_path / "s.yaml").write_text(json.dumps(scenario))
    res = CliRunner().invoke(app, ["run", str(tmp_path / "s.yaml"), "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    text = res.output.strip()
    assert "\n" not in text and "Traceback" not in text
    for name in ("s.yaml", "model.hf_config", "architectures", "FalconForCausalLM"):
        assert name in text, (name, text)


def test_a_moe_preset_takes_the_run_s_routing_and_nothing_else_of_its_shape():
    from dlsim.contract.scenario import ModelSpec
    from dlsim.workload.shapes import TRANSFORMER_SHAPES, shape_of

    spec = ModelSpec.model_validate({"preset": "mixtral-8x7b", "seq_len": 4096,
                                     "moe": {"capacity_factor": 1.0, "router_imbalance": 1.3}})
    shape = shape_of(spec)
    assert shape is not None and shape.moe is not None
    assert (shape.moe.capacity_factor, shape.moe.router_imbalance) == (1.0, 1.3)
    assert shape.moe.experts == TRANSFORMER_SHAPES["mixtral-8x7b"].moe.experts
    with pytest.raises(ValueError, match="moe.experts"):
        ModelSpec.model_validate({"preset": "mixtral-8x7b", "moe": {"experts": 4}})
    with pytest.raises(ScenarioError, match="no experts to route"):
        shape_of(ModelSpec.model_validate({"preset": "llama-3-8b",
                                           "moe": {"capacity_factor": 1.0}}))
    with pytest.raises(ValueError, match="moe.top_k"):
        ModelSpec.model_validate({"kind": "transformer", "layers": 2, "hidden": 64,
                                  "heads": 4, "seq_len": 8, "vocab": 10, "mlp": "swiglu",
                                  "moe": {"experts": 4}})
