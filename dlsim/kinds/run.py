"""What the engine-based kinds (training, collective) share: the fidelity choice, running the
engine, and the Result built from its run."""

from __future__ import annotations

import gc
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import CollectiveScenario, SimulationSpec, TrainingScenario
from dlsim.contract.sync import StragglerSpec
from dlsim.engine.core import Engine, EngineRun, Observer
from dlsim.hardware.topology import Topology
from dlsim.kinds.sync.stragglers import is_heterogeneous
from dlsim.results.result import Result, simulation_result
from dlsim.results.summary import link_table


def symmetric(simulation: SimulationSpec, stragglers: StragglerSpec | None = None) -> bool:
    """Homogeneous jobs are simulated by symmetry unless the scenario asks for every rank;
    any straggler or slow link makes a job heterogeneous (DESIGN.md)."""
    return simulation.fidelity != "full" and not is_heterogeneous(stragglers)


_OBSERVER: ContextVar[Observer | None] = ContextVar("engine_observer", default=None)


@contextmanager
def observing(observer: Observer) -> Iterator[None]:
    """Engine runs started inside this block report their clock to ``observer(now,
    estimated end)`` (the CLI's progress bar for a single run)."""
    token = _OBSERVER.set(observer)
    try:
        yield
    finally:
        _OBSERVER.reset(token)


@contextmanager
def collector_paused() -> Iterator[None]:
    """Python's cyclic garbage collector off for the block (and back as it was after):
    building a 3D step's programs and running them make hundreds of thousands of ops, spans
    and events that live to the end of the run, and the collector's passes over them took
    half of the time (the 1T step's schedule: 3.6 s with it, 1.6 s without). Reference
    counting still frees what is dropped; the cycles left wait for the next pass."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def run_engine(engine: Engine, algorithm_field: str) -> EngineRun:
    """Run the engine; an algorithm that cannot serve the group names the scenario field."""
    try:
        with collector_paused():
            return engine.run(_OBSERVER.get())
    except ScenarioError as exc:
        field = algorithm_field if exc.field == "algorithm" else exc.field
        raise ScenarioError(exc.message, field=field) from None


def engine_result(scenario: TrainingScenario | CollectiveScenario, topology: Topology,
                  run: EngineRun, summary: dict[str, Any], fidelity: str) -> Result:
    """The Result of an engine run: its spans, the links that carried traffic, and the
    events and flows it simulated."""
    links = link_table(topology, run.network.link_bytes, run.network.link_busy_s, run.end_s)
    return simulation_result(scenario, summary, fidelity=fidelity, events=run.events,
                             flows=run.network.flows_started, spans=run.spans, links=links,
                             network=scenario.simulation.network)
