"""ZeRO stages: model-state memory against the paper's table, and the traffic each costs."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

import dlsim
from dlsim.parallel.memory import memory_per_device
from dlsim.workload.model import Layer, Model

VALIDATION = Path(__file__).resolve().parents[2] / "validation"  # bundled copy


def _printed_unit(text: str) -> float:
    """One unit in the last printed digit: '41.3' -> 0.1, '4011' -> 1."""
    return 10.0 ** -len(text.partition(".")[2])


def test_model_state_memory_reproduces_zero_table_1_to_the_printed_precision():
    """Rajbhandari et al. SC'20 Table 1 / Figure 1, every row (GB = 1e9 bytes). The paper
    rounds some entries and truncates others, so each must lie within one unit of the
    last printed digit."""
    rows = list(csv.DictReader(open(VALIDATION / "zero_memory.csv")))
    assert len(rows) == 54
    for row in rows:
        psi = float(row["params_b"]) * 1e9
        model = Model("psi", (Layer("all", int(psi), (), (), 0.0),))
        plan = memory_per_device(model, "bf16", "adam", data=int(row["dp"]),
                                 zero_stage=int(row["stage"]))
        gb = (plan.params + plan.grads + plan.optimizer) / 1e9
        assert abs(gb - float(row["gb_per_device"])) < _printed_unit(row["gb_per_device"]), row


def _scenario(stage: int, n: int = 8, bw: float = 25.0) -> dict:
    return {"name": "z", "model": {"kind": "mlp", "widths": [2048, 8192, 8192, 2048]},
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": bw, "latency_us": 5}},
            "training": {"global_batch": 64 * n}, "parallelism": {"zero_stage": stage}}


@pytest.mark.parametrize("stage,volume", [(0, 2), (1, 2), (2, 2), (3, 3)])
def test_zero_traffic_volume(stage, volume):
    """Stages 0-2 move the all-reduce volume 2(N-1)/N*G per rank; stage 3 adds a second
    parameter all-gather: 3(N-1)/N*G, i.e. 1.5x (ZeRO §7.2.2)."""
    n = 8
    r = dlsim.simulate(_scenario(stage, n))
    grads = r.parameters * 2  # bf16 gradients and parameters
    assert r.comm_bytes_total == pytest.approx(volume * (n - 1) * grads, rel=1e-9)


def test_zero_trades_memory_for_time():
    base, z3 = dlsim.simulate(_scenario(0, bw=5)), dlsim.simulate(_scenario(3, bw=5))
    assert z3.memory_per_device_bytes < base.memory_per_device_bytes
    assert z3.step_time_s > base.step_time_s  # 1.5x the traffic on a slow link
    parts = z3.memory_breakdown_bytes
    assert parts["params"] == pytest.approx(base.memory_breakdown_bytes["params"] / 8)


def test_zero3_prefetch_stream_appears_in_the_trace():
    r = dlsim.simulate(_scenario(3))
    assert {s.stream for s in r.spans} == {"compute", "comm", "prefetch"}
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s, rel=1e-9)


@pytest.mark.parametrize("d", [1, 8, 64])
def test_megatron_distributed_optimizer_holds_6_plus_12_over_d_bytes_a_parameter(d):
    """Megatron-Core's distributed optimizer with bf16 and fp32 main grads (its default):
    bf16 parameter and fp32 gradient whole on each rank, 6 bytes, and fp32 master weight,
    Adam's m and v sharded over d, 12/d (its docs' per-parameter table)."""
    psi = 7e9
    model = Model("psi", (Layer("all", int(psi), (), (), 0.0),))
    plan = memory_per_device(model, "bf16", "adam", data=d, zero_stage=1, grad_dtype="fp32")
    assert plan.params + plan.grads + plan.optimizer == pytest.approx(psi * (6 + 12 / d),
                                                                      rel=1e-12)


@pytest.mark.parametrize("stage,reduce,gathers", [(0, 2, 0), (1, 1, 1), (3, 1, 2)])
def test_fp32_gradients_double_the_gradient_traffic(stage, reduce, gathers):
    """Gradients reduced in fp32 (4 bytes) where the parameters are bf16 (2): per rank the
    all-reduce moves 2(N-1)/N of the fp32 gradients, ZeRO-1's reduce-scatter (N-1)/N of
    them and its parameter all-gather (N-1)/N of the bf16 parameters, ZeRO-3 two such
    gathers."""
    n = 8
    data = _scenario(stage, n)
    data["training"]["grad_dtype"] = "fp32"
    r = dlsim.simulate(data)
    params = r.parameters
    expected = (n - 1) * params * (reduce * 4 + gathers * 2)
    assert r.comm_bytes_total == pytest.approx(expected, rel=1e-9)
    assert r.summary["grad_dtype"] == "fp32"
