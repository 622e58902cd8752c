"""Expert parallelism: all-to-all and gradient bytes, the busiest rank's expert FLOPs, the
expert groups on the grid, symmetry against full fidelity, the topology's say, memory and
the rules, on a small MoE transformer written as a user writes one (``moe_fixture``)."""

from __future__ import annotations

import pytest
from moe_fixture import moe_model, moe_spec

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.builder import TrainingJob, _RankProgram
from dlsim.parallel.context import context_shard
from dlsim.parallel.expert import ExpertLayout, reprice_experts
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import memory_per_device
from dlsim.parallel.pipeline import pieces
from dlsim.parallel.tensor import shard_model, tensor_collectives
from dlsim.workload.presets import build_model

E, TOP_K, FFN = 8, 2, 3072  # routed SwiGLU experts on GPT-2 124M-sized blocks
B, S, H, LAYERS = 1, 1024, 768, 12
EXPERT = 3 * H * FFN  # gate, up and down


def scenario(fidelity: str = "symmetric", nodes: int = 2, batch: int = 32,
             placement: str = "pack", moe: dict | None = None, **parallelism) -> dict:
    model = moe_spec(LAYERS, H, 12, S, 50257, E, TOP_K, FFN, **(moe or {}))
    return {"name": "ep", "model": model,
            "cluster": {"preset": "dgx-a100", "nodes": nodes}, "precision": "bf16",
            "training": {"global_batch": batch, "microbatch": 1, "optimizer": "adam"},
            "parallelism": parallelism, "placement": placement,
            "simulation": {"fidelity": fidelity}}


@pytest.mark.parametrize(("imbalance", "capacity", "factor"),
                         [(1.0, None, 1.0), (1.25, None, 1.25), (1.25, 1.1, 1.1)])
def test_alltoall_and_gradient_bytes_are_the_closed_form(imbalance, capacity, factor):
    """Per rank, MoE layer, micro-batch and direction the dispatch sends (e-1)/e of
    top_k·b·s/(c·t)·h·dtype, times the busiest rank's load (router_imbalance, capped by
    the capacity factor); four all-to-alls (dispatch and combine, forward and backward).
    Before each forward dispatch the token counts are exchanged: E int64 counts from each
    of the e ranks, (e-1)·E·8 bytes sent per rank (Megatron-Core's all-gather of
    tokens_per_expert). Expert gradients go over the expert-data group (d·c·t/(e·et) = 2
    ranks: a ring moves 2(N-1)/N·G = G per rank), dense gradients over data x context (4
    ranks)."""
    d, t, p, e = 4, 2, 2, 4
    result = dlsim.simulate(scenario(data=d, tensor=t, pipeline=p, expert=e, moe={
        "router_imbalance": imbalance, "capacity_factor": capacity}))
    ranks, micro, per_stage = d * t * p, 32 // d, LAYERS // p
    a2a = (e - 1) / e * TOP_K * B * S / t * H * 2 * factor
    counts = (e - 1) * E * 8
    routed_per_rank = E * EXPERT / e  # per layer
    expert_data = d * t // e
    expert_sync = 2 * (expert_data - 1) / expert_data * routed_per_rank * per_stage * 2
    expected = ranks * ((4 * a2a + counts) * per_stage * micro + expert_sync)
    axes = result.summary["communication_by_axis"]
    assert axes["expert"]["bytes"] == pytest.approx(expected, rel=1e-12)
    # dense gradients: each stage's attention, router, embedding or head, 1/t per rank
    model = moe_model(LAYERS, H, 12, S, 50257, 1, E, TOP_K, FFN)
    dense = [(layer.params - (E * EXPERT if layer.moe else 0)) / t
             for layer in model.layers]
    stages = [dense[:1 + per_stage], dense[1 + per_stage:]]
    data_bytes = sum(2 * (d - 1) / d * sum(stage) * 2 * (d * t) for stage in stages)
    assert axes["data"]["bytes"] == pytest.approx(data_bytes, rel=1e-12)


def test_expert_tensor_gathers_and_scatters_are_the_closed_form():
    """With expert_tensor et = 2 each expert is split over 2 ranks: after the dispatch the
    copies received are all-gathered over those ranks and the experts' outputs reduce-
    scattered before the combine (forward and backward: four per MoE layer and
    micro-batch), each a ring over et ranks of et·top_k·b·s/t·h·dtype·load (the gathered
    buffer), of which a rank sends (et-1)/et; the all-to-alls send (e-1)/e of
    top_k·b·s/t·h·dtype·load; the token counts go first over the e ranks ((e-1)·E·8 bytes
    sent) and then all-gathered over the et ranks (a ring of et·e·E·8, (et-1)/et of it
    sent), once per forward dispatch; the experts' gradients sync over d·t/(e·et) = 2
    ranks."""
    d, t, p, e, et, factor = 4, 2, 2, 2, 2, 1.25
    result = dlsim.simulate(scenario(data=d, tensor=t, pipeline=p, expert=e, expert_tensor=et,
                                     moe={"router_imbalance": factor}))
    ranks, micro, per_stage = d * t * p, 32 // d, LAYERS // p
    copies = TOP_K * B * S / t * H * 2 * factor  # one rank's dispatch buffer
    a2a = (e - 1) / e * copies
    etp = (et - 1) / et * et * copies
    counts = (e - 1) * E * 8 + (et - 1) / et * et * e * E * 8
    routed_per_rank = E * EXPERT / (e * et)
    expert_data = d * t // (e * et)
    expert_sync = 2 * (expert_data - 1) / expert_data * routed_per_rank * per_stage * 2
    expected = ranks * ((4 * (a2a + etp) + counts) * per_stage * micro + expert_sync)
    axes = result.summary["communication_by_axis"]
    assert axes["expert"]["bytes"] == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("shared", [0, 1])
def test_moe_block_gathers_over_the_tensor_group_only_for_attention_and_shared_experts(shared):
    """Under sequence parallelism a MoE block all-gathers and reduce-scatters b·s·h for its
    attention, and for its MLP only when a shared expert (split like the dense MLP) needs
    the whole sequence: the routed experts take the sequence shards' tokens by all-to-all."""
    spec = moe_spec(2, H, 12, S, 1000, E, TOP_K, FFN)
    spec["moe"]["shared_experts"] = shared
    model = build_model(ModelSpec.model_validate(spec), B, 2)
    block = next(layer for layer in model.layers if layer.moe is not None)
    n = 1 + shared
    both = (("allgather", n), ("reducescatter", n))
    assert tensor_collectives(block, sequence_parallel=True) == (both, both)
    assert tensor_collectives(block) == ((("allreduce", n),), (("allreduce", n),))


@pytest.mark.parametrize(("c", "t", "e", "imbalance", "capacity"),
                         [(1, 1, 4, 1.3, None), (2, 2, 8, 1.3, 1.2), (1, 2, 1, 1.3, None)])
def test_busiest_rank_runs_its_share_of_routed_flops(c, t, e, imbalance, capacity):
    """Token conservation: the routed FLOPs of one micro-batch of the whole sequence
    (2·b·s·top_k·h·2f for the gate and up projections) / (c·t), times min(imbalance, capacity) where
    e > 1 (with every expert on every rank routing cannot unbalance the ranks)."""
    model = moe_model(2, H, 12, S, 1000, B, E, TOP_K, FFN, router_imbalance=imbalance,
                      capacity_factor=capacity)
    shard = reprice_experts(shard_model(context_shard(model, c), t), ExpertLayout(e, 1, t))
    up = next(k for k in shard.layers[1].forward if k.name == "expert_up")  # gate and up
    factor = min(imbalance, capacity or float("inf")) if e > 1 else 1.0
    assert up.flops == pytest.approx(2 * B * S * TOP_K * H * 2 * FFN / (c * t) * factor,
                                     rel=1e-15)
    router = next(k for k in shard.layers[1].forward if k.name == "router")
    assert router.flops == pytest.approx(2 * B * S * H * E / c, rel=1e-15)  # not split by t


def test_alltoall_groups_are_the_folded_expert_groups():
    """Grid(d=2, t=2, c=2, e=4): a stage's 8 ranks re-read as expert-data x expert; rank 5
    (replica 1, context 0, tensor 1) exchanges tokens with 4..7 and syncs its experts'
    gradients with rank 1 (the same expert rank of the other expert-data replica)."""
    model = moe_model(2, H, 12, S, 1000, B, E, TOP_K, FFN)
    grid = Grid(2, 2, 1, context=2, expert=4)
    assert grid.rank(0, 1, 1, 0) == 5
    layout = ExpertLayout(4, 1, 2)
    per_rank = context_shard(model, 2)
    cut = pieces(per_rank, reprice_experts(shard_model(per_rank, 2), layout),
                 hardware.device("a100-sxm4-80gb"), "bf16", 1, "none", experts=layout)
    job = TrainingJob(grid, 1, 1, "1f1b", "adam", "ring", 1, 1)
    program = _RankProgram(job, cut, hardware.device("a100-sxm4-80gb"), "bf16", 0, 1, 1,
                           False, 0)
    ops = program.build()
    a2a = [op for op in ops if getattr(op, "op", "") == "alltoall"]
    # two MoE layers x (dispatch, combine) x (forward, backward), and a token-count exchange
    # before each forward dispatch
    assert len(a2a) == 2 * 4 + 2
    assert sum(op.name.startswith("alltoall counts fwd") for op in a2a) == 2
    assert {op.group for op in a2a} == {(4, 5, 6, 7)} == {grid.expert_group(0, 1, 0)}
    syncs = [op for op in ops if getattr(op, "role", "") == "expert" and op.op == "allreduce"]
    assert [op.group for op in syncs] == [(1, 5)] == [grid.expert_data_group(0, 1, 0)]
    assert syncs[0].size_bytes == pytest.approx(2 * E * EXPERT / 4 * 2, rel=1e-15)


@pytest.mark.parametrize("parallelism", [
    {"data": 4, "tensor": 2, "pipeline": 2, "expert": 4},
    {"data": 2, "tensor": 2, "pipeline": 1, "context": 2, "expert": 8},
    {"data": 4, "tensor": 2, "pipeline": 1, "expert": 2, "expert_tensor": 2},
])
def test_symmetric_run_equals_full_fidelity(parallelism):
    nodes = 2 if parallelism["pipeline"] == 2 else 1
    moe = {"router_imbalance": 1.2}
    full = dlsim.simulate(scenario("full", nodes, batch=8, moe=moe, **parallelism))
    sym = dlsim.simulate(scenario("symmetric", nodes, batch=8, moe=moe, **parallelism))
    assert sym.step_time_s == pytest.approx(full.step_time_s, rel=1e-12)
    assert sym.comm_bytes_total == pytest.approx(full.comm_bytes_total, rel=1e-12)
    for axis, row in full.summary["communication_by_axis"].items():
        assert sym.summary["communication_by_axis"][axis] == pytest.approx(row, rel=1e-12)


def test_alltoall_inside_the_nvlink_domain_is_fast_and_across_nodes_is_not():
    """8 ranks, e = 8 (no expert-data replicas, so the expert axis is the all-to-alls) on
    two DGX A100: packed, the expert group is one node (NVLink, 300 GB/s per GPU); spread,
    its ranks alternate nodes and half of each rank's dispatch crosses InfiniBand (25 GB/s
    per GPU, 14 us a message): 0.5/25 against 7/8/300 of the buffer per byte, about 7x on
    bandwidth alone; with the latencies of 3 MB all-to-alls, and the token-count exchanges
    before each dispatch (latency-bound on both placements), the engine gives 3.17x."""
    packed = dlsim.simulate(scenario(data=8, expert=8, batch=8))
    spread = dlsim.simulate(scenario(data=8, expert=8, batch=8, placement="spread"))
    a2a = {name: r.summary["communication_by_axis"]["expert"]["time_s"]
           for name, r in (("packed", packed), ("spread", spread))}
    assert a2a["spread"] / a2a["packed"] == pytest.approx(3.17, abs=0.01)
    assert spread.step_time_s > packed.step_time_s


def test_memory_per_rank_with_expert_and_context_degrees():
    """Routed experts experts/(e·et) per rank with their gradients and Adam state (ZeRO-1:
    over the d·c·t/(e·et) expert-data ranks), the rest 1/t (ZeRO-1: over d·c), activations
    1/c."""
    model = moe_model(4, H, 12, S, 1000, B, E, TOP_K, FFN)
    d, c, t, e, et = 2, 2, 2, 4, 2
    plan = memory_per_device(model, "bf16", "adam", data=d, tensor=t, context=c, expert=e,
                             expert_tensor=et, zero_stage=1)
    routed = sum(E * EXPERT for layer in model.layers if layer.moe)
    dense = (model.parameters - routed) / t
    experts = routed / (e * et)
    expert_data = d * c * t // (e * et)
    assert plan.params == pytest.approx((dense + experts) * 2, rel=1e-15)
    assert plan.grads == pytest.approx((dense + experts) * 2, rel=1e-15)
    assert plan.optimizer == pytest.approx(12 * (dense / (d * c) + experts / expert_data),
                                           rel=1e-15)
    whole = memory_per_device(model, "bf16", "adam", data=d, tensor=t)
    assert plan.activations == pytest.approx(whole.activations / c, rel=1e-15)


@pytest.mark.parametrize(("parallelism", "field", "message"), [
    ({"data": 8, "expert": 3}, "parallelism.expert", "must divide the model's 8 routed"),
    ({"data": 4, "tensor": 2, "expert": 8, "expert_tensor": 2},
     "parallelism.expert", "= 16 must divide a pipeline stage's"),
    ({"data": 8, "expert": 2, "expert_tensor": 5}, "parallelism.expert_tensor",
     "must divide the experts' hidden size (3072)"),
])
def test_bad_expert_degrees_name_the_field(parallelism, field, message):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario(nodes=1, batch=8, **parallelism))
    assert err.value.field == field
    assert message in str(err.value)


def test_expert_parallelism_on_a_dense_model_is_refused():
    dense = scenario(nodes=1, batch=8, data=8, expert=2) | {"model": {"preset": "gpt2-124m"}}
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(dense)
    assert err.value.field == "parallelism.expert"
    assert "has none" in str(err.value)


def test_the_host_stall_is_forward_only():
    """The repriced MoE block has the token-drop host copies in its forward and none in its
    backward (the backward's all-to-alls reuse the host splits)."""
    model = moe_model(2, H, 12, S, 1000, B, E, TOP_K, FFN, capacity_factor=1.0)
    shard = reprice_experts(shard_model(model, 2), ExpertLayout(4, 1, 2))
    block = shard.layers[1]
    assert [k.name for k in block.forward].count("moe_d2h") == 5
    assert not {"moe_d2h", "moe_sync"} & {k.name for k in block.backward}
