"""Synchronisation (BSP/SSP/ASP), stragglers, failures and statistical efficiency.

Closed forms are computed here from the cost model's inputs (layer and optimizer times) and
the link parameters, never copied from the simulator's output.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dlsim
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec, load_scenario
from dlsim.contract.sync import FailureSpec
from dlsim.hardware.profiles import device as device_profile
from dlsim.kinds.sync.convergence import steps_to_target
from dlsim.kinds.sync.faults import replay
from dlsim.workload.costmodel import layer_times_s, optimizer_time_s
from dlsim.workload.presets import build_model

ROOT = Path(__file__).resolve().parents[2]
DEVICE = "a100-sxm4-80gb"
WIDTHS = [1024, 2048, 2048, 1024]
B = 10e9          # link bandwidth, bytes/s
ALPHA = 5e-6      # link latency, s


def scenario(n=4, topology="ring", bandwidth=B, **extra):
    base = {"name": "t", "model": {"kind": "mlp", "widths": WIDTHS},
            "cluster": {"topology": topology, "devices": n, "device": DEVICE,
                        "link": {"bandwidth_GBps": bandwidth / 1e9, "latency_us": ALPHA * 1e6}},
            "precision": "bf16",
            "training": {"global_batch": 64 * n, "optimizer": "sgd", "bucket_cap_mb": 0,
                         "steps": 1}}
    base.update(extra)
    return base


def costs(per_worker=64):
    """Forward+backward time of one worker's batch, the optimizer step, gradient bytes."""
    device = device_profile(DEVICE)
    model = build_model(ModelSpec(kind="mlp", widths=WIDTHS), per_worker, 2)
    compute = sum(sum(layer_times_s(layer, device, "bf16")) for layer in model.layers)
    return compute, optimizer_time_s(model.parameters, "sgd", device), model.parameters * 2


def ring_allreduce_s(n, size, bandwidth=B):
    """Patarasuk & Yuan: 2(N-1) rounds of G/N on neighbour links, one latency each."""
    return 2 * (n - 1) * (ALPHA + size / n / bandwidth)


# --- BSP stragglers --------------------------------------------------------------------------

def test_bsp_step_follows_the_slow_device_and_the_others_wait_the_difference():
    n = 4
    compute, opt, grads = costs()
    r = dlsim.simulate(scenario(n, stragglers={"fixed": {2: 2.0}}))
    # the slow device computes 2C, the all-reduce starts when it arrives, then 2x optimizer
    assert r.step_time_s == pytest.approx(2 * compute + ring_allreduce_s(n, grads) + 2 * opt,
                                          rel=1e-9)
    waits = r.summary["straggler_wait_per_device_s"]
    assert waits["2"] == 0.0
    for d in ("0", "1", "3"):
        assert waits[d] == pytest.approx(2 * compute - compute, rel=1e-9)
    assert r.summary["simulation"]["fidelity"] == "full"


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 3), st.sampled_from(["ring", "tree", "ps"]))
def test_unit_slowdowns_give_the_symmetric_answer_in_full_fidelity(device, algorithm):
    comm = {"data_parallel": algorithm}
    plain = dlsim.simulate(scenario(4, communication=comm))
    r = dlsim.simulate(scenario(4, communication=comm, stragglers={"fixed": {device: 1.0}}))
    assert plain.summary["simulation"]["fidelity"] == "symmetric"
    assert r.summary["simulation"]["fidelity"] == "full"
    assert r.step_time_s == pytest.approx(plain.step_time_s, rel=1e-12)


def test_a_slow_link_for_the_whole_run_slows_the_ring_by_its_factor():
    n, factor = 4, 0.25
    compute, opt, grads = costs()
    r = dlsim.simulate(scenario(n, stragglers={"links": [{"link": "1->2", "factor": factor}]}))
    # every ring round waits for its slowest link: G/N at factor * B
    assert r.step_time_s == pytest.approx(
        compute + ring_allreduce_s(n, grads, factor * B) + opt, rel=1e-9)


def test_a_slow_link_that_recovers_after_the_job_does_not_lengthen_it():
    base = dlsim.simulate(scenario(4, simulation={"fidelity": "full"}))
    r = dlsim.simulate(scenario(4, stragglers={"links": [
        {"device": 0, "factor": 1.0, "start_s": 0.0, "end_s": 100.0}]}))
    assert r.step_time_s == pytest.approx(base.step_time_s, rel=1e-12)


def test_same_seed_same_summary_other_seed_other_slowdowns():
    spec = scenario(4, seed=7, training={"global_batch": 256, "optimizer": "sgd", "steps": 3,
                                         "bucket_cap_mb": 0},
                    stragglers={"per_step": {"distribution": "lognormal", "sigma": 0.3}})
    a, b = dlsim.simulate(spec), dlsim.simulate(spec)
    c = dlsim.simulate({**spec, "seed": 8})
    assert a.summary == b.summary
    assert c.step_time_s != a.step_time_s
    assert c.summary["straggler_wait_per_device_s"] != a.summary["straggler_wait_per_device_s"]


# --- failures and checkpoints ------------------------------------------------------------------

def test_an_allreduce_failure_costs_lost_work_plus_restart():
    steps, interval, cost, restart = 10, 3, 0.01, 0.5
    plain = dlsim.simulate(scenario(4, training={"global_batch": 256, "optimizer": "sgd",
                                                 "steps": steps, "bucket_cap_mb": 0}))
    t = plain.step_time_s
    # the checkpoint after step 6 completes at 6t + 2C; fail 40% into step 8
    fail_at = 7 * t + 2 * cost + 0.4 * t
    r = dlsim.simulate(scenario(4, training={"global_batch": 256, "optimizer": "sgd",
                                             "steps": steps, "bucket_cap_mb": 0},
                                failures={"at": [{"device": 1, "time_s": fail_at}],
                                          "restart_s": restart,
                                          "checkpoint": {"interval_steps": interval,
                                                         "cost_s": cost}}))
    f = r.summary["failures"]
    lost = fail_at - (6 * t + 2 * cost)
    checkpoints = (steps - 1) // interval
    assert f["lost_work_s"] == pytest.approx(lost, rel=1e-9)
    assert f["total_s"] == pytest.approx(steps * t + checkpoints * cost + lost + restart,
                                         rel=1e-9)
    assert f["checkpoints"] == checkpoints and f["failures"] == 1


def test_job_steps_repeat_the_simulated_step_and_goodput_is_the_useful_share():
    t = dlsim.simulate(scenario(4)).step_time_s
    r = dlsim.simulate(scenario(4, failures={"job_steps": 95, "checkpoint": {
        "interval_steps": 10, "cost_s": 0.5}}))
    total = 95 * t + 9 * 0.5  # no checkpoint after the last step
    assert r.summary["failures"]["total_s"] == pytest.approx(total, rel=1e-9)
    assert r.summary["failures"]["goodput"] == pytest.approx(95 * t / total, rel=1e-9)


@settings(max_examples=25, deadline=None)
@given(st.lists(st.floats(0.1, 2.0), min_size=1, max_size=12),
       st.lists(st.floats(0.0, 40.0), max_size=4), st.integers(1, 5),
       st.floats(0.0, 1.0), st.floats(0.0, 3.0))
def test_replay_accounts_for_every_second(step_s, fail_at, interval, cost, restart):
    spec = FailureSpec(restart_s=restart, checkpoint={"interval_steps": interval,
                                                       "cost_s": cost})
    run = replay(np.array(step_s), spec, iter(sorted((t, 0) for t in fail_at)))
    useful = sum(step_s) + run.checkpoint_s
    assert run.total_s == pytest.approx(useful + run.lost_work_s + run.restart_s, rel=1e-9)
    assert run.restart_s == pytest.approx(run.failures * restart)
    assert run.checkpoints == (len(step_s) - 1) // interval


def test_mtbf_failures_are_drawn_from_the_seed():
    spec = scenario(4, training={"global_batch": 256, "optimizer": "sgd", "steps": 20,
                                 "bucket_cap_mb": 0},
                    failures={"mtbf_s": 0.05, "restart_s": 0.01,
                              "checkpoint": {"interval_steps": 5, "cost_s": 0.001}})
    a, b = dlsim.simulate(spec), dlsim.simulate({**spec, "seed": 1})
    assert a.summary == dlsim.simulate(spec).summary
    assert a.summary["failures"] != b.summary["failures"]
    assert a.summary["failures"]["young_daly_interval_s"] == pytest.approx(
        (2 * 0.001 * 0.05) ** 0.5)


# --- parameter server: SSP, ASP, failures --------------------------------------------------

PS_B = 100e9       # parameter-server tests: fast links and big batches, so that compute
PS_BATCH = 4096    # (not the server's own free local traffic) sets each worker's pace


def ps(n=4, sync="asp", steps=6, **extra):
    return scenario(n, topology="fully-connected", bandwidth=PS_B, sync=sync,
                    communication={"data_parallel": "ps"},
                    training={"global_batch": PS_BATCH * n, "optimizer": "sgd",
                              "steps": steps}, **extra)


def pushes(r, device):
    return sorted(s.end_s for s in r.spans if s.device == device and s.name.startswith("push"))


def pushed_by(r, device, time):
    return int(np.searchsorted(pushes(r, device), time, side="right"))


@settings(max_examples=6, deadline=None)
@given(st.integers(0, 3), st.integers(0, 1000))
def test_ssp_never_lets_a_worker_run_more_than_s_steps_ahead(s, seed):
    n = 4
    r = dlsim.simulate(ps(n, {"mode": "ssp", "staleness": s}, steps=6, seed=seed,
                          stragglers={"fixed": {3: 2.0},
                                      "per_step": {"distribution": "lognormal",
                                                   "sigma": 0.5}}))
    for span in r.spans:
        if span.category != "compute" or not span.name.startswith("fwd+bwd"):
            continue
        t = int(re.search(r"s(\d+)", span.name).group(1))
        slowest = min(pushed_by(r, d, span.start_s) for d in range(n))
        assert t - slowest <= s, (span, slowest)
    if s == 0:  # the bound binds: the fast workers wait at the gate
        assert any(sp.category == "wait" for sp in r.spans)


def test_ssp_with_a_large_bound_reaches_the_unsynchronised_rate():
    n, steps = 4, 6
    compute, _, grads = costs(PS_BATCH)
    unsync = compute + 2 * (ALPHA + grads / PS_B)  # pull and push on private links
    rates = []
    for s in (0, 1, 3, steps * n):
        r = dlsim.simulate(ps(n, {"mode": "ssp", "staleness": s}, steps=steps,
                              stragglers={"fixed": {3: 2.0}}))
        ends = pushes(r, 1)
        rates.append(len(ends) / ends[-1])
    assert all(b >= a * (1 - 1e-12) for a, b in zip(rates, rates[1:]))  # non-decreasing
    assert rates[-1] == pytest.approx(1 / unsync, rel=1e-9)
    assert rates[0] < 0.9 * rates[-1]


def test_ssp_with_a_bound_beyond_the_budget_is_asp():
    strag = {"fixed": {3: 2.0}}
    a = dlsim.simulate(ps(4, "asp", stragglers=strag)).summary
    s = dlsim.simulate(ps(4, {"mode": "ssp", "staleness": 24}, stragglers=strag)).summary
    for key in ("step_time_s", "steps_per_worker", "staleness_histogram"):
        assert a[key] == s[key]


@settings(max_examples=5, deadline=None)
@given(st.integers(0, 1000))
def test_asp_never_waits_and_its_staleness_histogram_counts_every_update(seed):
    n, steps = 4, 6
    r = dlsim.simulate(ps(n, "asp", steps=steps, seed=seed, stragglers={
        "fixed": {2: 3.0}, "per_step": {"distribution": "bimodal", "probability": 0.3,
                                        "factor": 2.0}}))
    assert not [s for s in r.spans if s.category == "wait"]
    hist = r.summary["staleness_histogram"]
    assert sum(hist) == r.summary["updates_applied"] == steps * n
    assert sum(r.summary["steps_per_worker"]) == steps * n
    assert r.summary["steps_per_worker"][2] < r.summary["steps_per_worker"][1]
    assert len(hist) > 1  # updates from a stale read exist


def test_ps_bsp_applies_one_update_per_step_with_no_staleness():
    steps = 3
    r = dlsim.simulate(ps(4, "bsp", steps=steps,
                          failures={"at": [{"device": 3, "time_s": 1.0}]}))
    assert r.summary["staleness_histogram"] == [steps]
    assert r.summary["steps_per_worker"] == [steps] * 4


def test_a_ps_worker_failure_leaves_the_others_running():
    compute, _, grads = costs(PS_BATCH)
    step = compute + 2 * (ALPHA + grads / PS_B)
    fail_at = 1.5 * step  # worker 2 dies in the middle of its second step
    r = dlsim.simulate(ps(4, "bsp", steps=4, failures={"at": [{"device": 2,
                                                               "time_s": fail_at}]}))
    assert r.summary["steps_per_worker"][2] == 1
    assert r.summary["steps_per_worker"][1] == 4
    assert r.summary["failed_devices"] == [2]
    a = dlsim.simulate(ps(4, "asp", steps=4, failures={"at": [{"device": 2,
                                                               "time_s": fail_at}]}))
    # its claimed step is lost; the survivors take the rest of the 16 steps
    assert sum(a.summary["steps_per_worker"]) == 4 * 4 - 1
    assert a.summary["steps_per_worker"][2] == 1


# --- statistical efficiency --------------------------------------------------------------------

def test_time_to_accuracy_is_steps_needed_times_time_per_update():
    conv = {"min_steps": 1000, "noise_batch": 512, "staleness_penalty": 0.1}
    r = dlsim.simulate(scenario(4, convergence=conv))
    steps = 1000 * (1 + 512 / 256)  # McCandlish et al. eq. 2.11 at B = 256
    assert r.summary["time_to_accuracy_s"] == pytest.approx(steps * r.step_time_s, rel=1e-12)
    a = dlsim.simulate(ps(4, "asp", convergence=conv)).summary
    mean = np.average(np.arange(len(a["staleness_histogram"])),
                      weights=a["staleness_histogram"])
    per_update = a["step_time_s"] * 6 / a["updates_applied"]
    expected = 1000 * (1 + 512 / PS_BATCH) * (1 + 0.1 * mean) * per_update
    assert a["time_to_accuracy_s"] == pytest.approx(expected, rel=1e-9)


@settings(max_examples=20, deadline=None)
@given(st.floats(1, 1e5), st.floats(1, 1e5), st.floats(1, 1e5))
def test_examples_follow_emin_one_plus_b_over_bnoise(s_min, noise, batch):
    spec = load_scenario(scenario(convergence={"min_steps": s_min, "noise_batch": noise}))
    examples = steps_to_target(spec.convergence, batch, 0.0) * batch
    assert examples == pytest.approx(s_min * noise * (1 + batch / noise), rel=1e-9)


# --- input errors and the CLI --------------------------------------------------------------

@pytest.mark.parametrize("extra, field", [
    ({"sync": {"mode": "ssp", "staleness": 2}}, "sync"),       # all-reduce is BSP
    ({"sync": "ssp"}, None),                                    # ssp without a bound
    ({"sync": {"mode": "asp", "staleness": 2}}, None),          # a bound asp ignores
    ({"stragglers": {"fixed": {9: 2.0}}}, "stragglers.fixed"),
    ({"stragglers": {"links": [{"link": "0->9", "factor": 0.5}]}}, "stragglers.links.0"),
    ({"failures": {"at": [{"device": 9, "time_s": 1}]}}, "failures.at.0.device"),
])
def test_bad_sync_input_names_the_field(extra, field):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario(4, **extra))
    if field is not None:
        assert err.value.field == field


@pytest.mark.parametrize("name", ["stragglers-bsp.yaml", "ssp-vs-asp.yaml"])
def test_cli_runs_the_bundled_sync_scenarios(name, tmp_path):
    res = CliRunner().invoke(app, ["run", str(ROOT / "scenarios" / name), "--out",
                                   str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert list(tmp_path.glob("*/index.html"))
