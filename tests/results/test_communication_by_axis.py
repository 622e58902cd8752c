"""Communication per grid axis: bytes in closed form, times from the critical device's spans."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.parallel.memory import gradient_bytes_per_param

SWITCH = {"topology": "switch", "device": "a100-sxm4-80gb",
          "link": {"bandwidth_GBps": 50, "latency_us": 2}}


def _run(devices: int, model: dict, parallelism: dict, batch: int, steps: int = 1):
    return dlsim.simulate({
        "name": "axes", "model": model, "cluster": {**SWITCH, "devices": devices},
        "precision": "bf16", "training": {"global_batch": batch, "steps": steps},
        "parallelism": parallelism})


@pytest.mark.parametrize("n,steps", [(2, 1), (4, 2), (8, 1)])
def test_data_parallel_ring_moves_2_n_minus_1_gradients(n, steps):
    """Ring all-reduce of G gradient bytes: each of N ranks sends 2(N-1)/N·G, 2(N-1)·G in all,
    every step; nothing else is parallel."""
    r = _run(n, {"kind": "mlp", "widths": [1024, 4096, 4096, 1024]}, {"data": n}, 8 * n,
             steps)
    grads = r.parameters * gradient_bytes_per_param("bf16")
    axes = r.communication_by_axis
    assert set(axes) == {"data"}
    assert axes["data"]["bytes"] == pytest.approx(2 * (n - 1) * grads, rel=1e-12)
    assert axes["data"]["bytes"] == pytest.approx(r.comm_bytes_total, rel=1e-12)
    assert 0 < axes["data"]["exposed_s"] <= axes["data"]["time_s"] < r.step_time_s


def test_tensor_parallel_allreduces_are_the_tensor_axis():
    """t = 2 on 2 devices: 2 + 2 all-reduces of b·s·h per block, one in the embedding's
    forward and one in the head's backward; a ring of 2 sends 2(t-1)/t of each from both
    ranks. No data or pipeline traffic."""
    layers, h, s, b = 2, 256, 128, 4
    model = {"kind": "transformer", "layers": layers, "hidden": h, "heads": 4, "seq_len": s,
             "vocab": 1000}
    r = _run(2, model, {"data": 1, "tensor": 2}, b)
    t = 2
    collectives = layers * 4 + 2
    expected = collectives * t * 2 * (t - 1) / t * (b * s * h * 2)
    axes = r.communication_by_axis
    assert set(axes) == {"tensor"}
    assert axes["tensor"]["bytes"] == pytest.approx(expected, rel=1e-12)
    assert axes["tensor"]["exposed_s"] == pytest.approx(axes["tensor"]["time_s"], rel=1e-12)


def test_pipeline_and_data_axes_add_up_to_the_total():
    """Each collective's bytes go to exactly one axis."""
    model = {"kind": "transformer", "layers": 4, "hidden": 256, "heads": 4, "seq_len": 128,
             "vocab": 1000}
    r = _run(8, model, {"data": 2, "tensor": 2, "pipeline": 2}, 16)
    axes = r.communication_by_axis
    assert set(axes) == {"data", "tensor", "pipeline"}
    assert sum(a["bytes"] for a in axes.values()) == pytest.approx(r.comm_bytes_total,
                                                                   rel=1e-12)
    assert all(0 <= a["exposed_s"] <= a["time_s"] for a in axes.values())
