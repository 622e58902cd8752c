"""The planner: its plan space, its closed-form estimate, its ranking and its CLI."""

from __future__ import annotations

import itertools
import json

from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlsim import hardware
from dlsim.cli import app
from dlsim.cluster import build_topology
from dlsim.config import ClusterSpec, ModelSpec
from dlsim.costmodel import layer_times_s, optimizer_time_s
from dlsim.planner.estimate import CostTable, Links, estimate, ring_allreduce_s
from dlsim.planner.search import pareto_front
from dlsim.planner.space import ModelShape, Plan, enumerate_plans
from dlsim.workload import build_model


def cli(tmp_path, *args) -> tuple[int, str]:
    res = CliRunner().invoke(app, [*args, "--out", str(tmp_path)], catch_exceptions=False)
    return res.exit_code, res.output


def _brute_force(blocks: int, heads: int, hidden: int, gpus: int, batch: int,
                 per_node: int) -> set[tuple]:
    """The runnable (d, t, p, b, schedule, v, zero) tuples, by trying every value."""
    found = set()
    for t, p, b in itertools.product(range(1, gpus + 1), range(1, blocks + 1), range(1, 9)):
        if t & (t - 1) or b & (b - 1) or t > 2 * per_node:  # powers of two
            continue
        if heads % t or hidden % t or gpus % (t * p) or blocks % p:
            continue
        d = gpus // (t * p)
        if batch % (d * b):
            continue
        m = batch // (d * b)
        schedules = [("1f1b", 1)] if p == 1 else [("gpipe", 1), ("1f1b", 1)] + [
            ("interleaved", v) for v in (2, 4) if m % p == 0 and blocks % (p * v) == 0]
        zeros = (0, 1, 2, 3) if p == 1 and d > 1 else (0,)
        for (schedule, v), zero in itertools.product(schedules, zeros):
            found.add((d, t, p, b, schedule, v, zero))
    return found


@settings(max_examples=30, deadline=None)
@given(blocks=st.sampled_from([4, 6, 12, 24]), heads=st.sampled_from([4, 12, 16]),
       gpus=st.sampled_from([8, 16, 32, 64]), batch=st.sampled_from([32, 64, 96, 256]))
def test_plan_space_is_every_runnable_plan_once(blocks, heads, gpus, batch):
    shape = ModelShape(blocks, heads, heads * 64)
    plans = list(enumerate_plans(shape, gpus, batch, 8, recompute=("none",),
                                 placements=("pack",), algorithms=("ring",)))
    keys = [(p.data, p.tensor, p.pipeline, p.microbatch, p.schedule, p.virtual_stages,
             p.zero_stage) for p in plans]
    assert len(keys) == len(set(keys))
    assert set(keys) == _brute_force(blocks, heads, heads * 64, gpus, batch, 8)
    assert all(p.data * p.tensor * p.pipeline == gpus for p in plans)


def _dgx(nodes: int):
    system = hardware.system("dgx-a100")
    topology = build_topology(ClusterSpec(preset="dgx-a100", nodes=nodes))
    return topology, Links.of(topology, system.nics_per_node, system.sockets)


def test_links_read_the_topology():
    _, links = _dgx(2)
    nvlink, nic = hardware.link("nvlink3"), hardware.link("ib-hdr")
    assert links.intra_Bps == nvlink.up_Bps  # GPU -> NVSwitch -> GPU, 300 GB/s
    assert links.inter_Bps == nic.up_Bps  # one HDR NIC per GPU
    assert links.intra_s == 2 * nvlink.latency_s


def test_single_device_estimate_is_the_cost_model_sum():
    """d = t = p = 1: m micro-batches of every layer's forward and backward, then Adam."""
    _, links = _dgx(1)
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(preset="gpt2-124m"), 4, 2)
    plan = Plan(1, 1, 1, 1, 4, "1f1b", 1, 0, "none", "pack", "ring")
    est = estimate(plan, CostTable(model, device, "bf16", 4 * 1024, 768), "adam", 32, links)
    per_micro = sum(sum(layer_times_s(layer, device, "bf16")) for layer in model.layers)
    expected = 8 * per_micro + optimizer_time_s(model.parameters, "adam", device)
    assert abs(est.step_time_s - expected) <= 1e-12 * expected


def test_tensor_parallel_estimate_adds_four_ring_allreduces_per_block():
    """t = 2 inside a node: per block and micro-batch 2 + 2 ring all-reduces of b·s·h·2
    bytes over NVLink (2(t−1)/t·S/B + 2(t−1)α)."""
    _, links = _dgx(1)
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    table = CostTable(model, device, "bf16", 1024, 768)
    plan = Plan(2, 1, 2, 1, 1, "1f1b", 1, 0, "none", "pack", "ring")
    est = estimate(plan, table, "adam", 1, links)
    one = 2 * (2 - 1) / 2 * 1024 * 768 * 2 / 300e9 + 2 * (2 - 1) * links.intra_s
    # 12 blocks x (2 + 2), the vocab-parallel embedding (forward) and LM head (backward)
    assert abs(est.breakdown_s["tensor_comm"] - (4 * 12 + 2) * one) <= 1e-12


def test_ring_allreduce_closed_form():
    assert ring_allreduce_s(8e9, 8, 100e9, 1e-6) == 2 * 7 / 8 * 8e9 / 100e9 + 14e-6
    assert ring_allreduce_s(8e9, 1, 100e9, 1e-6) == 0.0


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
    assert best["data"] * best["tensor"] * best["pipeline"] == 16


def test_plan_cli_rejects_an_unknown_model(tmp_path):
    code, text = cli(tmp_path, "plan", "--model", "gpt5", "--cluster", "dgx-a100",
                     "--gpus", "8", "--global-batch", "8")
    assert code == 2 and "--model" in text and "Traceback" not in text
