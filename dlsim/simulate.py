"""simulate(): scenario -> topology, workload, programs -> engine -> Result.

This is the one place that wires the layers together; each step lives in its own module.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import (
    CollectiveScenario,
    EdgeInferenceScenario,
    FederatedScenario,
    Scenario,
    TrainingScenario,
    load_scenario,
)
from dlsim.kinds.collective import simulate_collective
from dlsim.kinds.federated.simulator import simulate_federated
from dlsim.kinds.inference.simulate import simulate_edge_inference
from dlsim.kinds.sync.training import ps_training, uses_parameter_server_simulator
from dlsim.kinds.training import simulate_training
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
    """Each kind's model goes to its own simulator; parameter-server synchronisation other
    than BSP runs its own."""
    if isinstance(scenario, EdgeInferenceScenario):
        return simulate_edge_inference(scenario)
    if isinstance(scenario, FederatedScenario):
        return simulate_federated(scenario)
    if isinstance(scenario, CollectiveScenario):
        return simulate_collective(scenario, build_topology(scenario.cluster))
    if isinstance(scenario, TrainingScenario):
        topology = build_topology(scenario.cluster)
        if uses_parameter_server_simulator(scenario):
            return ps_training(scenario, topology)
        return simulate_training(scenario, topology)
    raise AssertionError(f"no simulator for {type(scenario).__name__}")  # a new kind's goes here


