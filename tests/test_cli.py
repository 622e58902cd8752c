"""The CLI end to end (typer's CliRunner): bundled scenarios, JSON output, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from dlsim.cli import app

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def test_quickstart_writes_report_summary_and_trace(tmp_path):
    res = invoke("run", ROOT / "scenarios/quickstart.yaml", "--out", tmp_path)
    assert res.exit_code == 0, res.output
    out = tmp_path / "quickstart"
    summary = json.loads((out / "summary.json").read_text())
    for key in ("step_time_s", "throughput_samples_per_s", "tflops_per_device", "mfu",
                "parameters", "memory_per_device_bytes", "fits_in_memory",
                "comm_bytes_total", "breakdown_s", "memory_breakdown_bytes"):
        assert key in summary
    assert set(summary["memory_breakdown_bytes"]) == {"params", "grads", "optimizer",
                                                     "activations"}
    trace = json.loads((out / "trace.json").read_text())
    spans = [e for e in trace["traceEvents"] if e["ph"] == "X"]
    assert {e["tid"] for e in spans} == {0, 1}  # compute and comm streams
    assert "<html" in (out / "index.html").read_text().lower()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no staging left


def test_run_json_prints_the_summary(tmp_path):
    res = invoke("run", ROOT / "scenarios/allreduce-dgx-a100.yaml", "--out", tmp_path,
                 "--json")
    summary = json.loads(res.output)
    assert summary == json.loads((tmp_path / "allreduce-dgx-a100/summary.json").read_text())
    assert summary["busbw_GBps"] == pytest.approx(summary["algbw_GBps"] * 2 * 7 / 8)


def test_ps_vs_ring_sweep_shows_the_crossover(tmp_path):
    res = invoke("run", ROOT / "scenarios/ps-vs-ring.yaml", "--out", tmp_path, "--json")
    rows = json.loads(res.output)
    by_size: dict[float, dict[str, float]] = {}
    for row in rows:
        by_size.setdefault(row["collective.size_bytes"], {})[row["algorithm"]] = row["time_s"]
    winners = [min(t, key=t.get) for _, t in sorted(by_size.items())]
    assert winners[0] == "ps" and winners[-1] == "ring"  # small: PS; large: ring
    assert winners == sorted(winners, key=lambda w: w == "ring")  # exactly one crossover
    assert (tmp_path / "ps-vs-ring/sweep.csv").exists()
    assert (tmp_path / "ps-vs-ring/index.html").exists()


def test_sweep_command_with_vary(tmp_path):
    res = invoke("sweep", ROOT / "scenarios/allreduce-dgx-a100.yaml", "--vary",
                 "collective.size_bytes=1e6,1e9", "--out", tmp_path, "--json")
    rows = json.loads(res.output)
    assert [r["size_bytes"] for r in rows] == [1e6, 1e9]


@pytest.mark.parametrize("what", ["devices", "links", "systems", "models", "scenarios"])
def test_listings(what):
    res = invoke("list", what, "--json")
    assert res.exit_code == 0 and json.loads(res.output)


def test_every_bundled_scenario_runs(tmp_path):
    for path in sorted((ROOT / "scenarios").glob("*.yaml")):
        res = invoke("run", path, "--out", tmp_path, "--json")
        assert res.exit_code == 0, (path, res.output)


BAD = {
    "unknown preset": ("name: x\nmodel: {preset: gpt9}\ncluster: {preset: dgx-a100}\n"
                       "training: {global_batch: 8}\n", ["model.preset", "gpt2-124m"]),
    "unknown system": ("name: x\nmodel: {preset: gpt2-124m}\ncluster: {preset: dgx-z}\n"
                       "training: {global_batch: 8}\n", ["cluster.preset", "dgx-a100"]),
    "missing field": ("name: x\nmodel: {preset: gpt2-124m}\ncluster: {preset: dgx-a100}\n",
                      ["training"]),
    "negative": ("name: x\nmodel: {preset: gpt2-124m}\ncluster: {preset: dgx-a100}\n"
                 "training: {global_batch: -8}\n", ["training.global_batch", "greater than"]),
    "bad yaml": ("name: x\nmodel: {preset: [\n", ["not valid YAML", "line"]),
    "too many devices": ("name: x\nmodel: {preset: gpt2-124m}\ncluster: {preset: dgx-a100}\n"
                         "training: {global_batch: 64}\nparallelism: {data: 16}\n",
                         ["parallelism.data", "16", "8"]),
    "unknown algorithm": ("name: x\nkind: collective\ncluster: {preset: dgx-a100}\n"
                          "collective: {algorithm: magic, size_bytes: 10}\n",
                          ["collective.algorithm", "ring"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_input_is_one_paragraph_exit_2_nothing_written(tmp_path, case):
    text, expected = BAD[case]
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    out = tmp_path / "reports"
    res = runner.invoke(app, ["run", str(path), "--out", str(out)])
    assert res.exit_code == 2
    message = res.output
    assert "Traceback" not in message and str(path) in message
    assert message.strip().count("\n\n") == 0  # one paragraph
    for fragment in expected:
        assert fragment in message
    assert not out.exists() or not any(out.iterdir())


def test_bundled_scenario_by_name_from_anywhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("quickstart", "quickstart.yaml", "scenarios/quickstart.yaml"):
        res = invoke("run", name, "--out", tmp_path / name.replace("/", "-"), "--json")
        assert res.exit_code == 0, (name, res.output)
        assert json.loads(res.output)["name"] == "quickstart"
    res = invoke("sweep", "allreduce-dgx-a100", "--vary", "collective.size_bytes=1e6",
                 "--out", tmp_path, "--json")
    assert res.exit_code == 0 and len(json.loads(res.output)) == 1


def test_a_scenario_path_wins_over_the_bundled_name(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    text = (ROOT / "scenarios/quickstart.yaml").read_text().replace("name: quickstart",
                                                                     "name: mine", 1)
    (tmp_path / "quickstart.yaml").write_text(text)
    res = invoke("run", "quickstart.yaml", "--out", tmp_path, "--json")
    assert res.exit_code == 0 and json.loads(res.output)["name"] == "mine"


def test_unknown_scenario_name_lists_the_bundled_ones(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    res = runner.invoke(app, ["run", "quickstrat"])
    assert res.exit_code == 2 and "Traceback" not in res.output
    assert res.output.strip().count("\n\n") == 0  # one paragraph
    assert "'quickstrat'" in res.output and "quickstart, " in res.output


def test_unreadable_file(tmp_path):
    res = runner.invoke(app, ["run", str(tmp_path / "missing.yaml")])
    assert res.exit_code == 2 and "cannot read" in res.output


def test_tables_never_truncate_the_names_a_user_must_type():
    """Piped (as CliRunner is), a table is as wide as it needs: every device name whole."""
    from dlsim.hardware.profiles import available

    result = CliRunner().invoke(app, ["list", "devices"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    assert "…" not in result.output
    for name in available("devices"):
        assert name in result.output
