"""ZeRO-3 / FSDP composed with context and expert parallelism, against closed forms computed
here.

Dense weights are the same on every rank of a stage's data x context group, so FSDP shards
and gathers them over that group; routed experts are the same on the ranks of an expert-data
group, so their state is sharded, gathered and reduce-scattered there (Megatron-Core's expert
distributed optimizer). A ring all-gather or reduce-scatter of S bytes over n ranks injects
(n - 1)·S, an all-reduce 2(n - 1)·S; the simulator reaches these to ~1e-15.
"""

from __future__ import annotations

import pytest
from moe_fixture import moe_model, moe_spec

import dlsim
from dlsim.hardware import profiles as hardware
from dlsim.parallel.memory import memory_per_device

E, TOP_K, FFN, LAYERS, H, S, VOCAB = 4, 2, 2048, 2, 512, 512, 1000
EXPERT = 3 * H * FFN  # gate, up and down of one SwiGLU expert


def _dense(par: dict, n: int) -> dict:
    return {"name": "fsdp-cp", "model": {"kind": "transformer", "layers": 4, "hidden": 1024,
                                         "heads": 16, "seq_len": 512, "vocab": 32000},
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 25, "latency_us": 5}},
            "training": {"global_batch": par.get("data", 1), "microbatch": 1, "steps": 1},
            "parallelism": par}


def _moe(par: dict, n: int) -> dict:
    return {"name": "fsdp-ep", "model": moe_spec(LAYERS, H, 8, S, VOCAB, E, TOP_K, FFN),
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 25, "latency_us": 5}},
            "training": {"global_batch": par["data"], "microbatch": 1, "steps": 1},
            "parallelism": par}


def _axes(r) -> dict:
    return r.summary["communication_by_axis"]


@pytest.mark.parametrize(("d", "c"), [(2, 2), (1, 4), (4, 2)])
def test_fsdp_with_context_parallelism_shards_over_data_times_context(d, c):
    """One micro-batch: two all-gathers and one reduce-scatter of 2Ψ bytes over the d·c
    ranks that hold the same weights, 3·(d·c - 1)·2Ψ on the data axis."""
    r = dlsim.simulate(_dense({"data": d, "context": c, "zero_stage": 3}, d * c))
    assert _axes(r)["data"]["bytes"] == pytest.approx(3 * (d * c - 1) * 2 * r.parameters,
                                                      rel=1e-12)
    assert _axes(r)["context"]["bytes"] > 0
    zero1 = dlsim.simulate(_dense({"data": d, "context": c, "zero_stage": 1}, d * c))
    assert r.memory_breakdown_bytes["params"] == pytest.approx(
        zero1.memory_breakdown_bytes["params"] / (d * c), rel=1e-12)


@pytest.mark.parametrize(("d", "e"), [(4, 2), (4, 4), (8, 2)])
def test_fsdp_with_expert_parallelism_shards_experts_over_the_expert_data_group(d, e):
    """Dense weights (attention, router, embedding, head) go over the d data ranks:
    3·(d - 1)·2Ψ_dense. Each rank's E/e experts go over its expert-data group of d/e ranks,
    e groups: 3·(d/e - 1)·2·(E/e)·EXPERT·layers·e on the expert axis, beside the four
    all-to-alls per MoE layer of (e - 1)/e·top_k·s·h·2 bytes per rank and the token-count
    exchange before each forward dispatch, (e - 1)·E int64s per rank."""
    r = dlsim.simulate(_moe({"data": d, "expert": e, "zero_stage": 3}, d))
    model = moe_model(LAYERS, H, 8, S, VOCAB, 1, E, TOP_K, FFN)
    routed = E * EXPERT * LAYERS
    dense = model.parameters - routed
    ed = d // e
    assert _axes(r)["data"]["bytes"] == pytest.approx(3 * (d - 1) * 2 * dense, rel=1e-12)
    a2a = d * LAYERS * (4 * (e - 1) / e * TOP_K * S * H * 2 + (e - 1) * E * 8)
    state = 3 * (ed - 1) * 2 * routed / e * e
    assert _axes(r)["expert"]["bytes"] == pytest.approx(a2a + state, rel=1e-12)


def test_zero1_with_experts_updates_dense_state_over_data_and_experts_over_expert_data():
    """The distributed optimizer steps Ψ_dense/d + Ψ_experts/(d/e) parameters per rank: a
    memory-bound Adam pass of 28 bytes a parameter (costmodel.optimizer_time_s)."""
    d, e = 4, 2
    r = dlsim.simulate(_moe({"data": d, "expert": e, "zero_stage": 1}, d))
    model = moe_model(LAYERS, H, 8, S, VOCAB, 1, E, TOP_K, FFN)
    routed = E * EXPERT * LAYERS
    owned = (model.parameters - routed) / d + routed / e / (d // e)
    device = hardware.device("a100-sxm4-80gb")
    expected = (owned * 28 / (device.memory_bandwidth_Bps * device.efficiency.memory)
                + device.kernel_launch_s)
    spans = [sp for sp in r.spans if sp.role == "optimizer" and sp.device == 0]
    assert spans and spans[0].end_s - spans[0].start_s == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("build", "par", "n"), [
    (_dense, {"data": 2, "context": 2, "zero_stage": 3}, 4),
    (_dense, {"data": 2, "context": 2, "tensor": 2, "zero_stage": 3, "shard_group": 2}, 8),
    (_moe, {"data": 4, "expert": 2, "zero_stage": 3}, 4),
    (_moe, {"data": 4, "expert": 2, "zero_stage": 1, "overlap_param_gather": True}, 4),
])
def test_full_fidelity_equals_symmetry(build, par, n):
    scenario = build(par, n)
    sym = dlsim.simulate(scenario)
    full = dlsim.simulate({**scenario, "simulation": {"fidelity": "full"}})
    assert full.step_time_s == pytest.approx(sym.step_time_s, rel=1e-12)
    assert full.comm_bytes_total == pytest.approx(sym.comm_bytes_total, rel=1e-12)


def test_fsdp_keeps_two_gathered_layers_of_the_ranks_own_experts():
    """ZeRO-3's resident gathered layers hold the rank's share of the largest layer: its
    dense part and E/e of its experts, not every expert."""
    model = moe_model(LAYERS, H, 8, S, VOCAB, 1, E, TOP_K, FFN)
    plan = memory_per_device(model, "bf16", "adam", data=4, expert=2, zero_stage=3)
    largest = max((layer.params - (E * EXPERT if layer.moe else 0)) + (
        E * EXPERT / 2 if layer.moe else 0) for layer in model.layers)
    assert plan.gathered == pytest.approx(2 * largest * 2, rel=1e-12)
