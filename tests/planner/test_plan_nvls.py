"""NVLS in the planner: searched where its runs_on check passes, priced as the tuner prices it."""

from __future__ import annotations

from functools import cache

import numpy as np

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec, ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.planner import PlanRequest
from dlsim.planner.estimate import CostTable, Fabric, estimate
from dlsim.planner.search import scenario_of
from dlsim.planner.space import Plan, Target, enumerate_plans
from dlsim.workload.attention import attention_kernel
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import TRANSFORMER_SHAPES

SHAPE = TRANSFORMER_SHAPES["llama-3-8b"]


@cache
def _topology(cluster: str, nodes: int):
    return build_topology(ClusterSpec(preset=cluster, nodes=nodes))


def _nvls_plans(cluster: str, nodes: int) -> list[Plan]:
    target = Target.on(_topology(cluster, nodes), "bf16")
    return list(enumerate_plans(SHAPE, 64, target, algorithms=("nvls",), microbatch=(1,),
                                recompute=("full",), offload=("none",)))


def test_nvls_is_not_searched_where_the_switch_cannot_reduce():
    """A100's NVSwitch (generation 2) has no multimem reduction."""
    assert _nvls_plans("dgx-a100", 2) == []


def test_nvls_plans_keep_every_gradient_group_inside_one_h100_node():
    plans = _nvls_plans("dgx-h100", 2)
    assert plans
    topology = _topology("dgx-h100", 2)
    layouts = set()
    for plan in plans:
        assert plan.zero_stage == 0 and plan.protocol in ("auto", "Simple")
        where = dlsim.cluster.build.placement(plan.gpus, topology, plan.placement)
        ranks = np.arange(plan.gpus).reshape(plan.pipeline, plan.data * plan.context,
                                             plan.tensor)
        for stage in ranks:
            for group in stage.T:  # a tensor rank's replicas at every context rank
                assert len(set(where[group] // topology.devices_per_node)) == 1
        if plan.placement == "pack":
            layouts.add((plan.data, plan.context, plan.tensor, plan.pipeline))
    # every d·c·t·p = 16 layout whose gradient group (d·c ranks t apart: d·c·t consecutive
    # ranks, rank order tp-cp-dp-pp) fits one node of 8 under pack placement, with d·c >= 2
    expected = {(d, c, t, 16 // (d * c * t)) for t in (1, 2, 4, 8) for d in (1, 2, 4, 8)
                for c in (1, 2, 4, 8) if 2 <= d * c and d * c * t <= 8}
    assert layouts == expected


def test_nvls_estimate_matches_the_engine():
    """The estimate prices the gradient all-reduce with the tuner's NVLS lowering, the one
    the engine runs: on one DGX H100 within the 0.079 % the estimate reaches on plain data
    parallelism (the engine's DDP buckets end a little later) and exactly otherwise."""
    topology = _topology("dgx-h100", 1)
    request = PlanRequest("llama-3-8b", "dgx-h100", (8,), 64)
    spec, device = ModelSpec(preset="llama-3-8b"), hardware.device("h100-sxm5-80gb")
    table = CostTable(build_model(spec, 1, 2, attention_kernel(spec, device, "bf16")),
                      device, "bf16", SHAPE.seq_len, SHAPE.hidden)  # flash, as the run
    for d, t, tol in ((8, 1, 7.9e-4), (4, 2, 1e-9), (2, 4, 1e-9)):
        plan = Plan(8, d, t, 1, 1, "1f1b", 1, 0, "full", "pack", "nvls")
        est = estimate(plan, table, "adam", 64, Fabric(topology)).step_time_s
        sim = dlsim.simulate(scenario_of(request, plan, 8)).step_time_s
        assert abs(est / sim - 1) <= tol, (d, t, est, sim)
