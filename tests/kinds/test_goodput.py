"""Goodput at scale: interruption rates per cause, checkpoint size and time, Young's and
Daly's intervals, and the Monte Carlo goodput against its closed form.

The closed form checked (derived in dlsim.kinds.sync.goodput): a segment of T seconds of
progress under Poisson failures of rate lambda, each costing the progress so far and a
restart R, takes (exp(lambda T) - 1)(1/lambda + R) seconds on average; a job of m segments
of tau + C (work and checkpoint) and a last one of r takes m f(tau + C) + f(r).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import load_scenario
from dlsim.contract.sync import FailureSpec
from dlsim.kinds.sync.faults import young_daly_interval_s
from dlsim.kinds.sync.goodput import (
    Checkpointing,
    checkpoint_bytes,
    daly_interval_s,
    expected_wall_s,
    goodput_summary,
    monte_carlo_wall_s,
)
from dlsim.kinds.sync.interruptions import load_rates

ROOT = Path(__file__).resolve().parents[2]


def f(t, rate, restart):
    return (math.exp(rate * t) - 1) * (1 / rate + restart)


def test_young_interval_is_sqrt_2_c_mtbf():
    assert young_daly_interval_s(30.0, 178160.0) == pytest.approx(math.sqrt(2 * 30 * 178160),
                                                                  rel=1e-15)


def test_daly_interval_minimises_the_expected_overhead():
    """Daly's estimate sits on the numerical minimiser of f(tau + C) / tau to the grid's
    resolution (measured 1e-6 to 1.1e-5 for C / M = 1e-4 to 1e-2), where Young's first-order
    sqrt(2 C M) is 0.5 % to 4.9 % long."""
    mtbf = 10000.0
    for cost in (1.0, 10.0, 100.0):
        tau = np.linspace(0.2, 4, 400_001) * math.sqrt(2 * cost * mtbf)
        best = tau[np.argmin(np.expm1((tau + cost) / mtbf) / tau)]
        assert daly_interval_s(cost, mtbf) == pytest.approx(best, rel=3e-5)
        assert daly_interval_s(cost, mtbf) < young_daly_interval_s(cost, mtbf)
    assert daly_interval_s(3.0 * mtbf, mtbf) == mtbf  # C >= 2M: Daly's tau = M


@pytest.mark.parametrize("mtbf_h, tau_h", [(3.0, 1.0), (30.0, 4.0), (1.0, 0.25)])
def test_monte_carlo_goodput_within_one_percent_of_the_closed_form(mtbf_h, tau_h):
    rate, cost, restart = 1 / (mtbf_h * 3600), 60.0, 300.0
    work = 100 * 3600.0 + 1234.0  # 100 h of steps, not a whole number of intervals
    c = Checkpointing(tau_h * 3600, cost, restart, rate)
    m = math.ceil(work / c.interval_s) - 1
    closed = m * f(c.interval_s + cost, rate, restart) + f(work - m * c.interval_s, rate,
                                                             restart)
    assert expected_wall_s(work, c) == pytest.approx(closed, rel=1e-12)
    wall, failures = monte_carlo_wall_s(work, c, 10_000, np.random.default_rng(7))
    # measured over 10,000 runs: mean goodput 0.06-0.23 % above W / E[wall] (Jensen: the
    # mean of W / wall exceeds W over the mean wall), mean wall within 0.05 % of E[wall]
    assert (work / wall).mean() == pytest.approx(work / closed, rel=0.005)
    assert wall.mean() == pytest.approx(closed, rel=1e-3)
    assert failures.mean() > 0


def test_no_failures_cost_only_the_checkpoints():
    c = Checkpointing(100.0, 5.0, 60.0, 0.0)
    wall, _ = monte_carlo_wall_s(1000.0, c, 10, np.random.default_rng(0))
    assert np.all(wall == 1000.0 + 9 * 5.0)  # no checkpoint after the last segment
    assert expected_wall_s(1000.0, c) == 1000.0 + 9 * 5.0


def test_the_llama3_table_is_reproduced_per_cause_per_gpu_day():
    rows = list(csv.DictReader(open(ROOT / "validation" / "llama3_interruptions.csv")))
    rates = load_rates("llama3")
    assert rates.causes == tuple(r["component"] for r in rows)
    counts = [float(r["interruption_count"]) for r in rows]
    assert rates.per_gpu_day.tolist() == pytest.approx([k / (16384 * 54) for k in counts],
                                                       rel=1e-15)
    assert rates.expected(16384, 54).tolist() == pytest.approx(counts, rel=1e-12)
    assert sum(counts) == 419
    assert rates.per_second(16384) == pytest.approx(419 / (54 * 86400), rel=1e-12)


def summary_of(devices=16384, data=128, zero=0):
    return {"devices": devices, "parallelism": {"data": data, "zero_stage": zero},
            "memory_breakdown_bytes": {"params": 2.0e9, "optimizer": 12.0e9, "grads": 2e9,
                                       "activations": 5e9}}


@pytest.mark.parametrize("zero, params_rep, opt_rep", [(0, 128, 128), (1, 128, 1),
                                                       (3, 1, 1)])
def test_checkpoint_is_the_unique_model_and_optimizer_state(zero, params_rep, opt_rep):
    total, parts = checkpoint_bytes(summary_of(zero=zero))
    assert total == 2.0e9 * 16384 / params_rep + 12.0e9 * 16384 / opt_rep
    assert (parts["params_replication"], parts["optimizer_replication"]) == (params_rep,
                                                                            opt_rep)


def test_a_16k_gpu_54_day_job_reports_its_effective_training_time():
    spec = FailureSpec(rates="llama3", restart_s=600, job_days=54, monte_carlo_runs=2000,
                       checkpoint={"interval": "auto", "storage_GBps": 2000})
    g = goodput_summary(spec, 2.0, 1, summary_of(), np.random.default_rng(1))
    assert [i["expected_in_job"] for i in g["interruptions"]] == pytest.approx(
        [148, 72, 54, 35, 32, 19, 17, 7, 7, 6, 6, 3, 3, 2, 2, 2, 2, 2], rel=1e-12)
    cost = (2.0e9 + 12.0e9) * 16384 / 128 / 2000e9
    mtbf = 54 * 86400 / 419
    assert g["checkpoint_s"] == pytest.approx(cost, rel=1e-12)
    assert g["interval_steps"] == round(daly_interval_s(cost, mtbf) / 2.0)
    tau = g["interval_s"]
    steady = tau / f(tau + cost, 1 / mtbf, 600)
    assert g["effective_training_days"] == pytest.approx(54 * steady, rel=1e-12)
    assert g["effective_training_days_p5"] < g["effective_training_days"] < g[
        "effective_training_days_p95"]
    hourly = [row["interval_h"] for row in g["by_interval"]]
    assert hourly[0] == 1 and hourly[-1] == 24
    for row in g["by_interval"]:
        t = row["interval_h"] * 3600
        assert row["effective_training_days"] == pytest.approx(
            54 * t / f(t + cost, 1 / mtbf, 600), rel=1e-12)


@pytest.mark.parametrize("failures", [
    {"rates": "llama3"},                                                # no goodput model
    {"checkpoint": {"interval": "auto", "cost_s": 5}},                  # no rate
    {"rates": "llama3", "mtbf_s": 100, "checkpoint": {"interval": 10, "cost_s": 5}},
    {"mtbf_s": 100, "at": [{"device": 0, "time_s": 1}],
     "checkpoint": {"interval": 10, "cost_s": 5}},
    {"mtbf_s": 100, "checkpoint": {"interval_steps": 10, "storage_GBps": 5}},
    {"mtbf_s": 100, "checkpoint": {"interval": 10}},                    # no cost
    {"mtbf_s": float("inf"), "checkpoint": {"interval": 10, "cost_s": 5}},  # not finite
    {"mtbf_s": 100, "checkpoint": {"interval": 10, "storage_GBps": float("inf")}},
])
def test_bad_goodput_fields_are_refused(failures):
    base = {"name": "t", "model": {"kind": "mlp", "widths": [64, 64]},
            "cluster": {"topology": "ring", "devices": 2, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 10, "latency_us": 5}},
            "training": {"global_batch": 8}, "failures": failures}
    with pytest.raises(ScenarioError):
        load_scenario(base)


def test_a_missing_rates_table_names_the_field():
    spec = FailureSpec(rates="no/such.csv", checkpoint={"interval": 10, "cost_s": 5})
    with pytest.raises(ScenarioError) as err:
        goodput_summary(spec, 1.0, 1, summary_of(), np.random.default_rng(0))
    assert err.value.field == "failures.rates"


def test_a_run_with_failures_spends_the_expected_wall_time_per_step():
    conv = {"min_steps": 100, "noise_batch": 8}
    base = {"name": "t", "model": {"kind": "mlp", "widths": [256, 256]},
            "cluster": {"topology": "ring", "devices": 2, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 10, "latency_us": 5}},
            "training": {"global_batch": 8, "steps": 1}, "convergence": conv,
            "failures": {"mtbf_s": 3600, "restart_s": 30, "job_steps": 10 ** 6,
                         "monte_carlo_runs": 100,
                         "checkpoint": {"interval": 1000, "cost_s": 1}}}
    s = dlsim.simulate(base).summary
    g = s["goodput"]
    per_step = s["step_time_s"] / g["goodput_closed_form"]
    assert s["time_to_accuracy_s"] == pytest.approx(100 * (1 + 8 / 8) * per_step, rel=1e-12)
    assert "failures" not in s


def test_the_report_plots_goodput_against_the_interval_with_the_runs_spread():
    from dlsim.report.sync import sync_section
    spec = FailureSpec(rates="llama3", restart_s=600, job_days=54, monte_carlo_runs=500,
                       checkpoint={"interval": "auto", "storage_GBps": 2000})
    g = goodput_summary(spec, 2.0, 1, summary_of(), np.random.default_rng(1))
    part = sync_section({"goodput": g})
    assert part is not None and part["failures"]["image"].startswith("data:image/png;base64,")
    rows = dict(part["failures"]["rows"])
    assert rows["job MTBF"] == f"{54 * 24 / 419:.3g} h"  # 3.09 h: 419 interruptions in 54 days


def test_a_small_job_whose_mean_lies_below_its_5th_percentile_is_drawn():
    """On 8 GPUs at the Llama 3 rates most runs see no failure, so the few that do pull
    the mean below the 5th percentile; the report draws the spread beside the mean."""
    from dlsim.report.sync import sync_section
    spec = FailureSpec(rates="llama3", restart_s=600, job_days=5, monte_carlo_runs=2000,
                       checkpoint={"interval": "auto", "storage_GBps": 100})
    g = goodput_summary(spec, 0.05, 1, summary_of(devices=8, data=8),
                        np.random.default_rng(0))
    assert g["goodput_mean"] < g["goodput_p5"] <= g["goodput_p95"]
    part = sync_section({"goodput": g})
    assert part is not None and part["failures"]["image"].startswith("data:image/png;base64,")


def test_a_job_that_never_reaches_a_checkpoint_is_refused():
    """Failures every millisecond against 0.05 s steps: 54 days of wall time hold less work
    than one checkpoint interval (the renewal-reward work would be 1e-29 s)."""
    spec = FailureSpec(mtbf_s=0.001, job_days=54, checkpoint={"interval": "auto",
                                                              "cost_s": 0.02})
    with pytest.raises(ScenarioError) as err:
        goodput_summary(spec, 0.05, 1, summary_of(devices=8, data=8),
                        np.random.default_rng(0))
    assert err.value.field == "failures.job_days" and "never reaches a checkpoint" in str(
        err.value)
