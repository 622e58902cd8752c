"""What the engine-based kinds (training, collective) share: the fidelity choice, running the
engine, and the Result built from its run."""

from __future__ import annotations

from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import Scenario
from dlsim.engine.core import Engine, EngineRun
from dlsim.hardware.topology import Topology
from dlsim.kinds.sync.stragglers import is_heterogeneous
from dlsim.results.metrics import link_table
from dlsim.results.result import Result


def symmetric(scenario: Scenario) -> bool:
    """Homogeneous jobs are simulated by symmetry unless the scenario asks for every rank;
    any straggler or slow link makes a job heterogeneous (DESIGN.md)."""
    return scenario.simulation.fidelity != "full" and not is_heterogeneous(scenario.stragglers)


def run_engine(engine: Engine, algorithm_field: str) -> EngineRun:
    """Run the engine; an algorithm that cannot serve the group names the scenario field."""
    try:
        return engine.run()
    except ScenarioError as exc:
        field = algorithm_field if exc.field == "algorithm" else exc.field
        raise ScenarioError(exc.message, field=field) from None


def network_record(scenario: Scenario) -> dict[str, str]:
    """The network model for the summary's ``simulation`` record: named only when it is not
    the fluid default, so that summaries of fluid runs stay as they were."""
    network = scenario.simulation.network
    return {} if network == "fluid" else {"network": network}


def engine_result(scenario: Scenario, topology: Topology, run: EngineRun, summary: dict[str, Any],
            fidelity: str) -> Result:
    summary["simulation"] = {"fidelity": fidelity, "events": run.events,
                             "flows": run.network.flows_started, "seed": scenario.seed,
                             **network_record(scenario)}
    links = link_table(topology, run.network.link_bytes, run.network.link_busy_s, run.end_s)
    return Result(summary, scenario.model_dump(mode="json", exclude_none=True), run.spans,
                  links, run.wall_s)


