"""Data-parallel training steps: closed forms, invariants (hypothesis), reproducibility."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.memory import memory_per_device
from dlsim.workload.costmodel import layer_times_s, optimizer_time_s
from dlsim.workload.model import Layer, Model, transformer_layers
from dlsim.workload.presets import build_model

VALIDATION = Path(__file__).resolve().parents[3] / "shared" / "validation"


def scenario(n=4, bw=25.0, lat=5.0, bucket=25.0, algorithm="ring", batch=32, **extra):
    data = {"name": "t", "model": {"kind": "mlp", "widths": [1024, 4096, 4096, 1024]},
            "cluster": {"topology": "switch", "devices": n, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": bw, "latency_us": lat}},
            "precision": "bf16",
            "training": {"global_batch": batch * n, "bucket_cap_mb": bucket},
            "communication": {"data_parallel": algorithm}}
    data.update(extra)
    return data


def test_unbucketed_step_is_compute_then_allreduce_then_optimizer():
    n, bw, lat = 8, 25e9, 5e-6
    result = dlsim.simulate(scenario(n=n, bw=25, lat=5, bucket=0))
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=[1024, 4096, 4096, 1024]), 32, 2)
    compute = sum(sum(layer_times_s(layer, device, "bf16")) for layer in model.layers)
    grads = model.parameters * 2
    allreduce = 2 * (n - 1) / n * grads / bw + 2 * (n - 1) * (2 * lat)
    expected = compute + allreduce + optimizer_time_s(model.parameters, "adam", device)
    assert result.step_time_s == pytest.approx(expected, rel=1e-9)
    assert result.breakdown_s["exposed_comm"] == pytest.approx(allreduce, rel=1e-9)
    assert result.comm_bytes_total == pytest.approx(2 * (n - 1) * grads, rel=1e-9)


def test_buckets_overlap_the_all_reduce_with_backward():
    """With backward compute comparable to the all-reduce, buckets hide most of it."""
    bulk = dlsim.simulate(scenario(bucket=0, batch=512, bw=100))
    bucketed = dlsim.simulate(scenario(bucket=8, batch=512, bw=100))
    assert bucketed.step_time_s < bulk.step_time_s
    assert bucketed.breakdown_s["exposed_comm"] < bulk.breakdown_s["exposed_comm"]


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 32), bw=st.floats(0.5, 500), lat=st.floats(0, 50),
       bucket=st.sampled_from([0, 1, 25]), algorithm=st.sampled_from(["ring", "ps"]))
def test_breakdown_sums_to_step_time(n, bw, lat, bucket, algorithm):
    r = dlsim.simulate(scenario(n=n, bw=bw, lat=lat, bucket=bucket, algorithm=algorithm))
    assert sum(r.breakdown_s.values()) == pytest.approx(r.step_time_s, rel=1e-9)
    assert all(v >= 0 for v in r.breakdown_s.values())


@settings(max_examples=25, deadline=None)
@given(n=st.integers(2, 32), bw=st.floats(0.5, 500), factor=st.floats(1.0, 10.0),
       bucket=st.sampled_from([0, 1, 25]), algorithm=st.sampled_from(["ring", "ps"]))
def test_more_bandwidth_is_never_slower(n, bw, factor, bucket, algorithm):
    slow = dlsim.simulate(scenario(n=n, bw=bw, bucket=bucket, algorithm=algorithm))
    fast = dlsim.simulate(scenario(n=n, bw=bw * factor, bucket=bucket, algorithm=algorithm))
    assert fast.step_time_s <= slow.step_time_s * (1 + 1e-12)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(2, 16), algorithm=st.sampled_from(["ring", "ps"]),
       bucket=st.sampled_from([0, 1, 25]))
def test_bytes_are_conserved(n, algorithm, bucket):
    """Whatever the bucketing, the bytes injected are 2(N-1) x the gradient bytes."""
    r = dlsim.simulate(scenario(n=n, algorithm=algorithm, bucket=bucket))
    assert r.comm_bytes_total == pytest.approx(2 * (n - 1) * r.parameters * 2, rel=1e-9)


def test_same_scenario_and_seed_reproduce_summary_exactly():
    a = dlsim.simulate(scenario(n=6, algorithm="ps", seed=7))
    b = dlsim.simulate(scenario(n=6, algorithm="ps", seed=7))
    assert json.dumps(a.summary) == json.dumps(b.summary)


@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_symmetry_equals_full_fidelity(algorithm):
    a = dlsim.simulate(scenario(n=6, algorithm=algorithm))
    b = dlsim.simulate(scenario(n=6, algorithm=algorithm, simulation={"fidelity": "full"}))
    assert a.step_time_s == b.step_time_s
    assert a.breakdown_s == b.breakdown_s
    assert a.summary["simulation"]["fidelity"] == "symmetric"
    assert b.summary["simulation"]["fidelity"] == "full"


def test_gradient_accumulation_runs_one_all_reduce_per_step():
    one = dlsim.simulate(scenario(n=4, batch=32))
    accum = dlsim.simulate(scenario(n=4, batch=32, training={
        "global_batch": 128, "microbatch": 8, "bucket_cap_mb": 25}))
    assert accum.comm_bytes_total == pytest.approx(one.comm_bytes_total)


def test_gpt2_small_parameter_count():
    model = build_model(ModelSpec(preset="gpt2-124m"), 1, 2)
    assert model.parameters == 124_439_808  # the released GPT-2 small checkpoint


def test_transformer_layer_flops_match_megatron_formula():
    b, s, h, a = 4, 512, 1024, 16
    model = transformer_layers("t", 1, h, a, s, 1000, b, 2)
    block = model.layers[1]
    matmul = sum(k.flops for k in block.forward if k.kind != "elementwise")
    assert matmul == 24 * b * s * h * h + 4 * b * s * s * h
    assert block.params == 12 * h * h + 13 * h


def test_mixed_precision_adam_model_state_is_16_bytes_per_parameter():
    """ZeRO Table 1 baseline (2 + 2 + K)Psi with K = 12, the dp=1 rows of zero_memory.csv."""
    rows = [r for r in csv.DictReader(open(VALIDATION / "zero_memory.csv")) if r["dp"] == "1"]
    assert rows
    for row in rows:
        psi = float(row["params_b"]) * 1e9
        fake = Model("psi", (Layer("all", int(psi), (), (), 0.0),))
        plan = memory_per_device(fake, "bf16", "adam")
        assert (plan.params + plan.grads + plan.optimizer) / 1e9 == pytest.approx(
            float(row["gb_per_device"]), rel=1e-3)
