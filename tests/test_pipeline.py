"""Pipeline parallelism: the bubble emerges from the schedules' dependencies and must equal
the closed form (p-1)/(m+p-1) (GPipe, Huang et al. 2019; 1F1B, Narayanan et al. 2021)."""

from __future__ import annotations

import pytest

import dlsim
from dlsim import hardware
from dlsim.config import ModelSpec
from dlsim.costmodel import layer_times_s, optimizer_time_s
from dlsim.pipeline import partition, schedule
from dlsim.workload import build_model

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
    for kind in ("gpipe", "1f1b"):
        for stage in range(4):
            order = schedule(kind, stage, 4, 6)
            assert sorted(order) == sorted([("F", i) for i in range(6)]
                                           + [("B", i) for i in range(6)])
            assert all(order.index(("F", i)) < order.index(("B", i)) for i in range(6))


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
