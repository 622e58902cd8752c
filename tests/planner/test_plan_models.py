"""``dlsim plan --model``: a preset or a Hugging Face config.json, the same model either way."""

from __future__ import annotations

import json
from pathlib import Path

from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.planner import PlanRequest, run_plan
from dlsim.planner.models import model_name, model_shape
from dlsim.workload.shapes import TRANSFORMER_SHAPES

BUNDLED = Path(__file__).parents[2] / "examples" / "hf" / "llama-3-8b.json"


def cli(tmp_path: Path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path)], catch_exceptions=False)
    return res.exit_code, res.output


def test_a_config_plans_exactly_as_its_preset():
    """Llama-3 8B's released config is the preset's shape, so every plan's estimate is the
    same to the last bit, and the engine confirms the config's best plan from the file."""
    assert model_shape(str(BUNDLED)) == TRANSFORMER_SHAPES["llama-3-8b"]
    assert model_name(str(BUNDLED)) == "llama-3-8b"
    kwargs = {"cluster": "dgx-h100", "gpus": (8,), "global_batch": 16, "top": 5, "confirm": 1}
    from_file = run_plan(PlanRequest(str(BUNDLED), **kwargs))
    preset = run_plan(PlanRequest("llama-3-8b", **kwargs))
    assert from_file.space == preset.space
    assert [p["step_time_s"] for p in from_file.plans] == [p["step_time_s"] for p in preset.plans]
    best = from_file.plans[0]
    assert best["step_time_source"] == "simulated"
    assert best["scenario"]["model"] == {"hf_config": str(BUNDLED.resolve())}


def test_plan_cli_takes_a_config_path(tmp_path):
    config = tmp_path / "tiny" / "config.json"
    config.parent.mkdir()
    config.write_text(json.dumps({
        "architectures": ["LlamaForCausalLM"], "num_hidden_layers": 4, "hidden_size": 512,
        "num_attention_heads": 8, "num_key_value_heads": 4, "intermediate_size": 1536,
        "max_position_embeddings": 512, "vocab_size": 32000}))
    code, text = cli(tmp_path, "plan", "--model", str(config), "--cluster", "dgx-a100",
                     "--gpus", "8", "--global-batch", "8", "--confirm", "1", "--json")
    assert code == 0, text
    data = json.loads(text)
    assert data["plans"][0]["scenario"]["name"].startswith("plan-tiny-8gpu")
    assert (tmp_path / "plan-tiny-dgx-a100" / "index.html").is_file()


def test_plan_cli_refuses_an_unknown_architecture_or_a_missing_file(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"architectures": ["FalconForCausalLM"], "hidden_size": 64}))
    for model, why in ((str(bad), "FalconForCausalLM"),
                       (str(tmp_path / "missing.json"), "not found")):
        code, text = cli(tmp_path, "plan", "--model", model, "--cluster", "dgx-a100",
                         "--gpus", "8", "--global-batch", "8")
        flat = " ".join(text.split())
        assert code == 2 and "--model" in flat and why in flat, text
        assert "Traceback" not in text
