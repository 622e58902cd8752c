"""Tensor parallelism (Megatron-LM, Shoeybi et al. 2019): 1/t of the GEMMs per rank, four
all-reduces of b·s·h per block per micro-batch, tensor groups inside a node under pack."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.cluster.build import build_topology, placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec, ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.data_parallel import pass_times_s
from dlsim.parallel.grid import Grid
from dlsim.parallel.tensor import shard_model
from dlsim.workload.costmodel import kernel_time_s, optimizer_time_s
from dlsim.workload.presets import build_model

H, HEADS, SEQ, VOCAB, B = 1024, 16, 512, 32000, 2
DEVICE = "a100-sxm4-80gb"


def _transformer(layers: int, parallelism: dict, cluster: dict | None = None,
                 batch: int = 2 * B, **extra) -> dict:
    return {"name": "tp", "model": {"kind": "transformer", "layers": layers, "hidden": H,
                                    "heads": HEADS, "seq_len": SEQ, "vocab": VOCAB},
            "cluster": cluster or {"topology": "switch", "devices": 8, "device": DEVICE,
                                   "link": {"bandwidth_GBps": 100, "latency_us": 2}},
            "training": {"global_batch": batch, "microbatch": B},
            "parallelism": parallelism, **extra}


def _roofline_s(flops: float, nbytes: float, device: hardware.DeviceProfile) -> float:
    """The roofline of one GEMM, written out from the profile (DESIGN.md, Modelling rules)."""
    eff = device.efficiency
    gflop = flops / 1e9
    half = eff.gemm_half_gflop * device.peak_tflops["bf16"] / eff.gemm_fit_tflops
    compute = flops / (device.peak_flops("bf16") * eff.gemm_max * gflop / (gflop + half))
    memory = nbytes / (device.memory_bandwidth_Bps * eff.memory)
    return max(compute, memory) + device.kernel_launch_s


@pytest.mark.parametrize("t", [1, 2, 4, 8])
def test_gemm_flops_and_time_per_rank_are_those_of_one_tth_of_each_gemm(t):
    device = hardware.device(DEVICE)
    block = build_model(ModelSpec(kind="transformer", layers=1, hidden=H, heads=HEADS,
                                  seq_len=SEQ, vocab=VOCAB), B, 2).layers[1]
    shard = shard_model(build_model(ModelSpec(kind="transformer", layers=1, hidden=H,
                                              heads=HEADS, seq_len=SEQ, vocab=VOCAB), B, 2),
                        t).layers[1]
    tokens = B * SEQ
    # (m, k, n) of QKV, projection, MLP up, MLP down: column- then row-parallel halves
    shapes = [(tokens, H, 3 * H), (tokens, H, H), (tokens, H, 4 * H), (tokens, 4 * H, H)]
    gemms = [k for k in shard.forward if k.kind == "gemm"]
    assert [k.flops for k in gemms] == pytest.approx([2 * m * k * n / t for m, k, n in shapes])
    expected = sum(_roofline_s(2 * m * k * n / t, 2 * (m * k + k * n + m * n) / t, device)
                   for m, k, n in shapes)
    assert sum(kernel_time_s(k, device, "bf16") for k in gemms) == pytest.approx(expected)
    # layernorms and residual adds stay whole on every rank
    replicated = {"layernorm1", "residual1+layernorm2", "residual2"}
    assert [k for k in shard.forward if k.name in replicated] == \
        [k for k in block.forward if k.name in replicated]
    attention = [k for k in shard.forward if k.name == "attention"][0]
    assert attention.flops == pytest.approx(4 * B * SEQ * SEQ * H / t)


@pytest.mark.parametrize("t", [2, 4, 8])
def test_tensor_allreduce_bytes_per_block_are_four_ring_allreduces_of_bsh(t):
    """Each block adds 4 all-reduces of b·s·h·2 bytes per micro-batch; a ring moves
    2(t-1)/t of that per rank, t ranks per group."""
    micro = 2
    runs = [dlsim.simulate(_transformer(layers, {"tensor": t, "data": 1}, batch=micro * B))
            for layers in (1, 2)]
    per_rank = 4 * 2 * (t - 1) / t * B * SEQ * H * 2
    assert runs[1].comm_bytes_total - runs[0].comm_bytes_total == \
        pytest.approx(t * per_rank * micro)
    assert runs[0].parallelism["tensor"] == t


def test_tensor_parallel_compute_is_the_sharded_layers():
    """With a free network the step is the sharded forward and backward of every layer."""
    device = hardware.device(DEVICE)
    spec = ModelSpec(kind="transformer", layers=2, hidden=H, heads=HEADS, seq_len=SEQ,
                     vocab=VOCAB)
    shard = shard_model(build_model(spec, B, 2), 4)
    free = {"topology": "switch", "devices": 4, "device": DEVICE,
            "link": {"bandwidth_GBps": 1e200, "latency_us": 0}}
    r = dlsim.simulate(_transformer(2, {"tensor": 4}, free, batch=B))
    passes = sum(sum(pass_times_s(layer, device, "bf16")) for layer in shard.layers)
    optimizer = optimizer_time_s(shard.parameters, "adam", device)
    assert r.step_time_s == pytest.approx(passes + optimizer, rel=1e-9)
    assert r.breakdown_s["compute"] == pytest.approx(r.step_time_s, rel=1e-9)


def test_pack_keeps_tensor_groups_in_a_node_and_spread_does_not():
    topology = build_topology(ClusterSpec(preset="dgx-a100", nodes=4))
    grid = Grid(data=2, tensor=8, pipeline=2)
    per_node = topology.devices_per_node
    for policy, inside in (("pack", True), ("spread", False)):
        ranks = placement(grid.size, topology, policy)
        for stage in range(2):
            for replica in range(2):
                nodes = {int(ranks[r]) // per_node for r in grid.tensor_group(stage, replica)}
                assert (len(nodes) == 1) is inside


@settings(max_examples=10, deadline=None)
@given(d=st.integers(1, 4), t=st.sampled_from([1, 2, 4]), p=st.integers(1, 4))
def test_grid_ranks_are_a_bijection(d, t, p):
    grid = Grid(d, t, p)
    ranks = [grid.rank(s, r, k) for s in range(p) for r in range(d) for k in range(t)]
    assert sorted(ranks) == list(range(d * t * p))
    assert all(np.diff(grid.tensor_group(s, r)).tolist() == [1] * (t - 1)
               for s in range(p) for r in range(d))


def test_spread_tensor_groups_pay_the_inter_node_links():
    cluster = {"preset": "dgx-a100", "nodes": 2}
    plan = {"tensor": 8, "data": 1}
    pack = dlsim.simulate(_transformer(2, plan, cluster, batch=2 * B))
    spread = dlsim.simulate(_transformer(2, plan, cluster, batch=2 * B, placement="spread"))
    assert pack.breakdown_s["compute"] == pytest.approx(spread.breakdown_s["compute"])
    assert spread.breakdown_s["exposed_comm"] > pack.breakdown_s["exposed_comm"]
    assert not pack.links.kind.str.startswith("ib").any()
    assert spread.links.kind.str.startswith("ib").any()


@pytest.mark.parametrize("schedule,v", [("1f1b", 1), ("interleaved", 2)])
def test_full_fidelity_equals_symmetry_in_3d(schedule, v):
    cluster = {"preset": "dgx-a100", "nodes": 1}
    parallelism = {"tensor": 2, "pipeline": 2, "data": 2, "schedule": schedule,
                   "virtual_stages": v}
    sym = dlsim.simulate(_transformer(3, parallelism, cluster, batch=4 * B))
    full = dlsim.simulate(_transformer(3, parallelism, cluster, batch=4 * B,
                                       simulation={"fidelity": "full"}))
    assert sym.summary["simulation"]["fidelity"] == "symmetric"
    assert full.summary["simulation"]["fidelity"] == "full"
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=1e-12)
    assert full.comm_bytes_total == pytest.approx(sym.comm_bytes_total, rel=1e-12)


def test_model_flops_per_device_count_every_tensor_rank():
    """tflops_per_device is the model's FLOPs over all devices: t devices share one replica."""
    one = dlsim.simulate(_transformer(2, {"tensor": 1, "data": 1}))
    four = dlsim.simulate(_transformer(2, {"tensor": 4, "data": 1}))
    assert four.tflops_per_device * 4 * four.step_time_s == \
        pytest.approx(one.tflops_per_device * one.step_time_s)


@pytest.mark.parametrize("model,parallelism,message", [
    ({"kind": "transformer", "layers": 2, "hidden": 1020, "heads": 12, "seq_len": 64,
      "vocab": 100}, {"tensor": 8}, "heads"),
    ({"kind": "mlp", "widths": [8, 8]}, {"tensor": 2}, "transformer"),
    ({"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 64,
      "vocab": 100}, {"tensor": 4, "pipeline": 3}, "divide"),
    ({"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "seq_len": 64,
      "vocab": 100}, {"tensor": 4, "pipeline": 4, "data": 1}, "needs 16 devices"),
])
def test_infeasible_tensor_plans_are_scenario_errors(model, parallelism, message):
    scenario = _transformer(2, parallelism)
    scenario["model"] = model
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario)
    assert message in err.value.message
    assert err.value.field.startswith("parallelism.")


@settings(max_examples=6, deadline=None)
@given(shape=st.sampled_from([(2, 4, 2), (4, 2, 2), (1, 8, 2), (2, 2, 4)]),
       schedule=st.sampled_from(["1f1b", "interleaved"]),
       placement=st.sampled_from(["pack", "spread"]),
       algorithm=st.sampled_from(["ring", "hierarchical"]))
def test_symmetry_is_exact_across_3d_plans(shape, schedule, placement, algorithm):
    """Simulating one tensor rank of one replica per stage, with every peer's traffic on the
    network, gives what simulating all 16 ranks gives, packed or spread."""
    d, t, p = shape
    scenario = _transformer(8, {"data": d, "tensor": t, "pipeline": p, "schedule": schedule,
                                "virtual_stages": 2 if schedule == "interleaved" else 1},
                            {"preset": "dgx-a100", "nodes": 2}, batch=8 * B,
                            placement=placement, communication={"data_parallel": algorithm})
    sym = dlsim.simulate(scenario)
    full = dlsim.simulate({**scenario, "simulation": {"fidelity": "full"}})
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=1e-12)
    assert full.comm_bytes_total == pytest.approx(sym.comm_bytes_total, rel=1e-12)
