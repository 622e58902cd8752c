"""Expected goodput of a long synchronous job under Poisson failures, checkpoints and restarts.

The job does W seconds of useful steps in segments of tau seconds of work, each followed by
a checkpoint of C seconds (the last segment, the remainder r of W, writes none). A failure
(a Poisson process of rate lambda = 1 / MTBF, the job's devices times the per-device rates
of ``dlsim.kinds.sync.interruptions``) loses the segment's work and checkpoint so far and
costs a restart of R seconds, during which a further failure is absorbed (as ``faults.replay``
does; with memoryless failures this is the same as none striking while restarting).

Closed form. A segment of T seconds fails at X ~ Exp(lambda) when X < T, with probability
q = 1 - exp(-lambda T); the number K of failed attempts is geometric, E[K] = (1 - q)^-1 - 1 =
exp(lambda T) - 1, and a failed attempt lasts E[X | X < T] = 1/lambda - T exp(-lambda T) / q
before its restart. The segment's expected wall time is T + E[K] (E[X | X < T] + R); the T
terms cancel (E[K] T exp(-lambda T) / q = T), leaving

    f(T) = (exp(lambda T) - 1) (1/lambda + R).

With m = ceil(W / tau) - 1 full segments and the last of r = W - m tau seconds,
E[wall] = m f(tau + C) + f(r), and the goodput of a long job tends to tau / f(tau + C) (the
renewal-reward theorem: work per segment over expected time per segment); the summary gives
both. The optimal interval is Daly's higher-order estimate ("A higher order estimate of the
optimum checkpoint interval for restart dumps", FGCS 22(3), 2006, eq. 37),
tau = sqrt(2 C M) [1 + sqrt(C / 2M) / 3 + (C / 2M) / 9] - C for C < 2M, else M, which
refines Young's sqrt(2 C M) (CACM 17(9), 1974); both minimise f(tau + C) / tau.

Monte Carlo, vectorised over runs: the failed attempts of the m full segments of one run
are a negative binomial count (failures before m successes with success probability
exp(-lambda (tau + C))), those of the last a geometric count, and each failed attempt's
lost time is a draw of Exp(lambda) truncated to [0, T) by its inverse CDF,
-ln(1 - u (1 - exp(-lambda T))) / lambda; no run is stepped through in a Python loop.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.sync import FailureSpec
from dlsim.kinds.sync.faults import young_daly_interval_s
from dlsim.kinds.sync.interruptions import load_rates

DAY_S = 86400.0
TABLE_INTERVALS_H = (1, 2, 3, 6, 12, 24)  # hourly to daily checkpointing
MAX_DRAWS = 50_000_000  # failed attempts drawn in all runs together


@dataclass(frozen=True)
class Checkpointing:
    """Segments of ``interval_s`` of work, each closed by a ``cost_s`` checkpoint; a failure
    (``rate_per_s``) costs its lost work and ``restart_s``."""

    interval_s: float
    cost_s: float
    restart_s: float
    rate_per_s: float


def daly_interval_s(cost_s: float, mtbf_s: float) -> float:
    """Daly's higher-order optimum time between checkpoints (FGCS 2006, eq. 37)."""
    if cost_s >= 2.0 * mtbf_s:
        return mtbf_s
    x = cost_s / (2.0 * mtbf_s)
    return math.sqrt(2.0 * cost_s * mtbf_s) * (1.0 + math.sqrt(x) / 3.0 + x / 9.0) - cost_s


def segment_s(length_s: float, rate_per_s: float, restart_s: float) -> float:
    """f(T) = (exp(lambda T) - 1) (1/lambda + R): expected wall time of T seconds of
    uninterruptible progress (T itself when nothing fails)."""
    if rate_per_s == 0.0:
        return length_s
    return math.expm1(min(rate_per_s * length_s, 700.0)) * (1.0 / rate_per_s + restart_s)


def _segments(work_s: float, interval_s: float) -> tuple[int, float]:
    full = max(math.ceil(work_s / interval_s) - 1, 0)
    return full, work_s - full * interval_s


def expected_wall_s(work_s: float, c: Checkpointing) -> float:
    """E[wall] = m f(tau + C) + f(r) for ``work_s`` of useful steps."""
    full, last = _segments(work_s, c.interval_s)
    return (full * segment_s(c.interval_s + c.cost_s, c.rate_per_s, c.restart_s)
            + segment_s(last, c.rate_per_s, c.restart_s))


def steady_goodput(c: Checkpointing) -> float:
    """tau / f(tau + C): the useful fraction of a long job's wall time."""
    return c.interval_s / segment_s(c.interval_s + c.cost_s, c.rate_per_s, c.restart_s)


def _lost(rng: np.random.Generator, failures: np.ndarray, length_s: float, rate: float
          ) -> np.ndarray:
    """Per run, the summed lost time of its ``failures`` attempts of ``length_s``."""
    total = int(failures.sum())
    u = rng.random(total)
    x = -np.log1p(-u * -math.expm1(-rate * length_s)) / rate
    owner = np.repeat(np.arange(len(failures)), failures)
    return np.bincount(owner, weights=x, minlength=len(failures))


def monte_carlo_wall_s(work_s: float, c: Checkpointing, runs: int,
                       rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Wall time and failure count of ``runs`` independent runs of the job."""
    full, last = _segments(work_s, c.interval_s)
    wall = np.full(runs, full * (c.interval_s + c.cost_s) + last)
    failures = np.zeros(runs, dtype=np.int64)
    if c.rate_per_s == 0.0:
        return wall, failures
    t_full = c.interval_s + c.cost_s
    expected = runs * (full * math.expm1(min(c.rate_per_s * t_full, 700.0))
                       + math.expm1(min(c.rate_per_s * last, 700.0)))
    if expected > MAX_DRAWS:
        raise ScenarioError(
            f"the job would fail about {expected / runs:,.0f} times per run: failures "
            f"interrupt it faster than it checkpoints (MTBF {1 / c.rate_per_s:,.0f} s, "
            f"segments of {t_full:,.0f} s). Checkpoint more often (failures.checkpoint."
            "interval) or lower failures.monte_carlo_runs.", field="failures")
    for count, length in ((full, t_full), (1, last)):
        if count == 0 or length <= 0:
            continue
        p = math.exp(-c.rate_per_s * length)
        k = rng.negative_binomial(count, p, size=runs).astype(np.int64)
        wall += _lost(rng, k, length, c.rate_per_s) + k * c.restart_s
        failures += k
    return wall, failures


def checkpoint_bytes(summary: dict[str, Any]) -> tuple[float, dict[str, float]]:
    """The model and optimizer state a checkpoint writes, from the summary's memory per
    device: params and optimizer bytes x devices / their replication. Without ZeRO every
    data-parallel replica holds the same state (replication = data); ZeRO stage >= 1 shards
    the optimizer state over the replicas, stage 3 the parameters too (replication 1).
    Tensor and pipeline ranks hold disjoint parts. Gradients and activations are not saved."""
    memory = summary["memory_breakdown_bytes"]
    par = summary["parallelism"]
    devices, data, zero = summary["devices"], par["data"], par["zero_stage"]
    params_rep = data if zero < 3 else 1
    optimizer_rep = data if zero < 1 else 1
    total = (memory["params"] * devices / params_rep
             + memory["optimizer"] * devices / optimizer_rep)
    return total, {"params_per_device": memory["params"],
                   "optimizer_per_device": memory["optimizer"], "devices": devices,
                   "params_replication": params_rep, "optimizer_replication": optimizer_rep}


def goodput_summary(spec: FailureSpec, step_s: float, steps: int, summary: dict[str, Any],
                    rng: np.random.Generator) -> dict[str, Any]:
    """The summary's ``goodput`` block: interruptions by cause, the checkpoint's size and
    time, the interval, and the expected goodput in closed form and over many runs, for a
    job of ``job_steps`` or ``job_days`` when the scenario gives them, else ``steps``."""
    ckpt = spec.checkpoint
    assert ckpt is not None and ckpt.interval is not None  # FailureSpec's validator
    devices = int(summary["devices"])
    assumptions = ["failures are a Poisson process (exponential times between them); a "
                   "failure stops every device, loses the work since the last checkpoint "
                   "and costs restart_s; failures while restarting are absorbed",
                   "steps are stationary: every step takes the simulated mean step time"]
    out: dict[str, Any] = {"devices": devices, "step_time_s": step_s}
    if spec.rates is not None:
        rates = load_rates(spec.rates)
        rate = rates.per_second(devices)
        out["rates"] = rates.path
        assumptions.append("interruptions per cause per GPU-day from " + rates.path
                           + ", scaled by the device count and the job's length (every "
                           "cause scales with the devices; see dlsim.kinds.sync.interruptions)")
    else:
        assert spec.mtbf_s is not None  # FailureSpec requires rates or mtbf_s
        rate, rates = 1.0 / spec.mtbf_s, None
        assumptions.append("the job's MTBF is given (failures.mtbf_s)")
    mtbf = 1.0 / rate
    out["mtbf_s"] = mtbf
    if ckpt.storage_GBps is not None:
        state, parts = checkpoint_bytes(summary)
        cost = state / (ckpt.storage_GBps * 1e9)
        out["checkpoint_bytes"] = state
        out["checkpoint_state"] = parts
        assumptions.append(f"checkpoint = params + optimizer state ({state / 1e12:.4g} TB) "
                           f"over {ckpt.storage_GBps:g} GB/s aggregate storage bandwidth")
    else:
        assert ckpt.cost_s is not None
        cost = ckpt.cost_s
        assumptions.append("checkpoint cost given (failures.checkpoint.cost_s)")
    daly = daly_interval_s(cost, mtbf)
    if ckpt.interval == "auto":
        interval_steps = max(1, round(daly / step_s))
        assumptions.append("interval: Daly's optimum (FGCS 2006, eq. 37), rounded to steps")
    else:
        assert isinstance(ckpt.interval, int)
        interval_steps = ckpt.interval
    c = Checkpointing(interval_steps * step_s, cost, spec.restart_s, rate)
    steady = steady_goodput(c)
    if spec.job_days is not None:
        work = spec.job_days * DAY_S * steady
        if work < c.interval_s:  # renewal-reward needs whole segments: the job makes none
            raise ScenarioError(
                f"at an MTBF of {mtbf:,.4g} s with a checkpoint every {c.interval_s:,.4g} s "
                f"({interval_steps} step{'s' * (interval_steps != 1)}) the long-run goodput "
                f"is {steady:.3g}: "
                f"{spec.job_days:g} days hold less work than one checkpoint interval, so the "
                "job never reaches a checkpoint. Fewer failures (failures.rates or "
                "failures.mtbf_s) or a shorter failures.checkpoint.interval are needed.",
                field="failures.job_days")
        assumptions.append("job_days is the wall time: the work is the one whose long-run "
                           "goodput fills it (renewal-reward), its spread from the runs")
    else:
        work = (spec.job_steps or steps) * step_s
    wall, failures = monte_carlo_wall_s(work, c, spec.monte_carlo_runs, rng)
    goodput = work / wall
    expected_wall = expected_wall_s(work, c)
    out.update({
        "checkpoint_s": cost, "restart_s": spec.restart_s,
        "interval_steps": interval_steps, "interval_s": c.interval_s,
        "young_interval_s": young_daly_interval_s(cost, mtbf), "daly_interval_s": daly,
        "work_s": work, "expected_wall_s": expected_wall,
        "goodput_closed_form": work / expected_wall, "goodput_long_run": steady,
        "monte_carlo_runs": spec.monte_carlo_runs,
        "goodput_mean": float(goodput.mean()), "goodput_std": float(goodput.std()),
        "goodput_p5": float(np.percentile(goodput, 5)),
        "goodput_p50": float(np.percentile(goodput, 50)),
        "goodput_p95": float(np.percentile(goodput, 95)),
        "wall_s_mean": float(wall.mean()), "failures_mean": float(failures.mean()),
    })
    days = spec.job_days if spec.job_days is not None else expected_wall / DAY_S
    if rates is not None:
        expected = rates.expected(devices, days)
        out["interruptions"] = [
            {"component": cause, "category": cat, "per_gpu_day": float(r),
             "expected_in_job": float(e)}
            for cause, cat, r, e in zip(rates.causes, rates.categories, rates.per_gpu_day,
                                        expected, strict=True)]
    if spec.job_days is not None:
        out["job_days"] = spec.job_days
        out["effective_training_days"] = spec.job_days * steady
        out["effective_training_days_p5"] = spec.job_days * out["goodput_p5"]
        out["effective_training_days_p95"] = spec.job_days * out["goodput_p95"]
    out["by_interval"] = [
        {"interval_h": h, "goodput": steady_goodput(Checkpointing(h * 3600.0, cost,
                                                                  spec.restart_s, rate)),
         **({"effective_training_days": spec.job_days * steady_goodput(
             Checkpointing(h * 3600.0, cost, spec.restart_s, rate))}
            if spec.job_days is not None else {})}
        for h in TABLE_INTERVALS_H]
    out["assumptions"] = assumptions
    return out
