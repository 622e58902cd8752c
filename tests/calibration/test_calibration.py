"""Calibration: fits against closed forms, the file round trip, refusal on another device,
and a tiny real torch run whose measurements move the simulator's prediction."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dlsim
from dlsim.calibration import store
from dlsim.calibration.fit import fit_ring_allreduce, fit_saturating
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.hardware import profiles as hardware
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import Kernel

torch = pytest.importorskip("torch")

TINY_MLP = {"kind": "mlp", "widths": [1024, 2048, 2048, 10]}


# --- fits: closed forms and monotonicity --------------------------------------------------

@settings(max_examples=25, deadline=None)
@given(rate=st.floats(1e9, 1e13), half=st.floats(0.0, 50.0), launch=st.floats(0, 1e-4),
       sizes=st.lists(st.floats(1e6, 1e12), min_size=3, max_size=12, unique=True))
def test_saturating_fit_recovers_the_curve_that_made_the_times(rate, half, launch, sizes):
    flops = np.array(sizes)
    # time of the cost model's saturating efficiency: launch + f / (R * f / (f + h))
    times = launch + flops / (rate * flops / (flops + half * 1e9))
    if np.ptp(flops) < 1e-3 * flops.max():
        return
    fit = fit_saturating(flops, times, launch)
    assert fit.rate_flops == pytest.approx(rate, rel=1e-6)
    assert fit.half_gflop == pytest.approx(half, rel=1e-5, abs=1e-6 * flops.max() / 1e9)
    assert np.abs(fit.residuals_pct).max() < 1e-4  # solver precision, in percent


@settings(max_examples=40, deadline=None)
@given(points=st.lists(st.tuples(st.floats(1e6, 1e11), st.floats(1e-6, 1.0)),
                       min_size=3, max_size=15, unique_by=lambda p: p[0]),
       probe=st.lists(st.floats(1e-3, 1e4), min_size=2, max_size=20))
def test_fitted_efficiency_is_monotone_in_size_whatever_was_measured(points, probe):
    flops, times = map(np.array, zip(*points))
    try:
        fit = fit_saturating(flops, times, 0.0)
    except ValueError:  # times that fall with size have no rate; refused, not fitted
        return
    assert fit.rate_flops > 0 and fit.half_gflop >= 0
    curve = hardware.Curve(max=1.0, half_gflop=fit.half_gflop)
    eff = [curve.at(g) for g in sorted(probe)]
    assert all(b >= a for a, b in zip(eff, eff[1:]))


@pytest.mark.parametrize("ranks", [[2], [2, 3, 4]])
def test_ring_fit_recovers_alpha_and_bandwidth(ranks):
    alpha, bandwidth = 150e-6, 2.5e9
    n = np.repeat(ranks, 5)
    g = np.tile([4e3, 6.4e4, 1e6, 1.6e7, 6.4e7], len(ranks))
    # Thakur et al. ring all-reduce: 2(N-1) alpha + 2(N-1)/N * G / B
    t = 2 * (n - 1) * alpha + 2 * (n - 1) / n * g / bandwidth
    fit = fit_ring_allreduce(n, g, t)
    assert fit.latency_s == pytest.approx(alpha, rel=1e-9)
    assert fit.bandwidth_Bps == pytest.approx(bandwidth, rel=1e-9)


# --- a tiny real calibration run ---------------------------------------------------------

@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from dlsim.calibration.calibrate import Grid, calibrate

    grid = Grid(matmul=[(32, 64, 64), (64, 256, 256), (128, 256, 512)],
                conv=[(1, 8, 8, 16, 3, 1), (2, 16, 16, 16, 3, 1)],
                attention=[(1, 2, 32, 64), (2, 2, 64, 64)],
                memory=[4096, 65536], allreduce_bytes=[], repeats=3)
    out = tmp_path_factory.mktemp("calibration")
    cal, path = calibrate("cpu", grid=grid, out_dir=out, progress=False, max_ranks=1)
    return cal, path


def test_calibration_file_round_trips(tiny):
    cal, path = tiny
    assert path.name == f"{cal.fingerprint}.json"
    again = store.load(path)
    assert again == cal
    assert store.save(again, path.parent).read_text() == path.read_text()
    from dlsim.calibration.calibrate import default_threads

    assert cal.host.torch == torch.__version__ and cal.host.threads == default_threads("cpu")
    assert len(cal.load_average) == 3 and cal.date.endswith("+00:00")
    kinds = {m.kind for m in cal.measurements}
    assert {"launch", "gemm", "conv", "attention", "memory"} <= kinds
    from dlsim.calibration.bench import bf16_native

    bf16 = {"gemm.bf16"} if bf16_native("cpu") else set()  # measured where native
    assert set(cal.curves) == {"gemm.fp32", "conv.fp32", "attention.fp32"} | bf16


def test_calibrated_kernel_time_is_the_fitted_roofline(tiny):
    """The overlay reaches the cost model: one GEMM's time, computed here from the file."""
    cal, path = tiny
    device = store.overlay(hardware.device("cpu-host"), cal)
    kernel = Kernel("gemm", 2.0 * 256 * 512 * 1024, 4.0 * (256 * 512 + 512 * 1024 + 256 * 1024))
    curve = cal.curves["gemm.fp32"]
    gflop = kernel.flops / 1e9
    eff = curve.max * gflop / (gflop + curve.half_gflop)
    compute = kernel.flops / (cal.peak_tflops["fp32"] * 1e12 * eff)
    memory = kernel.bytes / (cal.memory_bandwidth_GBps * 1e9 * cal.memory_efficiency)
    expected = max(compute, memory) + cal.kernel_launch_us * 1e-6
    assert kernel_time_s(kernel, device, "fp32") == pytest.approx(expected, rel=1e-12)


def _step(path, model=TINY_MLP, **cluster):
    return dlsim.simulate({
        "name": "t", "model": model, "precision": "fp32",
        "cluster": {"device": "cpu-host", "devices_per_node": 1, "intra_node": "pcie",
                    **({"calibration": str(path)} if path else {}), **cluster},
        "training": {"global_batch": 64, "optimizer": "sgd"}}).step_time_s


def test_lower_measured_efficiency_predicts_a_longer_step(tiny, tmp_path):
    """Halve every measured GEMM rate (double its time), refit: the step grows, and the
    measured calibration predicts a far longer step than the uncalibrated 2x Xeon profile."""
    from dlsim.calibration.calibrate import fit

    cal, path = tiny
    slower = [m.model_copy(update={"median_s": 2 * m.median_s}) if m.kind == "gemm" else m
              for m in cal.measurements]
    refit = fit(slower, {"fp32": cal.peak_tflops["fp32"]}, cal.peak_source)
    refit.pop("skipped", None)
    slow = cal.model_copy(update={**refit, "measurements": slower, "fingerprint": "slow"})
    slow_path = store.save(slow, tmp_path)
    assert slow.curves["gemm.fp32"].rate_tflops < cal.curves["gemm.fp32"].rate_tflops
    assert _step(slow_path) > _step(path) > _step(None)


def test_another_devices_calibration_is_refused_with_one_paragraph(tiny, tmp_path):
    cal, path = tiny
    other = cal.model_copy(update={"fingerprint": "cpu-elsewhere-64c-32t-00000000"})
    other_path = store.save(other, tmp_path)
    with pytest.raises(ScenarioError, match="measured on another device") as exc:
        store.check_fingerprint(other, cal.fingerprint)
    assert "cpu-elsewhere-64c-32t-00000000" in str(exc.value) and "--force" in str(exc.value)
    store.check_fingerprint(other, cal.fingerprint, force=True)
    res = CliRunner().invoke(app, ["validate", "--host", "--calibration", str(other_path)])
    assert res.exit_code == 2, res.output
    assert "measured on another device" in res.output and "Traceback" not in res.output


def test_calibration_of_one_profile_is_refused_on_another(tiny):
    cal, path = tiny
    scenario = {"name": "t", "model": TINY_MLP, "precision": "fp32",
                "cluster": {"device": "a100-sxm4-80gb", "devices_per_node": 1,
                            "intra_node": "pcie", "calibration": str(path)},
                "training": {"global_batch": 64, "optimizer": "sgd"}}
    with pytest.raises(ScenarioError, match="never applied to another device") as exc:
        dlsim.simulate(scenario)
    assert exc.value.field == "cluster.calibration"
    scenario["cluster"]["force_calibration"] = True
    forced = dlsim.simulate(scenario).step_time_s
    del scenario["cluster"]["calibration"], scenario["cluster"]["force_calibration"]
    assert forced != dlsim.simulate(scenario).step_time_s  # the overlay was applied


def test_unreadable_calibration_names_file_and_field(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"fingerprint": "x"}))
    with pytest.raises(ScenarioError) as exc:
        _step(bad)
    assert exc.value.field == "cluster.calibration" and "not a dlsim calibration" in str(exc.value)


def test_calibrate_cuda_without_cuda_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("this host has CUDA")
    res = CliRunner().invoke(app, ["calibrate", "--device", "cuda"])
    assert res.exit_code == 2 and "no CUDA device" in res.output


def test_torch_models_have_dlsims_parameter_counts():
    """The held-out torch models are the networks the simulator models."""
    from dlsim.calibration.hostruns import CASES
    from dlsim.contract.scenario import ModelSpec
    from dlsim.workload.presets import build_model

    for case in CASES:
        expected = build_model(ModelSpec(**case.model), case.batch, 4).parameters
        assert sum(p.numel() for p in case.build().parameters()) == expected, case.name


def test_run_cli_takes_a_calibration_and_refuses_it_on_another_device(tiny, tmp_path):
    cal, path = tiny
    scenario = tmp_path / "host.yaml"
    scenario.write_text("name: host\nmodel: {kind: mlp, widths: [1024, 2048, 2048, 10]}\n"
                        "cluster: {device: cpu-host, devices_per_node: 1, intra_node: pcie}\n"
                        "precision: fp32\ntraining: {global_batch: 64, optimizer: sgd}\n")
    runner = CliRunner()
    plain = runner.invoke(app, ["run", str(scenario), "--json", "--out", str(tmp_path)])
    calibrated = runner.invoke(app, ["run", str(scenario), "--json", "--out", str(tmp_path),
                                     "--calibration", str(path)])
    assert plain.exit_code == 0 and calibrated.exit_code == 0, calibrated.output
    assert json.loads(calibrated.output)["step_time_s"] == pytest.approx(_step(path))
    assert json.loads(calibrated.output)["step_time_s"] > json.loads(plain.output)["step_time_s"]
    quickstart = Path(__file__).resolve().parents[2] / "scenarios" / "quickstart.yaml"
    res = runner.invoke(app, ["run", str(quickstart), "--out", str(tmp_path),
                              "--calibration", str(path)])
    assert res.exit_code == 2 and "never applied to another device" in res.output
    assert "Traceback" not in res.output


def test_validate_host_prints_host_tables_and_their_median(monkeypatch, tmp_path):
    """The CLI plumbing of --host, with the torch runs replaced by fixed rows."""
    from dlsim.calibration import hostruns

    rows = [("host-training", "a", 1.1, 1.0), ("host-training", "b", 0.8, 1.0),
            ("host-ddp", "c", 2.6, 2.0)]
    monkeypatch.setattr(hostruns, "run_host", lambda *args: rows)
    res = CliRunner().invoke(app, ["validate", "--host", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    host = [r for r in json.loads(res.output) if r["table"].startswith("host-")]
    assert [(r["table"], r["case"]) for r in host] == [(t, c) for t, c, _, _ in rows]
    assert [r["error_pct"] for r in host] == pytest.approx([10.0, -20.0, 30.0])
    res = CliRunner().invoke(app, ["validate", "--host", "--out", str(tmp_path)])
    assert "median absolute error 20.0% over 3 rows" in res.output


def test_core_runs_without_torch_and_calibrate_says_what_to_install(monkeypatch):
    """Only dlsim.calibration's measuring modules import torch."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"
            "import dlsim, dlsim.cli\n"
            "r = dlsim.simulate({'name': 't', 'model': {'kind': 'mlp', 'widths': [8, 8]},"
            " 'cluster': {'device': 'cpu-host', 'devices_per_node': 1, 'intra_node': 'pcie'},"
            " 'precision': 'fp32', 'training': {'global_batch': 4}})\n"
            "assert r.step_time_s > 0\n")
    subprocess.run([sys.executable, "-c", code], check=True)
    monkeypatch.setitem(sys.modules, "torch", None)
    for name in ("dlsim.calibration.calibrate", "dlsim.calibration.bench"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    res = CliRunner().invoke(app, ["calibrate"])
    assert res.exit_code == 2 and "pip install 'dlsim[calibrate]'" in res.output
