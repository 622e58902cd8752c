"""Pipeline parallelism: the bubble emerges from the schedules' dependencies and must equal
the closed form (p-1)/(m+p-1) (GPipe, Huang et al. 2019; 1F1B, Narayanan et al. 2021)."""

from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.pipeline import partition, schedule
from dlsim.workload.costmodel import kernel_time_s, layer_times_s, optimizer_time_s
from dlsim.workload.presets import build_model

WIDTH, LAYERS, MICRO = 1024, 8, 16


def _scenario(p: int, m: int, kind: str, bandwidth: float = 1e200, data: int = 1) -> dict:
    return {"name": "pp", "model": {"kind": "mlp", "widths": [WIDTH] * (LAYERS + 1)},
            "cluster": {"topology": "switch", "devices": p * data, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": bandwidth, "latency_us": 0}},
            "training": {"global_batch": MICRO * m * data, "microbatch": MICRO,
                         "optimizer": "sgd"},
            "parallelism": {"data": data, "pipeline": p, "schedule": kind}}


@pytest.mark.parametrize("kind", ["gpipe", "1f1b"])
@pytest.mark.parametrize("p,m", [(2, 1), (2, 4), (4, 4), (4, 16), (8, 3), (8, 32)])
def test_bubble_matches_closed_form_with_free_communication(kind, p, m):
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=[WIDTH] * (LAYERS + 1)), MICRO, 2)
    fwd, bwd = layer_times_s(model.layers[0], device, "bf16")
    stage_f, stage_b = fwd * LAYERS / p, bwd * LAYERS / p
    ideal = m * (stage_f + stage_b)
    pipe = (m + p - 1) * (stage_f + stage_b)
    opt = optimizer_time_s(model.parameters / p, "sgd", device)
    r = dlsim.simulate(_scenario(p, m, kind))
    assert r.step_time_s == pytest.approx(pipe + opt, rel=1e-9)
    bubble = r.breakdown_s["bubble"]
    assert bubble == pytest.approx(pipe - ideal, rel=1e-6)
    assert bubble / pipe == pytest.approx((p - 1) / (m + p - 1), rel=1e-6)
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s, rel=1e-9)


def test_1f1b_holds_fewer_microbatches_than_gpipe():
    gpipe = dlsim.simulate(_scenario(4, 16, "gpipe"))
    one_f = dlsim.simulate(_scenario(4, 16, "1f1b"))
    act_g = gpipe.memory_breakdown_bytes["activations"]
    act_1 = one_f.memory_breakdown_bytes["activations"]
    assert act_g / act_1 == pytest.approx(16 / 4)  # m vs p micro-batches on stage 0


def test_schedules_run_every_pass_once():
    for kind, chunks in (("gpipe", 1), ("1f1b", 1), ("interleaved", 2), ("interleaved", 3)):
        for stage in range(4):
            order = schedule(kind, stage, 4, 8, chunks)
            passes = [(i, c) for i in range(8) for c in range(chunks)]
            assert sorted(order) == sorted([("F", *x) for x in passes]
                                           + [("B", *x) for x in passes])
            assert all(order.index(("F", *x)) < order.index(("B", *x)) for x in passes)


@settings(max_examples=15, deadline=None)
@given(p=st.integers(2, 6), groups=st.integers(1, 4), v=st.integers(2, 4))
def test_interleaved_order_follows_megatron(p, groups, v):
    """Forwards walk chunk 0..v-1 over groups of p micro-batches, backwards chunk v-1..0, and
    a stage runs 2(p-s-1) + (v-1)p warm-up forwards, and one more, before its first
    backward (Narayanan et al. SC'21 §2.2; Megatron-LM's interleaved schedule)."""
    m = p * groups
    for stage in (0, p - 1):
        order = schedule("interleaved", stage, p, m, v)
        forwards = [(i, c) for kind, i, c in order if kind == "F"]
        backwards = [(i, c) for kind, i, c in order if kind == "B"]
        expect = [(g * p + j, c) for g in range(groups) for c in range(v) for j in range(p)]
        assert forwards == expect
        assert backwards == [(i, v - 1 - c) for i, c in expect]
        first_backward = next(k for k, x in enumerate(order) if x[0] == "B")
        warm = m * v if m == p else min(2 * (p - stage - 1) + (v - 1) * p, m * v)
        assert first_backward == (warm + 1 if warm < m * v else m * v)


def test_partition_is_contiguous_and_balanced():
    assert partition([1.0] * 8, 4) == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert partition([5, 1, 1, 1, 1, 1], 2) == [[0], [1, 2, 3, 4, 5]]


def test_slow_links_add_to_the_pipeline_and_data_parallel_symmetry_holds():
    fast = dlsim.simulate(_scenario(4, 8, "1f1b", data=2))
    slow = dlsim.simulate(_scenario(4, 8, "1f1b", bandwidth=1.0, data=2))
    assert slow.step_time_s > fast.step_time_s
    full = dlsim.simulate({**_scenario(4, 8, "1f1b", bandwidth=1.0, data=2),
                           "simulation": {"fidelity": "full"}})
    assert full.step_time_s == slow.step_time_s
    assert full.comm_bytes_total == pytest.approx(slow.comm_bytes_total)


def _mlp(p: int, m: int, layers: int, parallelism: dict) -> dict:
    return {"name": "pp", "model": {"kind": "mlp", "widths": [WIDTH] * (layers + 1)},
            "cluster": {"topology": "switch", "devices": p, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 1e200, "latency_us": 0}},
            "training": {"global_batch": MICRO * m, "microbatch": MICRO, "optimizer": "sgd"},
            "parallelism": {"pipeline": p, **parallelism}}


@pytest.mark.parametrize("p,v,m", [(2, 2, 2), (2, 2, 4), (4, 2, 8), (4, 4, 8), (3, 2, 9),
                                   (8, 2, 16)])
def test_interleaved_bubble_is_one_vth_of_1f1b(p, v, m):
    """Narayanan et al. SC'21 §2.2.2: with v model chunks per device the bubble takes
    (1/v)(p-1)/m of the ideal time m(t_f + t_b)."""
    device = hardware.device("a100-sxm4-80gb")
    layers = p * v * 2
    model = build_model(ModelSpec(kind="mlp", widths=[WIDTH] * (layers + 1)), MICRO, 2)
    fwd, bwd = layer_times_s(model.layers[0], device, "bf16")
    ideal = m * (fwd + bwd) * layers / p
    opt = optimizer_time_s(model.parameters / p, "sgd", device)
    r = dlsim.simulate(_mlp(p, m, layers, {"schedule": "interleaved", "virtual_stages": v}))
    assert r.step_time_s - opt == pytest.approx(ideal * (1 + (p - 1) / (v * m)), rel=1e-9)
    assert r.breakdown_s["bubble"] == pytest.approx(ideal * (p - 1) / (v * m), rel=1e-6)
    assert r.parallelism["virtual_stages"] == v


@pytest.mark.parametrize("recompute", ["none", "full"])
def test_full_recompute_adds_one_forward_to_every_backward(recompute):
    device = hardware.device("a100-sxm4-80gb")
    p, m = 4, 8
    model = build_model(ModelSpec(kind="mlp", widths=[WIDTH] * (LAYERS + 1)), MICRO, 2)
    fwd, bwd = layer_times_s(model.layers[0], device, "bf16")
    if recompute == "full":
        bwd += fwd
    opt = optimizer_time_s(model.parameters / p, "sgd", device)
    r = dlsim.simulate(_mlp(p, m, LAYERS, {"recompute": recompute}))
    assert r.step_time_s == pytest.approx((m + p - 1) * (fwd + bwd) * LAYERS / p + opt,
                                          rel=1e-9)


def test_gradient_allreduce_of_a_stage_starts_after_its_last_backward():
    """Per-stage gradient all-reduces overlap the backward passes still running upstream."""
    r = dlsim.simulate(_scenario(4, 8, "1f1b", bandwidth=10.0, data=2))
    spans = pd.DataFrame(r.spans)
    for _, mine in spans.groupby("device"):
        last_backward = mine[mine.name.str.startswith("bwd")].end_s.max()
        sync = mine[mine.name.str.startswith("allreduce gradients")]
        assert len(sync) == 1 and sync.start_s.iloc[0] >= last_backward - 1e-12
    last_stage = spans[spans.name.str.startswith("allreduce gradients")].start_s.min()
    first_stage_done = spans[spans.device == 0]
    assert last_stage < first_stage_done[first_stage_done.name.str.startswith("bwd")].end_s.max()


def test_zero1_with_a_pipeline_moves_the_allreduce_volume_and_shrinks_optimizer_state():
    plain = dlsim.simulate(_scenario(2, 4, "1f1b", bandwidth=10.0, data=2))
    zero = dlsim.simulate({**_scenario(2, 4, "1f1b", bandwidth=10.0, data=2),
                           "parallelism": {"data": 2, "pipeline": 2, "zero_stage": 1}})
    # ring reduce-scatter + all-gather == ring all-reduce: 2(N-1)/N of the gradients per rank
    assert zero.comm_bytes_total == pytest.approx(plain.comm_bytes_total)
    assert zero.memory_breakdown_bytes["optimizer"] == pytest.approx(
        plain.memory_breakdown_bytes["optimizer"] / 2)


@pytest.mark.parametrize("parallelism,field", [
    ({"pipeline": 4, "schedule": "interleaved", "virtual_stages": 2}, "training.microbatch"),
    ({"pipeline": 2, "virtual_stages": 2}, None),
    ({"pipeline": 1, "schedule": "interleaved"}, None),
    ({"pipeline": 2, "zero_stage": 2}, None),
    ({"pipeline": 4, "schedule": "interleaved", "virtual_stages": 4}, "parallelism.pipeline"),
])
def test_infeasible_pipelines_are_scenario_errors(parallelism, field):
    scenario = _mlp(4, 6, 8, {})  # 6 micro-batches: not a multiple of 4
    scenario["parallelism"] = parallelism
    if parallelism.get("virtual_stages") == 4:
        scenario["training"]["global_batch"] = MICRO * 8
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario)
    if field:
        assert err.value.field == field


def _one_gpu_transformer(recompute: str = "none", offload: str = "none") -> dict:
    return {"name": "one", "model": {"kind": "transformer", "layers": 2, "hidden": 1024,
                                     "heads": 16, "seq_len": 1024, "vocab": 32000},
            "cluster": {"topology": "switch", "devices": 1, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 100, "latency_us": 1}},
            "training": {"global_batch": 8, "microbatch": 4},
            "parallelism": {"recompute": recompute, "offload": offload}}


def test_selective_recompute_reruns_the_attention_core_only():
    """Korthikanti et al. 2022 §4.2: QK^T, softmax and AV run again before backward."""
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="transformer", layers=2, hidden=1024, heads=16,
                                  seq_len=1024, vocab=32000), 4, 2)
    core = sum(kernel_time_s(k, device, "bf16") for layer in model.layers
               for k in layer.forward if k.name in ("attention", "softmax"))
    plain = dlsim.simulate(_one_gpu_transformer())
    selective = dlsim.simulate(_one_gpu_transformer("selective"))
    assert selective.step_time_s - plain.step_time_s == pytest.approx(2 * core, rel=1e-9)


def test_optimizer_offload_is_a_pcie_round_trip_and_a_host_update():
    """ZeRO-Offload (Ren et al. 2021): 16-bit gradients down and weights up over PCIe, Adam
    on the host's memory bandwidth instead of the device's."""
    device, host = hardware.device("a100-sxm4-80gb"), hardware.device("cpu-host")
    pcie = hardware.link(device.pcie)
    plain = dlsim.simulate(_one_gpu_transformer())
    offload = dlsim.simulate(_one_gpu_transformer(offload="optimizer"))
    params = plain.parameters
    expected = (2 * params / pcie.bandwidth_GBps / 1e9 * 2
                + params * 28 / (host.memory_bandwidth_Bps * host.efficiency.memory)
                + host.kernel_launch_s
                - params * 28 / (device.memory_bandwidth_Bps * device.efficiency.memory)
                - device.kernel_launch_s)
    assert offload.step_time_s - plain.step_time_s == pytest.approx(expected, rel=1e-9)
    assert offload.parallelism["offload"] == "optimizer"


def _unequal(widths: list[int], m: int, kind: str) -> dict:
    p = len(widths) - 1
    return {"name": "pp", "model": {"kind": "mlp", "widths": widths},
            "cluster": {"topology": "switch", "devices": p, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 1e200, "latency_us": 0}},
            "training": {"global_batch": MICRO * m, "microbatch": MICRO, "optimizer": "sgd"},
            "parallelism": {"pipeline": p, "schedule": kind}}


WIDTHS = st.lists(st.sampled_from([512, 1024, 2048, 4096]), min_size=3, max_size=6)


@settings(max_examples=20, deadline=None)
@given(widths=WIDTHS, m=st.integers(1, 8))
def test_gpipe_with_unequal_stages_is_two_flow_shops(widths, m):
    """One layer a stage, free links: the forwards are a flow shop of m equal jobs (the last
    forward ends at sum f + (m-1) max f), the backwards another one from the last stage
    down; stage s ends its last backward at E_s and then runs its optimizer."""
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=widths), MICRO, 2)
    f, b = zip(*(layer_times_s(layer, device, "bf16") for layer in model.layers))
    opt = [optimizer_time_s(layer.params, "sgd", device) for layer in model.layers]
    forwards = sum(f) + (m - 1) * max(f)
    ends = [forwards + sum(b[s:]) + (m - 1) * max(b[s:]) for s in range(len(f))]
    r = dlsim.simulate(_unequal(widths, m, "gpipe"))
    assert r.step_time_s == pytest.approx(max(e + o for e, o in zip(ends, opt)), rel=1e-9)
    for s, parts in enumerate(r.summary["breakdown_by_stage_s"]):
        assert parts["compute"] == pytest.approx(m * (f[s] + b[s]) + opt[s], rel=1e-9)
        assert sum(parts.values()) == pytest.approx(r.step_time_s, rel=1e-9)


@settings(max_examples=10, deadline=None)
@given(widths=WIDTHS, extra=st.integers(0, 4))
def test_each_further_micro_batch_costs_the_slowest_stage(widths, extra):
    """In 1F1B's steady state every stage waits for the slowest: once it is reached (by 3p
    micro-batches on these stages) one more micro-batch adds exactly that stage's forward
    and backward to the step, whichever stage ends last; before it, never more (stages
    within a fraction of a percent of each other take a few cycles to settle)."""
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=widths), MICRO, 2)
    slowest = max(sum(layer_times_s(layer, device, "bf16")) for layer in model.layers)
    p = len(model.layers)

    def step(m: int) -> float:
        return dlsim.simulate(_unequal(widths, m, "1f1b")).step_time_s

    settled = 3 * p + extra
    assert step(settled + 1) - step(settled) == pytest.approx(slowest, rel=1e-9)
    assert step(p + 1) - step(p) <= slowest * (1 + 1e-9)


TRANSFORMER = {"kind": "transformer", "layers": 6, "hidden": 512, "heads": 8, "seq_len": 256,
               "vocab": 1000}


@pytest.mark.parametrize("counts", [[1, 2, 3], [3, 2, 1], [2, 2, 2]])
def test_stage_blocks_cut_the_pipeline_where_they_say(counts):
    """Three stages of 1, 2 and 3 blocks (the embedding with the first, the head with the
    last), GPipe on free links: the step is the two flow shops of those stages' times."""
    m = 4
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(**TRANSFORMER), MICRO, 2)
    layers = model.layers
    bounds = [0, 1 + counts[0], 1 + counts[0] + counts[1], len(layers)]
    stages = [range(a, b) for a, b in zip(bounds, bounds[1:])]
    times = [[layer_times_s(layers[i], device, "bf16") for i in stage] for stage in stages]
    f = [sum(t[0] for t in stage) for stage in times]
    b = [sum(t[1] for t in stage) for stage in times]
    opt = [optimizer_time_s(sum(layers[i].params for i in stage), "adam", device)
           for stage in stages]
    forwards = sum(f) + (m - 1) * max(f)
    ends = [forwards + sum(b[s:]) + (m - 1) * max(b[s:]) for s in range(3)]
    data = {"name": "pp", "model": TRANSFORMER,
            "cluster": {"topology": "switch", "devices": 3, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 1e200, "latency_us": 0}},
            "training": {"global_batch": MICRO * m, "microbatch": MICRO},
            "parallelism": {"pipeline": 3, "schedule": "gpipe", "stage_blocks": counts}}
    r = dlsim.simulate(data)
    assert r.step_time_s == pytest.approx(max(e + o for e, o in zip(ends, opt)), rel=1e-9)
    assert r.summary["parallelism"]["stage_blocks"] == counts


@pytest.mark.parametrize("counts", [[2, 2], [2, 2, 3], [0, 3, 3]])
def test_stage_blocks_that_do_not_cover_the_model_name_the_field(counts):
    data = {"name": "pp", "model": TRANSFORMER,
            "cluster": {"topology": "switch", "devices": 3, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 100, "latency_us": 1}},
            "training": {"global_batch": 32, "microbatch": 8},
            "parallelism": {"pipeline": 3, "stage_blocks": counts}}
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(data)
    assert "parallelism.stage_blocks" in str(err.value)
