"""Context parallelism: ring traffic, the ring hidden and exposed against hand computations,
the ring's ranks on the grid, symmetry against full fidelity, memory and the rules."""

from __future__ import annotations

from dataclasses import replace

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.builder import TrainingJob, _RankProgram
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import memory_per_device
from dlsim.parallel.pipeline import Piece
from dlsim.parallel.segments import Segment
from dlsim.parallel.tensor import ATTENTION_CORE
from dlsim.workload.costmodel import kernel_time_s, optimizer_time_s
from dlsim.workload.presets import build_model

H, HEADS, S, LAYERS, VOCAB = 1024, 16, 4096, 2, 32000
TINY = {"kind": "transformer", "layers": LAYERS, "hidden": H, "heads": HEADS, "seq_len": S,
        "vocab": VOCAB}


def textbook(c: int, bandwidth_GBps: float, latency_us: float = 2.0, **parallelism) -> dict:
    """c devices, each pair on its own link (one ring step is one link each way)."""
    return {"name": "cp", "model": TINY,
            "cluster": {"topology": "fully-connected", "devices": c,
                        "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": bandwidth_GBps, "latency_us": latency_us}},
            "precision": "bf16", "training": {"global_batch": 1, "optimizer": "adam"},
            "parallelism": {"data": 1, "tensor": 1, "pipeline": 1, "context": c,
                            **parallelism}}


def hand_step_s(c: int, bandwidth_Bps: float, latency_s: float) -> tuple[float, float]:
    """(step time, exposed ring time) of ``textbook``'s run, from kernels and links alone.

    Per rank every kernel is 1/c of the whole sequence's; each attention layer's core runs
    in c steps of core/c, step i+1 waiting for block i to arrive, so a layer's ring exposes
    (c-1)·max(0, send - core/c) per pass: forward sends a K/V block of KV/c, backward twice
    that (K/V and dK/dV), KV = 2·b·s·h·2 bytes. Then the gradients are all-reduced in a ring
    over the c context ranks (2(c-1)/c·G/B + 2(c-1)·α) and Adam steps."""
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(**TINY), 1, 2)
    shrink = [replace(k, flops=k.flops / c, bytes=k.bytes / c)
              for layer in model.layers for k in (*layer.forward, *layer.backward)]
    compute = sum(kernel_time_s(k, device, "bf16") for k in shrink)
    block = model.layers[1]
    core_f = sum(kernel_time_s(replace(k, flops=k.flops / c, bytes=k.bytes / c), device,
                               "bf16") for k in block.forward if k.name in ATTENTION_CORE)
    core_b = sum(kernel_time_s(replace(k, flops=k.flops / c, bytes=k.bytes / c), device,
                               "bf16") for k in block.backward if k.name in ATTENTION_CORE)
    kv = 2 * S * H * 2
    send_f = latency_s + kv / c / bandwidth_Bps
    send_b = latency_s + 2 * kv / c / bandwidth_Bps
    exposed = LAYERS * (c - 1) * (max(0.0, send_f - core_f / c) + max(0.0, send_b - core_b / c))
    grads = model.parameters * 2
    allreduce = 2 * (c - 1) / c * grads / bandwidth_Bps + 2 * (c - 1) * latency_s
    step = compute + exposed + allreduce + optimizer_time_s(model.parameters, "adam", device)
    return step, exposed


@pytest.mark.parametrize("bandwidth_GBps", [100.0, 1.0])
def test_ring_hidden_and_exposed_match_hand_computation(bandwidth_GBps):
    """At 100 GB/s a block arrives before the attention of the block in hand is done (the
    ring is hidden); at 1 GB/s it is not, and the step grows by the exposed sends."""
    c = 2
    result = dlsim.simulate(textbook(c, bandwidth_GBps))
    step, exposed = hand_step_s(c, bandwidth_GBps * 1e9, 2e-6)
    ring = result.summary["communication_by_axis"]["context"]
    assert result.step_time_s == pytest.approx(step, rel=1e-12)
    assert ring["exposed_s"] == pytest.approx(exposed, rel=1e-9, abs=1e-15)
    if bandwidth_GBps == 100.0:
        assert exposed == 0.0
    else:
        assert exposed > 0.04  # 2 layers x (8.4 + 16.8) ms of sends, minus the attention


def test_ring_exposure_for_four_ranks_matches_hand_computation():
    step, exposed = hand_step_s(4, 2e9, 2e-6)
    result = dlsim.simulate(textbook(4, 2.0))
    assert result.step_time_s == pytest.approx(step, rel=1e-12)
    assert result.summary["communication_by_axis"]["context"]["exposed_s"] == pytest.approx(
        exposed, rel=1e-9)


def ring_scenario(fidelity: str, recompute: str = "none", **parallelism) -> dict:
    return {"name": "cp", "model": {"preset": "gpt2-124m"},
            "cluster": {"preset": "dgx-a100", "nodes": 2}, "precision": "bf16",
            "training": {"global_batch": 8, "microbatch": 1, "optimizer": "adam"},
            "parallelism": {"recompute": recompute, **parallelism},
            "simulation": {"fidelity": fidelity}}


@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_ring_bytes_are_the_closed_form(recompute):
    """Per rank, attention layer and micro-batch the ring sends (c-1)/c·KV in forward and
    2·(c-1)/c·KV in backward, KV = 2·b·s·h·dtype/t the layer's keys and values on one tensor
    rank; recomputation re-runs the forward ring (selective: the core, full: the layer)."""
    d, c, t, p = 2, 4, 2, 1
    result = dlsim.simulate(ring_scenario("symmetric", recompute, data=d, tensor=t,
                                          pipeline=p, context=c))
    b, s, h, layers = 1, 1024, 768, 12
    kv = 2 * b * s * h * 2 / t
    forward, backward = (c - 1) / c * kv, 2 * (c - 1) / c * kv
    rings = forward + backward + (forward if recompute != "none" else 0.0)
    micro = 8 // d
    expected = rings * layers * micro * (d * c * t * p)
    got = result.summary["communication_by_axis"]["context"]["bytes"]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("parallelism", [
    {"data": 2, "tensor": 2, "pipeline": 1, "context": 2},
    {"data": 1, "tensor": 2, "pipeline": 2, "context": 4},
    {"data": 2, "tensor": 1, "pipeline": 2, "context": 2, "schedule": "gpipe"},
    {"data": 2, "tensor": 2, "pipeline": 1, "context": 2, "zero_stage": 1},
])
def test_symmetric_run_equals_full_fidelity(parallelism):
    full = dlsim.simulate(ring_scenario("full", **parallelism))
    sym = dlsim.simulate(ring_scenario("symmetric", **parallelism))
    assert sym.step_time_s == pytest.approx(full.step_time_s, rel=1e-12)
    assert sym.comm_bytes_total == pytest.approx(full.comm_bytes_total, rel=1e-12)
    axes = full.summary["communication_by_axis"]
    assert sym.summary["communication_by_axis"].keys() == axes.keys()
    for axis, row in axes.items():
        assert sym.summary["communication_by_axis"][axis] == pytest.approx(row, rel=1e-12)
    assert sym.summary["parallelism"]["context"] == parallelism["context"]


def test_ring_sends_go_to_the_next_context_rank_and_gradients_span_data_x_context():
    """Megatron-Core order tp-cp-dp-pp: rank ((stage·d + replica)·c + ci)·t + k; the ring of
    (stage 1, replica 1, tensor rank 1) on Grid(d=2, t=2, p=2, c=3) is ranks 19, 21, 23."""
    grid = Grid(2, 2, 2, context=3)
    ring = tuple(((1 * 2 + 1) * 3 + ci) * 2 + 1 for ci in range(3))
    assert ring == (19, 21, 23) == grid.context_group(1, 1, 1)
    job_piece = Piece([0], 1.0, 2.0, (), (), 10, 0.0, 0.0, ("block0",), ((1.0, 2.0),), (10,),
                      (((Segment("ring", 1.0, 8.0),), (Segment("ring", 2.0, 16.0),)),))
    job = TrainingJob(grid, 1, 1, "1f1b", "adam", "ring", 1, 1)
    program = _RankProgram(job, [job_piece, job_piece], hardware.device("a100-sxm4-80gb"),
                           "bf16", 1, 1, 1, False, 2)
    assert program.ring_groups == (19, 21, 23, 21, 23, 19)  # senders, then who receives
    dense = tuple(((1 * 2 + r) * 3 + ci) * 2 + 1 for r in range(2) for ci in range(3))
    assert program.data_groups == dense == grid.data_group(1, 1, c=None)
    ops = program.build()
    sends = [op for op in ops if getattr(op, "role", "") == "context"]
    assert [op.size_bytes for op in sends] == [8.0, 8.0, 16.0, 16.0]  # c - 1 per pass
    assert all(op.group == program.ring_groups for op in sends)


def test_activations_per_rank_are_divided_by_context():
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    one = memory_per_device(model, "bf16", "adam", data=2, tensor=2)
    four = memory_per_device(model, "bf16", "adam", data=2, tensor=2, context=4)
    assert four.activations == pytest.approx(one.activations / 4, rel=1e-15)
    assert (four.params, four.grads, four.optimizer) == (one.params, one.grads, one.optimizer)
    # ZeRO-1 partitions the optimizer state over data x context = 8 ranks
    zero = memory_per_device(model, "bf16", "adam", data=2, tensor=2, context=4, zero_stage=1)
    assert zero.optimizer == pytest.approx(model.parameters / 2 * 12 / 8, rel=1e-15)


@pytest.mark.parametrize(("model", "context", "message"), [
    ({"preset": "gpt2-124m"}, 3, "must divide the sequence length (1024)"),
    ({"kind": "transformer", "layers": 2, "hidden": 256, "heads": 4, "seq_len": 1000,
      "vocab": 1000}, 8, "2 x 8 = 16 chunks"),
    ({"kind": "mlp", "widths": [64, 64, 10]}, 2, "not a transformer"),
])
def test_bad_context_degrees_name_the_field(model, context, message):
    data = ring_scenario("auto", data=1, context=context)
    data["model"] = model
    data["cluster"] = {"preset": "dgx-a100", "nodes": 1}
    data["training"]["global_batch"] = 1
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(data)
    assert err.value.field == "parallelism.context"
    assert message in str(err.value)


def test_devices_are_data_x_context_x_tensor_x_pipeline():
    """16 devices with tensor 2, context 4: data defaults to the 2 left over."""
    result = dlsim.simulate(ring_scenario("symmetric", tensor=2, context=4))
    assert result.summary["parallelism"]["data"] == 2
    assert result.summary["devices"] == 16


def test_zero_partitions_over_data_x_context():
    """ZeRO-1 with d = 2, c = 2: the gradients are reduce-scattered and the parameters
    all-gathered over the 4 ranks of data x context, each a ring moving (N-1)/N of G."""
    result = dlsim.simulate(ring_scenario("symmetric", data=2, tensor=1, pipeline=1,
                                          context=2, zero_stage=1))
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    n, grads = 4, model.parameters * 2
    expected = 2 * (n - 1) / n * grads * n  # reduce-scatter + all-gather, every rank
    got = result.summary["communication_by_axis"]["data"]["bytes"]
    assert got == pytest.approx(expected, rel=1e-12)




@pytest.mark.parametrize("name", ["qwen3-235b-a22b", "gpt-oss-120b", "llama-3-70b"])
def test_ring_carries_keys_and_values_of_the_head_width(name):
    """K/V per token is 2·kv_heads·head_dim, with head_dim as the config gives it: Qwen3-235B
    has 64 heads of 128 on a hidden size of 4,096 (not 4,096/64 = 64), gpt-oss 64 of 64 on
    2,880 (not 45); Llama 3 70B's 128 is hidden/heads."""
    from dlsim.parallel.context import kv_bytes, kv_width
    from dlsim.workload.shapes import TRANSFORMER_SHAPES
    shape = TRANSFORMER_SHAPES[name]
    head_dim = {"qwen3-235b-a22b": 128, "gpt-oss-120b": 64, "llama-3-70b": 128}[name]
    kv_heads = {"qwen3-235b-a22b": 4, "gpt-oss-120b": 8, "llama-3-70b": 8}[name]
    assert kv_width(shape) == 2 * kv_heads * head_dim
    assert kv_bytes(shape, 2, 2, 4) == 2 * shape.seq_len * 2 * kv_heads * head_dim * 2 / 4


# -- context_comm: a2a (DeepSpeed-Ulysses; Transformer Engine's cp_comm_type a2a) ----------

@pytest.mark.parametrize("recompute", ["none", "selective", "full"])
def test_a2a_bytes_are_the_closed_form(recompute):
    """Per rank, attention layer and micro-batch each all-to-all sends (c-1)/c of its buffer:
    forward Q, K, V (b·(s/c)·3h·dtype/t for GPT-2's 12 heads of 64) and the output
    (b·(s/c)·h·dtype/t), backward their gradients; full recomputation re-runs the forward's
    pair, selective none (the head-split Q, K and V are saved)."""
    d, c, t = 4, 2, 2
    result = dlsim.simulate(ring_scenario("symmetric", recompute, data=d, tensor=t,
                                          context=c, context_comm="a2a"))
    b, s, h, layers = 1, 1024, 768, 12
    qkv, out = 3 * b * s / c * h * 2 / t, b * s / c * h * 2 / t
    passes = 3 if recompute == "full" else 2
    expected = (c - 1) / c * (qkv + out) * passes * layers * (8 // d) * (d * c * t)
    got = result.summary["communication_by_axis"]["context"]["bytes"]
    assert got == pytest.approx(expected, rel=1e-12)
    assert result.summary["parallelism"]["context_comm"] == "a2a"


def test_a2a_step_matches_hand_computation():
    """Two ranks on their own link: each all-to-all is one message of half the buffer each
    way, α + B/(2·bw), and blocks the core; four per attention layer (Q/K/V and output
    forward, their gradients backward), nothing overlaps them."""
    c, bandwidth, latency = 2, 1e9, 2e-6
    result = dlsim.simulate(textbook(c, bandwidth / 1e9, latency * 1e6, context_comm="a2a"))
    ring_step, ring_exposed = hand_step_s(c, bandwidth, latency)
    qkv, out = 3 * S / c * H * 2, S / c * H * 2
    swaps = LAYERS * 2 * ((latency + qkv / c / bandwidth) + (latency + out / c / bandwidth))
    assert result.step_time_s == pytest.approx(ring_step - ring_exposed + swaps, rel=1e-12)
    assert result.summary["communication_by_axis"]["context"]["exposed_s"] == pytest.approx(
        swaps, rel=1e-9)


@pytest.mark.parametrize("parallelism", [
    {"data": 2, "tensor": 2, "pipeline": 1, "context": 2},
    {"data": 1, "tensor": 1, "pipeline": 2, "context": 4, "recompute": "full"},
])
def test_a2a_symmetric_run_equals_full_fidelity(parallelism):
    recompute = parallelism.pop("recompute", "none")
    full = dlsim.simulate(ring_scenario("full", recompute, context_comm="a2a", **parallelism))
    sym = dlsim.simulate(ring_scenario("symmetric", recompute, context_comm="a2a",
                                       **parallelism))
    assert sym.step_time_s == pytest.approx(full.step_time_s, rel=1e-12)
    assert sym.comm_bytes_total == pytest.approx(full.comm_bytes_total, rel=1e-12)


def test_windowed_attention_and_sinks_need_the_a2a_exchange():
    """gpt-oss (128-token bands on every other block, sinks on all): ring attention is
    refused naming the field; a2a runs, its bytes the closed form of 64 query heads and 8
    key-value heads of 64 on every one of the 36 blocks."""
    c, s = 8, 4096
    data = {"name": "oss", "model": {"preset": "gpt-oss-120b", "seq_len": s},
            "cluster": {"preset": "dgx-h100", "nodes": 1}, "precision": "bf16",
            "training": {"global_batch": 1, "optimizer": "adam"},
            "parallelism": {"data": 1, "expert": 8, "context": c}}
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(data)
    assert err.value.field == "parallelism.context_comm"
    assert "a sliding window and attention sinks" in str(err.value)
    data["parallelism"]["context_comm"] = "a2a"
    result = dlsim.simulate(data)
    qkv, out = s / c * (64 * 64 + 2 * 8 * 64) * 2, s / c * 64 * 64 * 2
    expected = (c - 1) / c * (qkv + out) * 2 * 36 * c
    got = result.summary["communication_by_axis"]["context"]["bytes"]
    assert got == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize(("tensor", "context", "ok"), [(1, 4, True), (2, 2, True),
                                                      (2, 4, False), (1, 8, False)])
def test_a2a_needs_context_to_divide_each_tensor_rank_s_heads(tensor, context, ok):
    """GPT-2 124M has 12 heads: 12/t heads per tensor rank must split c ways."""
    from dlsim.parallel.feasibility import check_context_degree
    from dlsim.workload.shapes import TRANSFORMER_SHAPES

    shape = TRANSFORMER_SHAPES["gpt2-124m"]
    if ok:
        check_context_degree(shape, context, "a2a", tensor)
        return
    with pytest.raises(ScenarioError) as err:
        check_context_degree(shape, context, "a2a", tensor)
    assert err.value.field == "parallelism.context_comm"
