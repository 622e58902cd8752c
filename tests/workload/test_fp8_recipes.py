"""FP8 scaling recipes as Transformer Engine runs them (``dlsim.workload.precision``): what
each cast moves, which devices run which recipe, TE's default per device, and the step a
recipe changes, each against its closed form."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

import dlsim
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hw
from dlsim.workload.model import gemm
from dlsim.workload.precision import (
    cast_kernel,
    check_fp8_recipe,
    default_fp8_recipe,
    runs_low_precision,
)
from dlsim.workload.presets import build_model

H100, B200 = hw.device("h100-sxm5-80gb"), hw.device("b200-sxm-180gb")


@pytest.mark.parametrize(("recipe", "per_element"), [
    ("delayed", 2 + 1 + 1),            # read bf16, write the copy and its transpose
    ("current", 2 + 2 + 1 + 1),        # and an amax pass reading bf16 first
    ("blockwise", 2 + 1 + 1 + 2 * 4 / 128),  # an fp32 scale per 128 with each copy
    ("mxfp8", 2 + 1 + 1 + 2 * 1 / 32),       # an E8M0 scale per 32 with each copy
])
def test_cast_bytes_per_recipe(recipe, per_element):
    """Over a GEMM (m x k)(k x n) and its backward the casts move per_element bytes for
    each of its mk + kn + mn elements; the forward kernel carries a third."""
    m, k, n = 4096, 4096, 14336
    fwd = gemm(m, k, n, 2, "mlp_up")
    cast = cast_kernel(fwd, "fp8", recipe)
    assert cast is not None
    assert cast.bytes == pytest.approx(per_element * (m * k + k * n + m * n) / 3, rel=1e-12)


def test_te_default_recipe_by_device():
    """TE's get_default_fp8_recipe: MXFP8 on compute capability 10.x, current scaling from
    12.0, delayed scaling before."""
    assert default_fp8_recipe(H100.compute_capability) == "delayed"
    assert default_fp8_recipe(B200.compute_capability) == "mxfp8"
    assert default_fp8_recipe(hw.device("gb300").compute_capability) == "mxfp8"
    assert default_fp8_recipe(12.0) == "current"
    assert default_fp8_recipe(None) == "delayed"


def test_recipes_refused_where_te_does_not_run_them():
    for recipe in ("delayed", "current", "blockwise"):
        check_fp8_recipe(recipe, H100, "fp8_recipe")
    with pytest.raises(ScenarioError, match="compute capability 10 to 12.*9, which runs "
                                            "delayed, current, blockwise") as err:
        check_fp8_recipe("mxfp8", H100, "fp8_recipe")
    assert err.value.field == "fp8_recipe"
    with pytest.raises(ScenarioError, match="8, which runs no FP8 recipe"):
        check_fp8_recipe("delayed", hw.device("a100-sxm4-80gb"), "fp8_recipe")
    with pytest.raises(ScenarioError, match="NVIDIA GPU"):
        check_fp8_recipe("blockwise", hw.device("mi300x"), "fp8_recipe")


def _scenario(recipe: str | None, precision: str = "fp8") -> dict:
    return {"name": "r", "model": {"preset": "llama-3-8b", "seq_len": 2048},
            "cluster": {"preset": "dgx-h100", "nodes": 1}, "precision": precision,
            "training": {"global_batch": 1, "microbatch": 1,
                         **({"fp8_recipe": recipe} if recipe else {})},
            "parallelism": {"data": 1}}


def test_current_scaling_costs_one_more_read_of_every_cast_input():
    """One H100, one micro-batch: the step under current scaling less the step under
    delayed scaling is one more sweep of each FP8 GEMM's 16-bit operands, a third of each
    kernel's bytes, at the profile's memory bandwidth (kernel times add on one stream)."""
    delayed = dlsim.simulate(_scenario(None))
    current = dlsim.simulate(_scenario("current"))
    assert (delayed.fp8_recipe, current.fp8_recipe) == ("delayed", "current")
    model = build_model(ModelSpec(preset="llama-3-8b", seq_len=2048), 1, 2)
    extra = sum(k.bytes / 3 for layer in model.layers
                for k in (*layer.forward, *layer.backward) if runs_low_precision(k, "fp8"))
    bandwidth = H100.memory_bandwidth_Bps * H100.efficiency.memory
    assert current.step_time_s - delayed.step_time_s == pytest.approx(extra / bandwidth,
                                                                      rel=1e-9)


@pytest.mark.parametrize(("recipe", "precision", "words"), [
    ("mxfp8", "fp8", ["training.fp8_recipe", "mxfp8", "9"]),
    ("delayed", "bf16", ["training.fp8_recipe", "precision fp8"]),
    ("tensorwise", "fp8", ["training.fp8_recipe", "delayed", "mxfp8"]),
])
def test_cli_refuses_a_recipe_with_the_field(tmp_path, recipe, precision, words):
    import yaml

    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(_scenario(recipe, precision)))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path)])
    assert res.exit_code == 2, res.output
    assert "Traceback" not in res.output
    for word in words:
        assert word in res.output


def test_the_report_names_the_recipe(tmp_path):
    import yaml

    path = tmp_path / "fp8.yaml"
    path.write_text(yaml.safe_dump(_scenario("current")))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    page = next(tmp_path.rglob("index.html")).read_text()
    assert "fp8 (current scaling)" in page
