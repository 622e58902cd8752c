"""The planner's energy: the closed-form estimate's parts priced with the power model the
engine's summaries use (dlsim.results.power), against the engine on the plans the
estimate-vs-engine tests compare."""

from __future__ import annotations

import numpy as np
from comparison_plans import sampled_plans

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec
from dlsim.planner import PlanRequest
from dlsim.planner.estimate import Fabric, estimate
from dlsim.planner.search import scenario_of
from dlsim.planner.space import Target
from dlsim.results.power import estimated_energy_J, power_model


def _energy_errors(model: str, gpus: int, batch: int, stride: int) -> list[float]:
    """(estimate − engine) / engine of the energy per step over every ``stride``-th priced
    plan of the narrowed space ``tests/planner/test_planner.py`` samples."""
    request = PlanRequest(model, "dgx-a100", (gpus,), batch)
    topology = build_topology(ClusterSpec(preset="dgx-a100", nodes=gpus // 8))
    fabric, device = Fabric(topology), topology.device
    assert device is not None
    errors = []
    for plan, built, table in sampled_plans(model, batch, Target.on(topology, "bf16"),
                                            device, stride):
        est = estimate(plan, table, "adam", batch, fabric)
        energy = gpus * estimated_energy_J(power_model(built, device, "bf16"),
                                           est.step_time_s, est.breakdown_s)
        sim = dlsim.simulate(scenario_of(request, plan, 8)).summary
        errors.append((energy - sim["energy_per_step_J"]) / sim["energy_per_step_J"])
    return errors


def test_estimated_energy_tracks_the_engine():
    """Megatron 7.5B on 32 A100s, the 61 plans of the step-time comparison. Reached:
    median |error| 1.29%, worst 7.49%. The estimate is low where communication hides under
    compute (plain data parallelism's buckets, ZeRO-3's gathers on the prefetch stream: the
    estimate's parts do not hold them, the engine adds their power over the overlap) and
    high with pipelines (the estimate charges every stage the slowest one's compute)."""
    errors = np.abs(_energy_errors("megatron-7.5b", 32, 128, 79))
    assert len(errors) == 61
    assert np.median(errors) <= 0.0130 and errors.max() <= 0.0750


def test_estimated_energy_tracks_the_engine_on_llama():
    """LLaMA-2-7B on 16 A100s, the 31 plans of the step-time comparison. Reached: median
    |error| 0.73%, worst 6.82% (ZeRO-3 with tensor parallelism, overlapped gathers)."""
    errors = np.abs(_energy_errors("llama-2-7b", 16, 32, 171))
    assert len(errors) == 31
    assert np.median(errors) <= 0.0074 and errors.max() <= 0.0683
