"""simulate(): scenario -> topology, workload, programs -> engine -> Result.

This is the one place that wires the layers together; each step lives in its own module.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import Scenario, load_scenario
from dlsim.hardware.topology import Topology
from dlsim.kinds.collective import simulate_collective
from dlsim.kinds.federated.simulator import simulate_federated
from dlsim.kinds.inference.simulate import simulate_edge_inference
from dlsim.kinds.sync.training import ps_training, uses_parameter_server_simulator
from dlsim.kinds.training import simulate_training
from dlsim.results.result import Result

# Kinds with their own simulator, each in its own package: kind -> (Scenario -> Result).
_OTHER_KINDS: dict[str, Callable[[Scenario], Result]] = {
    "edge-inference": simulate_edge_inference,
    "federated": simulate_federated,
}


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
    if scenario.kind in _OTHER_KINDS:
        if scenario.simulation.network != "fluid":
            raise ScenarioError(f"a {scenario.kind} scenario models its links itself; the "
                                "network model applies to training and collective "
                                "scenarios (leave it at fluid).", field="simulation.network")
        return _OTHER_KINDS[scenario.kind](scenario)
    topology = build_topology(scenario.cluster)
    if scenario.kind == "collective":
        return simulate_collective(scenario, topology)
    return _training(scenario, topology)


def _training(scenario: Scenario, topology: Topology) -> Result:
    """Parameter-server synchronisation other than BSP runs its own simulator."""
    if uses_parameter_server_simulator(scenario):
        return ps_training(scenario, topology)
    return simulate_training(scenario, topology)


