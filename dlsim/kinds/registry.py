"""The kinds of scenario dlsim simulates, keyed by the name a scenario's ``kind:`` gives: for
each, the function that turns the validated scenario into a Result, and the summary field a
sweep plots and pivots by.

Adding a kind is one entry here, its package under ``dlsim/kinds/``, and its page in
``dlsim.report.kinds``. The three tables sit in the layer each belongs to, so that imports
point down: the schema of each kind lives in ``dlsim.contract`` (it is validated before any
kind runs, and the contract imports nothing above it); this table names simulators, which
sit in this layer; the report's table names pages, and reports sit above the kinds.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import CollectiveScenario, TrainingScenario
from dlsim.kinds.collective import simulate_collective
from dlsim.kinds.federated.simulator import simulate_federated
from dlsim.kinds.inference.simulate import simulate_edge_inference
from dlsim.kinds.sync.training import ps_training, uses_parameter_server_simulator
from dlsim.kinds.training import simulate_training
from dlsim.results.result import Result


@dataclass(frozen=True)
class Kind:
    """How one kind runs: ``simulate`` (the kind's own scenario model, as
    ``dlsim.contract.scenario`` validated it -> Result) and the summary field that answers
    its question (``primary_metric``: what a sweep plots by default and pivots)."""

    simulate: Callable[[Any], Result]  # each takes its own kind's model
    primary_metric: str


def _training(scenario: TrainingScenario) -> Result:
    """Parameter-server synchronisation other than BSP, and a parameter-server job that loses
    workers, run the parameter-server simulator; every other training step the engine."""
    topology = build_topology(scenario.cluster)
    if uses_parameter_server_simulator(scenario):
        return ps_training(scenario, topology)
    return simulate_training(scenario, topology)


def _collective(scenario: CollectiveScenario) -> Result:
    return simulate_collective(scenario, build_topology(scenario.cluster))


KINDS: dict[str, Kind] = {
    "training": Kind(_training, "step_time_s"),
    "collective": Kind(_collective, "time_s"),
    "federated": Kind(simulate_federated, "time_to_rounds_s"),
    "edge-inference": Kind(simulate_edge_inference, "latency_s"),
}
