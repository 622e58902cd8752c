"""simulate(): scenario -> the kind's simulator -> Result.

This is the one place that wires the layers together: it validates the scenario, looks its
kind up in ``dlsim.kinds.registry`` and times the run; each kind lives in its own package.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from dlsim.admission import admit
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import Scenario, load_scenario
from dlsim.kinds.registry import KINDS
from dlsim.results.result import Result


def simulate(source: str | Path | dict[str, Any]) -> Result:
    """Simulate one scenario (a YAML path or a dict); bad input raises ScenarioError."""
    file = None if isinstance(source, dict) else str(source)
    try:
        scenario = load_scenario(source)
        if scenario.sweep:
            raise ScenarioError("this scenario describes a sweep; run it with `dlsim run` "
                                "or `dlsim sweep`.", field="sweep")
        return run_scenario(scenario)
    except ScenarioError as exc:
        if exc.file is None and file is not None:
            raise ScenarioError(exc.message, file=file, field=exc.field) from None
        raise


def run_scenario(scenario: Scenario) -> Result:
    """The kind's simulation of a validated scenario; ``wall_s`` is the simulator's wall time
    from here to the Result (topology, workload, programs, engine and summary), measured the
    same way for every kind."""
    admit(scenario)
    started = time.perf_counter()
    result = KINDS[scenario.kind].simulate(scenario)
    return replace(result, wall_s=time.perf_counter() - started)
