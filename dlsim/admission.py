"""Admission control: estimate a run's work before simulating and refuse what would run for
hours or exhaust memory (a typo like ``nodes: 125000000`` or ``steps: 1000000000``).

The estimates are cheap upper-bound-style counts, computed from the scenario alone in
microseconds, not predictions of the engine's exact event count: a training step is every
simulated rank's forward and backward op per layer and micro-batch plus a bucket per layer,
a collective is its ranks' flows over 2(n - 1) ring phases, a federated run is its clients
plus four events (download, train, upload, arrival) per client update. Each device of the
topology counts once, since building it costs as much. The limits are scenario fields
(``simulation.max_events``, ``federated.max_events``) so a user can raise them knowingly.
"""

from __future__ import annotations

import math

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import (
    ClusterSpec,
    CollectiveScenario,
    FederatedScenario,
    ModelSpec,
    Scenario,
    TrainingScenario,
)
from dlsim.hardware import profiles as hardware
from dlsim.workload.shapes import shape_of

DEEPEST_PRESET_LAYERS = 152  # the bound for presets without a layer count (ResNet-152 depth)


def cluster_devices(cluster: ClusterSpec) -> int:
    """Devices the cluster section describes (before any is built)."""
    if cluster.topology is not None:
        return math.prod(cluster.dims) if cluster.topology == "torus" and cluster.dims else (
            cluster.devices or 1)
    known = cluster.preset in hardware.available("systems")
    # an unknown preset counts one device a node: the simulator's own check names it
    per_node = (hardware.system(cluster.preset).devices_per_node if cluster.preset and known
                else cluster.devices_per_node or 1)
    return cluster.nodes * per_node


def _layers(model: ModelSpec) -> int:
    if model.layers is not None:
        return model.layers
    if model.widths is not None:
        return len(model.widths)
    shape = shape_of(model)
    if shape is not None:
        return shape.layers
    return DEEPEST_PRESET_LAYERS


def training_events(s: TrainingScenario) -> int:
    devices = cluster_devices(s.cluster)
    par = s.parallelism
    model_parallel = par.tensor * par.pipeline
    data = par.data or max(1, devices // model_parallel)
    per_replica = max(1, s.training.global_batch // data)
    microbatches = max(1, per_replica // (s.training.microbatch or per_replica))
    ranks = devices if s.simulation.fidelity == "full" else min(devices, model_parallel)
    layers_per_stage = math.ceil(_layers(s.model) / par.pipeline)
    per_step = ranks * (2 * microbatches * layers_per_stage * par.virtual_stages
                        + layers_per_stage)
    return devices + s.training.steps * per_step


def collective_events(s: CollectiveScenario) -> int:
    devices = cluster_devices(s.cluster)
    n = s.collective.devices or devices
    return devices + n * 2 * max(1, n - 1)


def federated_events(s: FederatedScenario) -> int:
    f = s.federated
    per_round = math.ceil(f.clients_per_round * f.overcommit)
    if f.algorithm == "fedbuff":
        per_round = f.fedbuff.buffer
    return f.clients + 4 * f.rounds * per_round


def admit(scenario: Scenario) -> None:
    """Refuse a scenario whose estimated work exceeds its limit, saying the estimate, the
    limit, and the field that raises it."""
    if isinstance(scenario, TrainingScenario):
        estimate, limit, field = (training_events(scenario), scenario.simulation.max_events,
                                  "simulation.max_events")
        what = "devices plus steps × simulated ranks × (ops per micro-batch and layer)"
    elif isinstance(scenario, CollectiveScenario):
        estimate, limit, field = (collective_events(scenario),
                                  scenario.simulation.max_events, "simulation.max_events")
        what = "devices plus ranks × 2(ranks - 1) ring-phase flows"
    elif isinstance(scenario, FederatedScenario):
        estimate, limit, field = (federated_events(scenario), scenario.federated.max_events,
                                  "federated.max_events")
        what = "clients plus 4 events per client update over all rounds"
    else:
        return
    if estimate > limit:
        raise ScenarioError(f"this run is estimated at {estimate:,} events ({what}), over "
                            f"the limit of {limit:,}; shrink the scenario, or set "
                            f"{field}: {estimate} (or more) to run it anyway.", field=field)
