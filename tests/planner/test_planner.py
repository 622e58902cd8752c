"""The planner: its plan space, its closed-form estimate, its ranking and its CLI."""

from __future__ import annotations

import json

import numpy as np
from comparison_plans import sampled_plans
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dlsim
from dlsim.cli import app
from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec, ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.network.tuner import estimate_time_s
from dlsim.planner import PlanRequest, run_plan
from dlsim.planner.estimate import CostTable, Fabric, estimate
from dlsim.planner.search import pareto_front, scenario_of
from dlsim.planner.space import Plan, Target
from dlsim.workload.costmodel import layer_times_s, optimizer_time_s
from dlsim.workload.presets import build_model


def cli(tmp_path, *args) -> tuple[int, str]:
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path)], catch_exceptions=False)
    return res.exit_code, res.output


def _dgx(nodes: int) -> Fabric:
    return Fabric(build_topology(ClusterSpec(preset="dgx-a100", nodes=nodes)))


def _target(gpus: int, cluster: str = "dgx-a100") -> Target:
    return Target.on(build_topology(ClusterSpec(preset=cluster, nodes=gpus // 8)), "bf16")


def test_single_device_estimate_is_the_cost_model_sum():
    """d = t = p = 1: m micro-batches of every layer's forward and backward, then Adam."""
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(preset="gpt2-124m"), 4, 2)
    plan = Plan(1, 1, 1, 1, 4, "1f1b", 1, 0, "none", "pack", "ring")
    est = estimate(plan, CostTable(model, device, "bf16", 4 * 1024, 768), "adam", 32, _dgx(1))
    per_micro = sum(sum(layer_times_s(layer, device, "bf16")) for layer in model.layers)
    expected = 8 * per_micro + optimizer_time_s(model.parameters, "adam", device)
    assert abs(est.step_time_s - expected) <= 1e-12 * expected


def test_tensor_parallel_estimate_prices_each_allreduce_as_the_tuner_does():
    """t = 2: per micro-batch 2 + 2 all-reduces of b·s·h·2 bytes per block, one for the
    vocab-parallel embedding and one for the LM head, each what the tuner's closed form
    gives for that ring on the node (the same lowering the engine runs)."""
    fabric = _dgx(1)
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    table = CostTable(model, device, "bf16", 1024, 768)
    plan = Plan(2, 1, 2, 1, 1, "1f1b", 1, 0, "none", "pack", "ring")
    est = estimate(plan, table, "adam", 1, fabric)
    one = estimate_time_s("allreduce", "ring", 1024 * 768 * 2, np.array([0, 1]),
                          fabric.topology, fabric.protocol)
    assert abs(est.breakdown_s["tensor_comm"] - (4 * 12 + 2) * one) <= 1e-12


def test_sequence_parallel_estimate_prices_each_gather_and_scatter_as_the_tuner_does():
    """t = 2 with sequence parallelism: per micro-batch 4 all-gathers and 4 reduce-scatters
    of b·s·h·2 bytes per block, and one of each for the embedding and for the LM head; the
    compute drops by what the sharded layernorms and residuals save."""
    fabric = _dgx(1)
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    table = CostTable(model, device, "bf16", 1024, 768)
    plain = Plan(2, 1, 2, 1, 1, "1f1b", 1, 0, "none", "pack", "ring")
    sp = Plan(2, 1, 2, 1, 1, "1f1b", 1, 0, "none", "pack", "ring", sequence_parallel=True)
    est = estimate(sp, table, "adam", 1, fabric)
    ag, rs = (estimate_time_s(op, "ring", 1024 * 768 * 2, np.array([0, 1]), fabric.topology,
                              fabric.protocol) for op in ("allgather", "reducescatter"))
    assert abs(est.breakdown_s["tensor_comm"] - (4 * 12 + 2) * (ag + rs)) <= 1e-12
    assert est.breakdown_s["compute"] < estimate(plain, table, "adam", 1, fabric).breakdown_s[
        "compute"]
    assert scenario_of(PlanRequest("gpt2-124m", "dgx-a100", (8,), 8), sp, 8)[
        "parallelism"]["sequence_parallel"] is True


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.floats(1, 1e6), st.floats(1, 1e6)), min_size=1, max_size=40))
def test_pareto_front_is_exactly_the_undominated_plans(points):
    rows = [{"time_to_train_s": t, "cost_usd": c} for t, c in points]
    front = pareto_front(rows)

    def dominated(r):
        return any(o["time_to_train_s"] <= r["time_to_train_s"] and o["cost_usd"] <= r["cost_usd"]
                   and (o["time_to_train_s"], o["cost_usd"]) != (r["time_to_train_s"],
                                                                  r["cost_usd"]) for o in rows)

    assert all(not dominated(r) for r in front)
    front_points = {(r["time_to_train_s"], r["cost_usd"]) for r in front}
    assert all((r["time_to_train_s"], r["cost_usd"]) in front_points
               for r in rows if not dominated(r))


def test_plan_cli_json(tmp_path):
    code, text = cli(tmp_path, "plan", "--model", "gpt2-1.5b", "--cluster", "dgx-a100",
                     "--gpus", "16", "--global-batch", "64", "--confirm", "1", "--json")
    assert code == 0, text
    data = json.loads(text)
    assert data["evaluated"] >= len(data["plans"]) > 0
    best = data["plans"][0]
    assert best["step_time_source"] == "simulated" and best["fits_in_memory"]
    assert best["data"] * best["tensor"] * best["pipeline"] * best["context"] == 16


def test_plan_cli_rejects_an_unknown_model(tmp_path):
    code, text = cli(tmp_path, "plan", "--model", "gpt5", "--cluster", "dgx-a100",
                     "--gpus", "8", "--global-batch", "8")
    assert code == 2 and "--model" in text and "Traceback" not in text


def _estimate_errors(model: str, gpus: int, batch: int, stride: int) -> list[float]:
    """|estimate - engine| / engine over every ``stride``-th plan of the planner's space."""
    request = PlanRequest(model, "dgx-a100", (gpus,), batch)
    fabric = _dgx(gpus // 8)
    device = fabric.topology.device
    errors = []
    for plan, _, table in sampled_plans(model, batch, _target(gpus), device, stride):
        est = estimate(plan, table, "adam", batch, fabric)
        sim = dlsim.simulate(scenario_of(request, plan, 8))
        errors.append(abs(est.step_time_s - sim.step_time_s) / sim.step_time_s)
    return errors


def test_estimate_tracks_the_engine():
    """The closed form ranks plans; the engine decides. Over every 79th priced plan of
    Megatron's 7.5B model on 32 A100s (DP, TP in and across nodes, PP, interleaving, ZeRO
    with and without a pipeline, FSDP with tensor and pipeline parallelism, recompute,
    sequence parallelism, both placements; 61 of 4,758 plans) the estimate is within 1.4%
    of the engine. Reached: median 0.011%, worst 1.34%. Before the pipeline's fill and drain
    were charged stage by stage and the step's end at the stage that ends last: median
    0.089%."""
    errors = _estimate_errors("megatron-7.5b", 32, 128, 79)
    assert len(errors) == 61
    assert np.median(errors) <= 1.2e-4 and max(errors) <= 0.0134


def test_estimate_tracks_the_engine_on_llama():
    """LLaMA-2-7B (SwiGLU, RMSNorm, untied head) on 16 A100s: over every 171st priced plan
    (31 of 5,136) the estimate is within 1% of the engine. Reached: median 0.020%, worst
    0.91% (interleaved pipelines: the heavy head chunk stalls the interleaved schedule a
    little more than the fill-and-drain sum says)."""
    errors = _estimate_errors("llama-2-7b", 16, 32, 171)
    assert len(errors) == 31
    assert np.median(errors) <= 2.0e-4 and max(errors) <= 0.0091


def test_the_planner_plans_llama():
    """Every transformer preset can be planned: LLaMA-2-7B on 16 A100s has plans, and the
    engine confirms the winner."""
    result = run_plan(PlanRequest("llama-2-7b", "dgx-a100", (16,), 32, confirm=1))
    assert result.fitting > 0
    best = result.plans[0]
    assert best["step_time_source"] == "simulated" and best["fits_in_memory"]
    assert best["data"] * best["tensor"] * best["pipeline"] * best["context"] == 16
    again = dlsim.simulate(best["scenario"])
    assert again.step_time_s == best["step_time_s"]


def test_best_plan_beats_the_published_megatron_configuration():
    """Megatron-LM SC'21 Table 1 trains the 7.5B model with t=4, p=1 (full recomputation);
    on 32 A100s the planner's confirmed winner is at least as fast in the same engine."""
    request = PlanRequest("megatron-7.5b", "dgx-a100", (32,), 128, confirm=2)
    best = run_plan(request).plans[0]
    reference = dlsim.simulate(scenario_of(
        request, Plan(32, 8, 4, 1, 1, "1f1b", 1, 0, "full", "pack", "ring"), 8))
    assert best["step_time_source"] == "simulated"
    assert best["step_time_s"] <= reference.step_time_s
