"""Data-parallel training steps: closed forms, invariants (hypothesis), reproducibility."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.memory import memory_per_device
from dlsim.results.result import Span
from dlsim.workload.costmodel import layer_times_s, optimizer_time_s
from dlsim.workload.model import Layer, Model, transformer_layers
from dlsim.workload.presets import build_model

VALIDATION = Path(__file__).resolve().parents[2] / "validation"  # bundled copy


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


def _coverage(spans: list[Span], device: int, end_s: float) -> dict[str, float]:
    """Seconds of [0, end_s] on ``device`` by what covers them, found by sweeping the
    elementary intervals between consecutive span boundaries (not with dlsim.metrics):
    compute covers, then comm where no compute runs, then wait where neither does; idle
    is what no span covers."""
    mine = [s for s in spans if s.device == device]
    points = np.unique([0.0, end_s, *(s.start_s for s in mine), *(s.end_s for s in mine)])
    points = points[points <= end_s]
    mid, width = (points[:-1] + points[1:]) / 2, np.diff(points)

    def covered(category: str) -> np.ndarray:
        iv = np.array([(s.start_s, s.end_s) for s in mine if s.category == category])
        iv = iv.reshape(-1, 2)
        return ((iv[:, :1] <= mid) & (mid < iv[:, 1:])).any(axis=0)

    compute = covered("compute")
    comm = covered("comm") & ~compute
    wait = covered("wait") & ~compute & ~comm
    idle = ~(compute | comm | wait)
    return {"compute": width[compute].sum(), "exposed_comm": width[comm].sum(),
            "straggler_wait": width[wait].sum(), "idle": width[idle].sum()}


def test_breakdown_parts_follow_the_bucketed_schedule_in_closed_form():
    """4 devices behind a switch (100 GB/s, 5 us), the 3-layer MLP on 512 samples each,
    1 MiB buckets: every layer's gradients (8 MiB or more) are a bucket, all-reduced (ring,
    2 hops a step) once its backward is done and the bucket before it is through. The
    compute stream runs the forward, the backward in reverse, then the optimizer once the
    last bucket is through. So compute is the sum of the cost model's kernel times, the
    exposed communication the last bucket's end less the backward's end (the comm stream
    is busy from then on), and no time is idle."""
    n, bw, lat, batch = 4, 100e9, 5e-6, 512
    r = dlsim.simulate(scenario(n=n, bw=100, lat=5, bucket=1, batch=batch))
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=[1024, 4096, 4096, 1024]), batch, 2)
    assert min(layer.params * 2 for layer in model.layers) >= 1024 * 1024
    times = [layer_times_s(layer, device, "bf16") for layer in model.layers]
    optimizer = optimizer_time_s(model.parameters, "adam", device)
    t = comm_free = sum(forward for forward, _ in times)
    buckets = []
    for layer, (_, backward) in zip(reversed(model.layers), reversed(times)):
        t += backward
        start = max(t, comm_free)
        comm_free = start + 2 * (n - 1) / n * layer.params * 2 / bw + 2 * (n - 1) * 2 * lat
        buckets.append((start, comm_free))
    step = max(t, comm_free) + optimizer
    compute = sum(forward + backward for forward, backward in times) + optimizer
    exposed = comm_free - t
    assert 0 < exposed < sum(end - start for start, end in buckets)  # partly hidden

    assert r.step_time_s == pytest.approx(step, rel=1e-9)
    comm = sorted((s.start_s, s.end_s) for s in r.spans if s.category == "comm")
    assert np.ravel(comm) == pytest.approx(np.ravel(buckets), rel=1e-9)
    parts = r.breakdown_s
    assert parts["compute"] == pytest.approx(compute, rel=1e-9)
    assert parts["exposed_comm"] == pytest.approx(exposed, rel=1e-9)
    assert parts["bubble"] == parts["straggler_wait"] == 0.0
    assert parts["idle"] == pytest.approx(0.0, abs=1e-12 * step)
    cover = _coverage(r.spans, 0, step)
    assert cover["idle"] == pytest.approx(0.0, abs=1e-12 * step)
    for part, seconds in cover.items():
        assert parts[part] == pytest.approx(seconds, rel=1e-9, abs=1e-12 * step)
    assert sum(parts.values()) == pytest.approx(step, rel=1e-9)


STRAGGLERS = [None, {"fixed": {0: 0.5}}, {"fixed": {0: 2.0}},
              {"per_step": {"distribution": "lognormal", "sigma": 0.5}}]


@settings(max_examples=100, deadline=None)
@given(n=st.integers(2, 12), bw=st.floats(0.5, 500), lat=st.floats(0, 50),
       bucket=st.sampled_from([0, 1, 25]), algorithm=st.sampled_from(["ring", "ps"]),
       batch=st.sampled_from([8, 64, 512]), steps=st.integers(1, 2),
       zero=st.sampled_from([0, 3]), compression=st.sampled_from(["none", "onebit"]),
       stragglers=st.sampled_from(STRAGGLERS), seed=st.integers(0, 3))
def test_breakdown_parts_are_the_critical_devices_span_coverage(
        n, bw, lat, bucket, algorithm, batch, steps, zero, compression, stragglers, seed):
    """Random small data-parallel steps (ZeRO-3's prefetch stream, 1-bit compression's
    codec kernels on the comm stream, a device faster or slower than the rest, or slowdowns
    drawn per step so the last device to finish may have waited for others before): each
    part of the breakdown is what the spans of the critical device (the one whose last span
    ends last, the lowest on a tie) cover of [0, T], found independently, and none is
    negative."""
    if zero and compression != "none":
        compression = "none"  # compression applies to plain data parallelism only
    extra = {"stragglers": stragglers} if stragglers else {}
    r = dlsim.simulate(scenario(
        n=n, bw=bw, lat=lat, bucket=bucket, algorithm=algorithm, batch=batch,
        training={"global_batch": batch * n, "bucket_cap_mb": bucket, "steps": steps},
        parallelism={"zero_stage": zero},
        communication={"data_parallel": algorithm, "compression": compression}, seed=seed,
        **extra))
    end = max(s.end_s for s in r.spans)
    last = {}
    for s in r.spans:
        last[s.device] = max(last.get(s.device, 0.0), s.end_s)
    critical = min(d for d, e in last.items() if e == end)
    assert r.step_time_s * steps == pytest.approx(end, rel=1e-12)
    cover = _coverage(r.spans, critical, end)
    parts = r.breakdown_s
    assert all(v >= 0 for v in parts.values())
    assert parts["bubble"] == 0.0
    for part, seconds in cover.items():
        assert parts[part] * steps == pytest.approx(seconds, rel=1e-9, abs=1e-12 * end)
    assert sum(parts.values()) == pytest.approx(r.step_time_s, rel=1e-9)


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
