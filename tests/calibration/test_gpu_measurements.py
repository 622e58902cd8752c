"""The GPU microbenchmarks and training steps (run on the lent H200; here on the CPU, tiny):
FLOPs against their closed forms, the torch models against dlsim's parameter counts, and a
step measured end to end."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

torch = pytest.importorskip("torch")

from dlsim.calibration import bench, gpusteps  # noqa: E402
from dlsim.contract.scenario import ModelSpec  # noqa: E402
from dlsim.workload.presets import build_model  # noqa: E402

TINY_LLAMA = {"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
              "ffn_hidden": 128, "vocab": 100, "seq_len": 32, "mlp": "swiglu",
              "tied_embeddings": False}


def test_gpu_cases_are_the_networks_dlsim_models():
    """Each torch model has the parameter count dlsim gives its model block (built on the
    meta device: no storage). Llama 3.2 1B's 1,235,814,400 is its released total."""
    counts = {}
    for case in gpusteps.CASES:
        with torch.device("meta"):
            model = case.build()
        counts[case.name] = sum(p.numel() for p in model.parameters())
        assert counts[case.name] == build_model(ModelSpec(**case.model), case.batch,
                                                2).parameters, case.name
    assert counts["llama 16x2048 gqa8 s4096 (Llama 3.2 1B)"] == 1_235_814_400


@pytest.mark.parametrize("sdpa", [None, "flash"])
def test_a_training_step_is_measured_with_its_kernel_table(sdpa):
    case = gpusteps.GpuCase("tiny llama", TINY_LLAMA, 2)
    row = gpusteps.measure(case, repeats=2, device="cpu", sdpa=sdpa)
    assert row["step_s"] > 0 and row["params"] == build_model(
        ModelSpec(**TINY_LLAMA), 2, 2).parameters
    assert row["tokens_per_s"] == pytest.approx(2 * 32 / row["step_s"])
    assert row["kernels"] and all(k["device_us"] > 0 for k in row["kernels"])
    assert any("mm" in k["kernel"] for k in row["kernels"])


def test_fused_attention_counts_flashattentions_flops():
    """FlashAttention-2's convention, computed here: forward 4·s²·d·heads·batch, halved
    causal; backward 2.5x; batch x sequence = 16k tokens, hidden 2048."""
    d, s = 64, 128
    rows = list(bench.fused_attention([(d, s, True), (d, s, False)], "cpu", 1))
    b, heads = 16384 // s, 2048 // d
    full = 4.0 * s * s * d * heads * b
    flops = {(r.op, "causal" in r.shape): r.flops for r in rows}
    assert flops[("flash_fwd", True)] == full / 2 and flops[("flash_fwd", False)] == full
    assert flops[("flash_bwd", True)] == 2.5 * full / 2
    assert all(r.kind == "fused_attention" and r.dtype == "bf16" for r in rows)


def test_fp8_gemm_points_count_the_linear_layers_products():
    rows = bench._matmul_fp8(64, 128, 32, "cpu", 1)
    assert [r.op for r in rows] == ["matmul_fp8", "matmul_fp8_bwd"]
    assert rows[0].flops == 2 * 64 * 128 * 32 and rows[1].flops == 2 * rows[0].flops
    assert rows[0].bytes == 64 * 128 + 128 * 32 + 2 * 64 * 32   # fp8 in, bf16 out
    assert not bench.fp8_supported("cpu")


def test_the_gpu_grid_is_flashattentions_benchmark_and_the_cpu_grids_have_none():
    from dlsim.calibration.calibrate import FULL, GPU, QUICK

    assert not FULL.fused_attention and not QUICK.fused_attention
    assert {d for d, _, _ in GPU.fused_attention} == {64, 128, 256}
    assert {s for _, s, _ in GPU.fused_attention} == {512, 1024, 2048, 4096, 8192, 16384}


# --- fused attention: the fit and its use ---------------------------------------------------

H200_CALIBRATION = "calibration/cuda-nvidia-h200-16c-1t-20ac9250.json"


def _synthetic_attention(top, half, causal_half, ratio, peak=989e12, launch=2e-6):
    """Times the cost model's fused-attention form gives on FA2's benchmark grid."""
    import numpy as np

    rows = [(d, s, c, b) for d in top for s in (512, 1024, 4096, 16384)
            for c in (False, True) for b in (False, True)]
    d, s, c, b = (np.array(x) for x in zip(*rows))
    flops = 4.0 * s * s * d * (2048 // d) * (16384 // s) / np.where(c, 2, 1) * np.where(b, 2.5, 1)
    eff = np.array([top[x] for x in d]) * s / (s + np.where(c, causal_half, half)) * np.where(
        b, ratio, 1.0)
    return d, s, c, b, flops, launch + flops / (peak * eff)


@settings(max_examples=20, deadline=None)
@given(top=st.fixed_dictionaries({64: st.floats(0.2, 0.9), 128: st.floats(0.2, 0.9),
                                  256: st.floats(0.2, 0.9)}),
       half=st.floats(50, 2000), causal_half=st.floats(50, 4000), ratio=st.floats(0.4, 1.5))
def test_attention_fit_recovers_the_constants_that_made_the_times(top, half, causal_half,
                                                                  ratio):
    from dlsim.calibration.fit import fit_fused_attention

    *shape, flops, times = _synthetic_attention(top, half, causal_half, ratio)
    fit = fit_fused_attention(*shape, flops, times, 989e12, 2e-6)
    assert fit.seq_half == pytest.approx(half, rel=1e-5)
    assert fit.causal_seq_half == pytest.approx(causal_half, rel=1e-5)
    assert fit.backward_ratio == pytest.approx(ratio, rel=1e-5)
    assert all(fit.forward_max[d] == pytest.approx(v, rel=1e-5) for d, v in top.items())
    assert abs(fit.residuals_pct).max() < 1e-3


def test_the_h200_calibration_overlays_its_fused_attention_fits():
    """The committed H200 file carries FA2 and cuDNN fits; overlaying it puts them in the
    profile, and the Hopper profiles' cudnn family is that measurement (rounded)."""
    from dlsim.calibration import store
    from dlsim.hardware import profiles as hardware

    cal = store.load(H200_CALIBRATION)
    assert set(cal.attention_fits) == {"fa2", "cudnn"}
    assert all(f.points == 72 for f in cal.attention_fits.values())
    device = store.overlay(hardware.device("h200-sxm-141gb"), cal)
    measured = cal.attention_fits["cudnn"]
    assert device.attention_kernels.fits["cudnn"].forward_max == measured.forward_max
    for name in ("h100-sxm5-80gb", "h200-sxm-141gb", "h800-sxm5-80gb"):
        profile = hardware.device(name).attention_kernels
        assert profile.sdpa == "cudnn"
        fit = profile.fits["cudnn"]
        assert fit.forward_max == measured.forward_max
        assert (fit.seq_half, fit.causal_seq_half, fit.backward_ratio) == (
            measured.seq_half, measured.causal_seq_half, measured.backward_ratio)


def test_refit_reproduces_a_calibration_from_its_measurements(tmp_path):
    """`dlsim calibrate --refit` fits the stored measurements again: on the committed files
    (a CPU and the H200) the curves come back as stored, to the solver's precision."""
    import shutil

    from typer.testing import CliRunner

    from dlsim.calibration import store
    from dlsim.cli import app

    for name in ("cpu-amd-epyc-2c-1t-32dd4ebe.json", "cuda-nvidia-h200-16c-1t-20ac9250.json"):
        before = store.load(f"calibration/{name}")
        copy = tmp_path / name
        shutil.copy(store.resolve(f"calibration/{name}"), copy)
        res = CliRunner().invoke(app, ["calibrate", "--refit", str(copy), "--json"])
        assert res.exit_code == 0, res.output
        after = store.load(copy)
        assert after.measurements == before.measurements and after.date == before.date
        assert after.kernel_launch_us == pytest.approx(before.kernel_launch_us, rel=1e-6)
        for key, curve in before.curves.items():
            assert after.curves[key].max == pytest.approx(curve.max, rel=1e-6), key
            assert after.curves[key].half_gflop == pytest.approx(curve.half_gflop, rel=1e-5,
                                                                 abs=1e-9)


def test_a_measured_optimizer_rate_prices_the_optimizer_step():
    """An AdamW step point is 28 bytes a parameter; a calibration's optimizer efficiency
    replaces the memory efficiency in the optimizer's closed form, params x 28 / (B x e)."""
    from dlsim.calibration import store
    from dlsim.hardware import profiles as hardware
    from dlsim.workload.costmodel import optimizer_time_s

    (point,) = bench.optimizer_steps([4096], "cpu", 1)
    assert point.kind == "optimizer" and point.bytes == 28 * 4096
    cal = store.load(H200_CALIBRATION)
    assert cal.optimizer_efficiency is None  # not measured on 2026-12-04: memory's rate
    measured = cal.model_copy(update={"optimizer_efficiency": 0.8})
    device = store.overlay(hardware.device("h200-sxm-141gb"), measured)
    bandwidth = cal.memory_bandwidth_GBps * 1e9
    assert optimizer_time_s(1e9, "adam", device) == pytest.approx(
        1e9 * 28 / (bandwidth * 0.8) + cal.kernel_launch_us * 1e-6, rel=1e-12)
    plain = store.overlay(hardware.device("h200-sxm-141gb"), cal)
    assert optimizer_time_s(1e9, "adam", plain) == pytest.approx(
        1e9 * 28 / (bandwidth * cal.memory_efficiency) + cal.kernel_launch_us * 1e-6,
        rel=1e-12)


def test_an_sdpa_backend_torch_cannot_run_is_skipped_not_a_crash():
    """A GPU whose torch lacks a fused backend (cuDNN attention before sm90, FlashAttention
    before sm80) skips that backend's grid; here the CPU runs flash and has no cuDNN."""
    assert bench.sdpa_backend_runs("flash", "cpu")
    assert not bench.sdpa_backend_runs("cudnn", "cpu")
