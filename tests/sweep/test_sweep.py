"""Sweeps: the point cache (repeat = zero simulations, interrupted = resumes), invalid
points as error rows, the same table from every executor (serial, processes, a real Dask
LocalCluster), Parquet output, and the scaling fits of a bundled scaling scenario checked
against the closed forms of ring and parameter-server all-reduce."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import load_scenario
from dlsim.sweep import executors
from dlsim.sweep.executors import (
    PointCache,
    dask_executor,
    evaluate,
    local_processes,
    scenario_hash,
)
from dlsim.sweep.grid import run_sweep

ROOT = Path(__file__).resolve().parents[2]
BASE = {"name": "tiny", "kind": "collective",
        "cluster": {"topology": "switch", "devices": 8,
                    "link": {"bandwidth_GBps": 25, "latency_us": 5}},
        "collective": {"op": "allreduce", "algorithm": "ring", "size_bytes": 1e6}}
VARY = {"cluster.devices": [2, 4, 8], "collective.algorithm": ["ring", "ps"]}


def _no_simulation(_scenario):
    raise AssertionError("a cached point was simulated again")


def test_repeated_sweep_simulates_nothing_and_gives_the_same_table(tmp_path, monkeypatch):
    first = PointCache(tmp_path)
    table = run_sweep(BASE, VARY, progress=False, cache=first)
    assert (first.hits, first.writes) == (0, 6)
    assert len(list(tmp_path.glob("*.json"))) == 6
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files
    monkeypatch.setattr(executors, "simulate_point", _no_simulation)
    second = PointCache(tmp_path)
    again = run_sweep(BASE, VARY, progress=False, cache=second)
    assert (second.hits, second.writes) == (6, 0)
    pd.testing.assert_frame_equal(table, again)


def test_interrupted_sweep_resumes_where_it_stopped(tmp_path, monkeypatch):
    fresh = run_sweep(BASE, VARY, progress=False)
    real, done = executors.simulate_point, []

    def killed_after_two(scenario):
        if len(done) == 2:
            raise KeyboardInterrupt  # what Ctrl-C does in the middle of a sweep
        done.append(scenario)
        return real(scenario)

    monkeypatch.setattr(executors, "simulate_point", killed_after_two)
    with pytest.raises(KeyboardInterrupt):
        run_sweep(BASE, VARY, progress=False, cache=PointCache(tmp_path))
    assert len(list(tmp_path.glob("*.json"))) == 2  # finished points were kept
    monkeypatch.setattr(executors, "simulate_point", real)
    resumed = PointCache(tmp_path)
    table = run_sweep(BASE, VARY, progress=False, cache=resumed)
    assert (resumed.hits, resumed.writes) == (2, 4)
    pd.testing.assert_frame_equal(table, fresh)


def test_subset_first_then_the_whole_grid_reuses_the_subset(tmp_path):
    run_sweep(BASE, {"cluster.devices": [2, 4], "collective.algorithm": ["ring"]},
              progress=False, cache=PointCache(tmp_path))
    cache = PointCache(tmp_path)
    run_sweep(BASE, VARY, progress=False, cache=cache)
    assert (cache.hits, cache.writes) == (2, 4)


def test_a_damaged_cache_file_is_simulated_again(tmp_path):
    run_sweep(BASE, VARY, progress=False, cache=PointCache(tmp_path))
    victim = sorted(tmp_path.glob("*.json"))[0]
    victim.write_text('{"name": "ti')  # what a torn write would leave without the rename
    cache = PointCache(tmp_path)
    run_sweep(BASE, VARY, progress=False, cache=cache)
    assert (cache.hits, cache.writes) == (5, 1)
    json.loads(victim.read_text())


@settings(max_examples=20, deadline=None)
@given(devices=st.integers(2, 64), size=st.floats(1.0, 1e9), explicit=st.booleans())
def test_hash_depends_on_the_validated_scenario_only(devices, size, explicit):
    data = json.loads(json.dumps(BASE))
    data["cluster"]["devices"], data["collective"]["size_bytes"] = devices, size
    spelled = json.loads(json.dumps(data))
    if explicit:  # defaults written out, keys reordered: the same scenario
        spelled = {"placement": "pack", "seed": 0, **spelled}
    assert scenario_hash(load_scenario(data)) == scenario_hash(load_scenario(spelled))
    data["cluster"]["devices"] = devices + 1
    assert scenario_hash(load_scenario(data)) != scenario_hash(load_scenario(spelled))


def test_invalid_points_are_rows_with_their_error_and_the_rest_still_run():
    vary = {"collective.devices": [4, 64], "collective.algorithm": ["ring", "magic"]}
    table = run_sweep(BASE, vary, progress=False)
    ok = table[table["error"].isna()]
    assert list(ok["collective.devices"]) == [4] and list(ok["algorithm"]) == ["ring"]
    failed = table[table["error"].notna()].set_index(["collective.devices",
                                                      "collective.algorithm"])
    assert failed.loc[(4, "magic"), "error"].startswith("field 'collective.algorithm'")
    assert "64" in failed.loc[(64, "ring"), "error"]  # more devices than the cluster has
    with pytest.raises(ScenarioError, match="collective.algorithm"):
        run_sweep(BASE, {"collective.algorithm": ["magic", "spell"]}, progress=False)


def test_every_executor_gives_the_same_table():
    points = [json.loads(json.dumps(BASE)) for _ in range(4)]
    for point, devices in zip(points, (2, 4, 8, 16)):
        point["cluster"]["devices"] = devices
    serial = evaluate(points)
    with local_processes(2) as pool:
        assert evaluate(points, pool) == serial
    with dask_executor(workers=2, processes=False) as dask:
        assert evaluate(points, dask) == serial
    assert [s["devices"] for s in serial] == [2, 4, 8, 16]


def test_dask_and_scheduler_together_is_an_input_error():
    with pytest.raises(ScenarioError, match="--scheduler"), executors.executor_for(
            scheduler="tcp://127.0.0.1:1", dask_workers=2):
        pass


def _cli(*args):
    return CliRunner().invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_parquet_table_reads_back_as_the_rows(tmp_path):
    res = _cli("sweep", ROOT / "scenarios/allreduce-dgx-a100.yaml", "--vary",
               "collective.size_bytes=1e6,1e9", "--out", tmp_path, "--format", "parquet",
               "--workers", 1)
    assert res.exit_code == 0, res.output
    report = next(p for p in tmp_path.iterdir() if not p.name.startswith("."))
    table = pd.read_parquet(report / "sweep.parquet")
    rows = json.loads((report / "summary.json").read_text())["rows"]
    assert table["time_s"].tolist() == [r["time_s"] for r in rows]
    assert not (report / "sweep.csv").exists()


def test_scaling_scenario_fits_match_the_closed_forms(tmp_path):
    res = _cli("sweep", ROOT / "scenarios/ps-vs-ring-scaling.yaml", "--out", tmp_path,
               "--workers", 1)
    assert res.exit_code == 0, res.output
    for column in ("σ", "κ", "N*", "f", "N½"):
        assert column in res.output
    scaling = json.loads((tmp_path / "ps-vs-ring-scaling/summary.json").read_text())["scaling"]
    ring, ps = (next(g for g in scaling if g["line"] == f"algorithm={a}") for a in ("ring", "ps"))
    g, alpha = 64 * 2**20 / 25e9, 5e-6  # G/B and the per-link latency of the scenario
    # Each phase's flows cross two links (device -> switch -> device).
    ring_time = {n: 2 * (n - 1) * (g / n + 2 * alpha) for n in (2, 4, 8, 16, 32, 64, 128, 256)}
    ps_time = {n: 2 * (n - 1) * g + 4 * alpha for n in ring_time}  # push, then pull
    for group, time in ((ring, ring_time), (ps, ps_time)):
        assert group["base_devices"] == 2
        for point in group["points"]:
            n = point["devices"]
            expected = (n / time[n]) / (2 / time[2])  # throughput N·G/T over the base's
            assert point["speedup"] == pytest.approx(expected, rel=1e-9)
    # PS: p/C - 1 = T(N)/T(2) - 1 = (p - 1)·4g/(2g + 4α), so USL is exact with κ = 0 and
    # σ = 2/(1 + 2α/g) > 1: throughput falls from the base on, whose N is the peak.
    assert ps["usl_sigma"] == pytest.approx(2 / (1 + 2 * alpha / g), rel=1e-9)
    assert ps["usl_kappa"] == 0.0 and ps["n_peak_devices"] == 2
    assert ps["usl_r2"] == pytest.approx(1.0, abs=1e-9)
    # Ring: nearly linear; contention small, throughput still rising at 256 devices.
    assert 0 < ring["usl_sigma"] < 0.1 and ring["usl_r2"] > 0.9
    assert ring["n_peak_devices"] is None or ring["n_peak_devices"] > 256


@pytest.mark.parametrize("args, fragment", [
    (["--vary", "cluster.devices"], "--vary"),
    (["--format", "xml"], "--format"),
    (["--vary", "collective.algorithm=magic,spell"], "collective.algorithm"),
    (["--vary", "collective.op.size=1,2"], "not a mapping"),
])
def test_sweep_input_errors_exit_2_without_writing(tmp_path, args, fragment):
    out = tmp_path / "reports"
    res = CliRunner().invoke(app, ["sweep", str(ROOT / "scenarios/allreduce-dgx-a100.yaml"),
                                   *args, "--out", str(out), "--workers", "1"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert fragment in res.output
    assert not out.exists() or not any(out.iterdir())


def test_a_whole_section_can_be_varied_at_once_and_reads_as_text():
    """Layouts are coupled fields (data x tensor x pipeline = devices), so a sweep varies
    the parallelism section whole; the table shows each layout as 'data=4, tensor=2'."""
    from dlsim.sweep.grid import run_sweep

    base = {"name": "layouts", "model": {"preset": "gpt2-124m"},
            "cluster": {"preset": "dgx-a100", "nodes": 1},
            "training": {"global_batch": 16, "microbatch": 2}}
    table = run_sweep(base, {"parallelism": [{"data": 8}, {"data": 4, "tensor": 2}]},
                      progress=False)
    assert table["parallelism"].tolist() == ["data=8", "data=4, tensor=2"]
    assert table["parallelism.tensor"].tolist() == [1, 2]
