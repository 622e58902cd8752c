"""A run's progress: the engine tells an observer its clock, the CLI's bar shows it on a
terminal only, and only once the run has taken a while."""

from __future__ import annotations

import io

import numpy as np
from conftest import topology_of
from rich.console import Console
from typer.testing import CliRunner

from dlsim.cli import RunProgress, app
from dlsim.contract.program import Compute
from dlsim.engine import core
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec, star


def _engine(ops: int) -> Engine:
    topology = topology_of(star(2, LinkSpec("l", 1e9, 1e9, 0.0)), 2)
    programs = {0: [Compute(f"a{i}", 0.5) for i in range(ops)],
                1: [Compute(f"b{i}", 0.25) for i in range(ops)]}
    # one event per op (merged, each rank's ops would be a single timeout)
    return Engine(topology, programs, np.arange(2), merge_compute=False)


def test_observer_sees_the_clock_advance_towards_the_busiest_ranks_compute(monkeypatch):
    """Two ranks of 100 compute ops (0.5 s and 0.25 s each): the estimate is the busiest
    rank's 50 s, and the clock reported every 8 events never goes back nor past the end."""
    monkeypatch.setattr(core, "OBSERVE_EVERY", 8)
    seen: list[tuple[float, float]] = []
    run = _engine(100).run(lambda now, estimate: seen.append((now, estimate)))
    assert run.end_s == 50.0
    assert len(seen) == run.events // 8
    clocks = [now for now, _ in seen]
    assert clocks == sorted(clocks) and 0 < clocks[-1] <= 50.0
    assert {estimate for _, estimate in seen} == {50.0}


def test_observer_is_optional_and_changes_nothing():
    assert _engine(10).run().end_s == _engine(10).run(lambda *_: None).end_s == 5.0


class _Clock:
    def __init__(self) -> None:
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


def test_bar_appears_on_a_terminal_after_two_seconds_only():
    clock = _Clock()
    stream = io.StringIO()
    progress = RunProgress(Console(file=stream, force_terminal=True), clock)
    progress(1.0, 10.0)
    assert progress.bar is None  # a quick run prints nothing
    clock.t = RunProgress.AFTER_S
    progress(2.0, 10.0)
    assert progress.bar is not None
    task = progress.bar.tasks[0]
    assert (task.completed, task.total) == (2.0, 10.0)
    progress(12.0, 10.0)  # past the floor: the total follows the clock
    assert (task.completed, task.total) == (12.0, 12.0)
    progress.close()


def test_no_bar_when_not_a_terminal():
    clock = _Clock()
    progress = RunProgress(Console(file=io.StringIO(), force_terminal=False), clock)
    clock.t = 100.0
    progress(1.0, 2.0)
    assert progress.bar is None


def test_cli_run_under_a_runner_prints_no_bar(tmp_path, monkeypatch):
    monkeypatch.setattr(RunProgress, "AFTER_S", 0.0)
    monkeypatch.setattr(core, "OBSERVE_EVERY", 1)
    result = CliRunner().invoke(app, ["run", "quickstart", "--out", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "simulating" not in result.output and "simulated " in result.output
    assert "about" not in result.output
