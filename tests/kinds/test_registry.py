"""The registry of kinds: every kind runs through it and returns the same shape of Result
(the simulation block, the wall time of the run), names a primary metric its summary holds,
and has a report page."""

from __future__ import annotations

import re
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

import dlsim
from dlsim.cli import app
from dlsim.contract.scenario import read_yaml
from dlsim.kinds.registry import KINDS
from dlsim.report.kinds import PAGES, render_run
from dlsim.results.result import Result

SCENARIOS = Path(__file__).resolve().parents[2] / "scenarios"

# One small bundled scenario per path that builds a Result: (file, fidelity, has flows).
# ssp-vs-asp's base point (its sweep left out) runs the parameter-server simulator.
CASES = {
    "training": ("quickstart.yaml", "symmetric", True),
    "training-parameter-server": ("ssp-vs-asp.yaml", "full", True),
    "collective": ("allreduce-dgx-a100.yaml", "symmetric", True),
    "federated": ("federated-deadline.yaml", "full", False),
    "edge-inference": ("edge-split-resnet50.yaml", "analytic", False),
}


def base_point(file: str) -> dict:
    data = read_yaml(SCENARIOS / file)
    data.pop("sweep", None)
    return data


def test_the_cases_cover_every_kind_and_every_kind_has_a_page():
    kinds = {base_point(file).get("kind", "training") for file, _, _ in CASES.values()}
    assert kinds == set(KINDS) == set(PAGES)


@pytest.mark.parametrize(("file", "fidelity", "flows"), CASES.values(), ids=list(CASES))
def test_every_kind_times_its_run_and_ends_with_the_same_simulation_block(file, fidelity,
                                                                           flows):
    data = base_point(file)
    before = time.perf_counter()
    result = dlsim.simulate(data)
    elapsed = time.perf_counter() - before
    assert 0 < result.wall_s <= elapsed
    summary = result.summary
    assert list(summary)[-1] == "simulation"
    assert list(summary["simulation"]) == ["fidelity", "events", *(["flows"] * flows), "seed"]
    assert summary["simulation"]["fidelity"] == fidelity
    assert summary["simulation"]["seed"] == data.get("seed", 0)
    assert KINDS[summary["kind"]].primary_metric in summary


def test_the_parameter_server_path_prints_its_wall_time(tmp_path):
    """It printed "simulated in 0.000 s" when its Result was built without a wall time."""
    data = base_point("ssp-vs-asp.yaml")
    assert data["sync"]["mode"] == "ssp"  # the parameter-server simulator's path
    path = tmp_path / "ssp.yaml"
    path.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path)],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    wall = float(re.search(r"simulated in ([0-9.]+) s", res.output).group(1))
    assert wall > 0


def test_a_kind_without_a_page_is_named():
    with pytest.raises(ValueError, match="no report page for kind 'quantum'; .* training"):
        render_run(Result({"name": "q", "kind": "quantum"}, {}))
