"""Stragglers and failures in a BSP job run by the engine (all-reduce or collective PS).

Slowdowns scale each rank's compute per step; slow links lower bandwidth on the engine's
network for a while; failures are replayed over the measured step times (``faults``). The
engine stays as it is: these hooks only change its programs, schedule link changes on its
environment, and read its spans.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import replace
from typing import Any

import numpy as np

from dlsim.contract.program import Op
from dlsim.contract.scenario import TrainingScenario
from dlsim.contract.span import Span
from dlsim.engine.core import EngineRun
from dlsim.kinds.sync.convergence import Job, convergence_summary
from dlsim.kinds.sync.faults import failure_times, replay, young_daly_interval_s
from dlsim.kinds.sync.goodput import goodput_summary
from dlsim.kinds.sync.stragglers import (
    is_heterogeneous,
    slow_program,
    slowdown_factors,
)
from dlsim.results.intervals import breakdown


def straggle(programs: dict[int, list[Op]], scenario: TrainingScenario,
             devices: np.ndarray, rng: np.random.Generator) -> dict[int, list[Op]]:
    """Each rank's program with its compute slowed by its drawn per-step factors."""
    if not is_heterogeneous(scenario.stragglers):
        return programs
    factors = slowdown_factors(scenario.stragglers, devices, scenario.training.steps, rng)
    return {r: slow_program(p, factors[r]) for r, p in programs.items()}


def ended_at_last_op(run: EngineRun) -> EngineRun:
    """The run ending when its last op does, not when a slow link recovered after it."""
    return replace(run, end_s=max(run.rank_end_s.values(), default=run.end_s))


def step_times_s(run: EngineRun) -> np.ndarray:
    """Duration of each step: a step ends when the last rank finishes its optimizer op."""
    ends: dict[tuple[int, str], list[float]] = {}
    for span in sorted(run.spans, key=lambda s: s.start_s):
        if span.category == "compute" and span.role == "optimizer":
            ends.setdefault((span.device, span.stream), []).append(span.end_s)
    per_step = np.max(np.array(list(ends.values())), axis=0)
    per_step[-1] = run.end_s
    return np.diff(per_step, prepend=0.0)


def wait_per_device(spans: list[Span], devices: Iterable[int], end_s: float,
                    steps: int) -> dict[str, float]:
    """Each device's straggler wait per step (keyed by the device as a string, for JSON)."""
    mine: dict[int, list[Span]] = {}  # each device's spans, split once for all devices
    for s in spans:
        mine.setdefault(s.device, []).append(s)
    return {str(int(d)): breakdown(mine.get(int(d), []), int(d), end_s)["straggler_wait"]
            / steps for d in devices}


def bsp_summary(scenario: TrainingScenario, run: EngineRun, devices: np.ndarray,
                rng: np.random.Generator, summary: dict[str, Any], job: Job
                ) -> dict[str, Any]:
    """Straggler wait per device, the job's time with failures, and the time to accuracy.

    ``summary`` is the training summary so far (its memory and parallelism size a
    checkpoint), ``job`` what a time to a target loss needs of the job."""
    steps = scenario.training.steps
    out: dict[str, Any] = {"sync": "bsp"}
    if is_heterogeneous(scenario.stragglers):
        out["straggler_wait_per_device_s"] = wait_per_device(
            run.spans, sorted({s.device for s in run.spans}), run.end_s, steps)
    seconds_per_step = run.end_s / steps
    period = scenario.communication.local_sgd_period  # checked by the rules: data parallel
    spec = scenario.failures
    if spec is not None and spec.checkpoint is not None and spec.checkpoint.expected_goodput:
        job_steps = steps  # without job_steps or job_days, the job is the run to the target
        if scenario.convergence is not None:
            job_steps = math.ceil(convergence_summary(
                scenario.convergence, scenario.training.global_batch, 0.0, seconds_per_step,
                job, period)["convergence"]["steps_to_target"])
        out["goodput"] = goodput_summary(spec, seconds_per_step, job_steps, summary, rng)
        seconds_per_step /= out["goodput"]["goodput_closed_form"]
    elif spec is not None:
        step_s = np.resize(step_times_s(run), spec.job_steps or steps)
        faulted = replay(step_s, spec, failure_times(spec, devices, rng))
        out["failures"] = {"job_steps": len(step_s), **faulted.as_dict(),
                           "goodput": float(step_s.sum()) / faulted.total_s}
        seconds_per_step = faulted.total_s / len(step_s)
        if (spec.mtbf_s is not None and spec.checkpoint is not None
                and spec.checkpoint.cost_s is not None):
            out["failures"]["young_daly_interval_s"] = young_daly_interval_s(
                spec.checkpoint.cost_s, spec.mtbf_s)
    if scenario.convergence is not None:
        out.update(convergence_summary(scenario.convergence, scenario.training.global_batch,
                                       0.0, seconds_per_step, job, period))
    return out
