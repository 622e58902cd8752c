"""The power model (dlsim.results.power): its closed form on a toy device, the TDP cap, and
the energy and cost fields every training and collective summary carries."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

import dlsim
from dlsim.contract.span import Span
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DeviceProfile, Efficiency
from dlsim.results.power import (
    A_COMM,
    A_MEMORY,
    PowerModel,
    activity,
    compute_activity,
    device_energy_J,
    estimated_energy_J,
    kernel_activity,
    power_timeline,
)
from dlsim.workload.model import Kernel, Layer, Model
from dlsim.workload.shapes import TRANSFORMER_SHAPES

# a toy board: 100 W idle, 500 W limit, 100 TFLOP/s bf16, 1 TB/s; GEMMs at best 0.8 of
# peak, memory-bound kernels 0.5 of the bandwidth, no launch overhead
TOY = DeviceProfile(
    name="toy", display_name="toy", kind="gpu", peak_tflops={"bf16": 100}, memory_GB=10,
    memory_bandwidth_GBps=1000, power_W=500, idle_power_W=100, kernel_launch_us=0,
    efficiency=Efficiency(gemm_max=0.8, gemm_half_gflop=1e-9, gemm_fit_tflops=100,
                          memory=0.5, attention=0.5))


def _spans() -> list[Span]:
    """Device 0: compute [0, 2], a collective [1, 3], a wait [3, 4], nothing [4, 5]."""
    return [Span(0, "compute", "fwd", "compute", 0.0, 2.0),
            Span(0, "comm", "ar", "comm", 1.0, 3.0),
            Span(0, "comm", "ar-wait", "wait", 3.0, 4.0)]


def test_energy_of_a_known_timeline_is_the_closed_form():
    """1 s compute only, 1 s both, 1 s collective only, 2 s waiting or idle, with
    a_compute = 0.5: E = 100·5 + 400·(0.5·1 + min(1, 0.5 + 0.3)·1 + 0.3·1) = 1,140 J."""
    model = PowerModel(100.0, 500.0, 0.5)
    a = activity(_spans(), 0, 5.0)
    assert (a.compute_only_s, a.overlap_s, a.comm_only_s) == (1.0, 1.0, 1.0)
    assert A_COMM == 0.3
    assert device_energy_J(model, _spans(), 0, 5.0) == pytest.approx(1140.0, rel=1e-15)


def test_power_over_the_timeline_is_capped_at_the_board_limit():
    """a_compute = 0.9: overlapping a collective would ask 100 + 400·1.2 = 580 W; the board
    holds 500 W, and the energy counts the cap: 100·5 + 400·(0.9 + 1.0 + 0.3) = 1,380 J."""
    model = PowerModel(100.0, 500.0, 0.9)
    times, watts = power_timeline(model, _spans(), 0, 5.0)
    assert times == [0.0, 1.0, 2.0, 3.0]  # the wait draws what idle time draws
    assert watts == pytest.approx([460.0, 500.0, 220.0, 100.0], rel=1e-15)
    assert device_energy_J(model, _spans(), 0, 5.0) == pytest.approx(1380.0, rel=1e-15)
    # the step function integrates to the same joules
    widths = [b - a for a, b in zip(times, [*times[1:], 5.0])]
    assert sum(w * p for w, p in zip(widths, watts)) == pytest.approx(1380.0, rel=1e-15)


def test_an_idle_step_draws_idle_power():
    waits = [Span(0, "comm", "w", "wait", 0.0, 3.0)]
    assert device_energy_J(PowerModel(100.0, 500.0, 0.7), waits, 0, 3.0) == 300.0


def test_kernel_activity_by_what_the_kernel_is_bound_by():
    """A GEMM at the device's best efficiency draws the limit, one at half of it half the
    dynamic range; a kernel streaming at the memory efficiency A_MEMORY of it."""
    gemm_s = 1e12 / (0.8 * 100e12)
    assert kernel_activity(1e12, 0.0, gemm_s, TOY, "bf16") == pytest.approx(1.0, rel=1e-15)
    assert kernel_activity(1e12, 0.0, 2 * gemm_s, TOY, "bf16") == pytest.approx(0.5, rel=1e-15)
    stream_s = 1e9 / (0.5 * 1e12)
    assert kernel_activity(0.0, 1e9, stream_s, TOY, "bf16") == pytest.approx(A_MEMORY,
                                                                               rel=1e-15)


def test_compute_activity_weights_kernels_by_their_roofline_time():
    """A large GEMM (near 0.8 of peak: t1, a = 1 up to its f_half of 1e-9 GFLOP) and an
    elementwise kernel (t2 = bytes / (0.5 · 1 TB/s), a = A_MEMORY) in one layer:
    a_compute = (t1 + A_MEMORY · t2) / (t1 + t2)."""
    gemm = Kernel("gemm", 1e12, 0.0)
    ew = Kernel("elementwise", 0.0, 2e9)
    model = Model("toy", (Layer("l", 0, (gemm,), (ew,), 0.0),))
    t1 = 1e12 / (100e12 * 0.8 * 1e3 / (1e3 + 1e-9))
    t2 = 2e9 / 0.5e12
    a1 = (1e12 / (t1 * 100e12)) / 0.8
    expected = (t1 * a1 + t2 * A_MEMORY) / (t1 + t2)
    assert compute_activity(model, TOY, "bf16") == pytest.approx(expected, rel=1e-12)


@given(st.floats(0.0, 1.0), st.floats(0.0, 1.0), st.floats(0.0, 1.0),
       st.floats(1e-3, 1e3), st.floats(1.0, 10.0))
def test_energy_grows_with_step_time_at_fixed_activity_shares(c, x, o, step_s, longer):
    """Same shares of compute only, collective only and both (scaled to sum at most 1):
    a longer step uses more energy, in proportion."""
    total = max(c + x + o, 1.0)
    c, x, o = c / total, x / total, o / total
    model = PowerModel(80.0, 700.0, 0.6)
    e1 = model.energy_J(step_s, c * step_s, x * step_s, o * step_s)
    t2 = step_s * longer
    e2 = model.energy_J(t2, c * t2, x * t2, o * t2)
    assert e2 >= e1
    assert e2 == pytest.approx(e1 * longer, rel=1e-12)


def test_the_estimate_prices_its_parts_as_the_engine_prices_spans():
    """Compute at a_compute, every '*comm' part at A_COMM, the bubble idle."""
    model = PowerModel(100.0, 500.0, 0.5)
    parts = {"compute": 2.0, "tensor_comm": 0.5, "exposed_dp_comm": 0.25, "bubble": 1.0,
             "pipeline_comm": 0.25}
    expected = 100 * 4.0 + 400 * (0.5 * 2.0 + 0.3 * 1.0)
    assert estimated_energy_J(model, 4.0, parts) == pytest.approx(expected, rel=1e-15)


def test_idle_power_above_the_limit_is_refused():
    with pytest.raises(ValueError, match="idle_power_W"):
        DeviceProfile.model_validate({**TOY.model_dump(), "idle_power_W": 600.0})


def test_every_bundled_device_has_an_idle_power_below_its_limit():
    for name in hardware.available("devices"):
        d = hardware.device(name)
        assert d.idle_power_W is not None and 0 < d.idle_power_W < d.power_W, name


def test_training_summary_energy_and_cost_per_step_and_token():
    """quickstart (GPT-2 small on 8 A100): energy per token is energy per step over the
    step's tokens (global batch × sequence), the average power × devices × step time is the
    energy per step, and cost is price × devices × step time."""
    s = dlsim.simulate("scenarios/quickstart.yaml").summary
    d = hardware.device(s["device"])
    tokens = s["global_batch"] * TRANSFORMER_SHAPES["gpt2-124m"].seq_len
    assert s["energy_per_token_J"] == pytest.approx(s["energy_per_step_J"] / tokens, rel=1e-15)
    assert s["energy_per_step_J"] == pytest.approx(
        s["average_power_W"] * s["devices"] * s["step_time_s"], rel=1e-12)
    assert d.idle_power_W < s["average_power_W"] < d.power_W
    cost = d.price_usd_per_hour * s["devices"] * s["step_time_s"] / 3600
    assert s["cost_per_step_usd"] == pytest.approx(cost, rel=1e-15)
    assert s["cost_per_token_usd"] == pytest.approx(cost / tokens, rel=1e-15)


def test_a_model_without_a_sequence_is_priced_per_sample():
    s = dlsim.simulate("scenarios/mlp-ps-edge.yaml").summary
    assert "energy_per_token_J" not in s
    samples = s["throughput_samples_per_s"] * s["step_time_s"]
    assert s["energy_per_sample_J"] == pytest.approx(s["energy_per_step_J"] / samples,
                                                     rel=1e-12)


def test_a_collective_draws_idle_plus_communication_power():
    """An all-reduce alone on 8 A100s: every device communicates the whole time, so it
    draws idle + A_COMM · (TDP − idle) and the job n times that over the collective."""
    s = dlsim.simulate("scenarios/allreduce-dgx-a100.yaml").summary
    d = hardware.device("a100-sxm4-80gb")
    watts = d.idle_power_W + A_COMM * (d.power_W - d.idle_power_W)
    assert s["average_power_W"] == pytest.approx(watts, rel=1e-12)
    assert s["energy_J"] == pytest.approx(watts * s["devices"] * s["time_s"], rel=1e-12)
    assert s["cost_usd"] == pytest.approx(
        d.price_usd_per_hour * s["devices"] * s["time_s"] / 3600, rel=1e-15)
