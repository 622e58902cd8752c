"""Failures of a synchronous job, checkpoints and restarts.

A BSP job (all-reduce, or a collective parameter server) stops when any device fails: it
loses the work since its last checkpoint (or restart) and resumes from that checkpoint after
``restart_s``. Given the step times the engine measured, the job's wall time follows by
walking the steps in time order:

    total = sum(step times) + checkpoints * cost_s + sum over failures (lost work + restart_s)

Failures come at the given times and from a Poisson process with the job's MTBF, drawn from
the run's generator. A failure while the job is restarting is absorbed by that restart.
Young's first-order optimal checkpoint interval is sqrt(2 * C * MTBF) (Young, "A first
order approximation to the optimum checkpoint interval", CACM 17(9), 1974; Daly, FGCS 22(3),
2006 gives the higher-order correction).
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np

from dlsim.contract.sync import FailureSpec
from dlsim.kinds.sync.stragglers import rank_of


@dataclass(frozen=True)
class FaultedRun:
    """A synchronous job's wall time once failures and checkpoints are accounted."""

    failures: int
    lost_work_s: float
    restart_s: float
    checkpoints: int
    checkpoint_s: float
    total_s: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def failure_times(spec: FailureSpec, devices: np.ndarray, rng: np.random.Generator
                  ) -> Iterator[tuple[float, int]]:
    """(time, device) of every failure, in time order: the given ones merged with, when
    ``mtbf_s`` is set, an endless Poisson process over the whole job (a random device of
    ``devices`` each), drawn lazily so that only the failures the job lives to see consume
    random numbers."""
    for k, at in enumerate(spec.at):
        rank_of(devices, at.device, f"failures.at.{k}.device")
    given = sorted((at.time_s, at.device) for at in spec.at)
    if spec.mtbf_s is None:
        return iter(given)
    return heapq.merge(given, _poisson(spec.mtbf_s, devices, rng))


def _poisson(mtbf_s: float, devices: np.ndarray, rng: np.random.Generator
             ) -> Iterator[tuple[float, int]]:
    t = 0.0
    while True:
        t += float(rng.exponential(mtbf_s))
        yield t, int(devices[rng.integers(len(devices))])


def replay(step_s: np.ndarray, spec: FailureSpec, failures: Iterator[tuple[float, int]]
           ) -> FaultedRun:
    """Walk the steps (their measured times ``step_s``) through failures and checkpoints.

    A checkpoint is written after every ``interval_steps`` steps (not after the last step);
    a failure during a step or a checkpoint write loses everything since the last completed
    checkpoint or restart, and the job resumes from that checkpoint at failure + restart_s.
    """
    interval = (spec.checkpoint.interval_steps or 0) if spec.checkpoint else 0
    cost = (spec.checkpoint.cost_s or 0.0) if spec.checkpoint else 0.0
    steps = len(step_s)
    now, step, saved_step, saved_at = 0.0, 0, 0, 0.0
    lost = restarting = written = 0.0
    count = 0
    pending = failures
    failure = next(pending, None)
    while step < steps:
        while failure is not None and failure[0] < now:
            failure = next(pending, None)  # struck while restarting: absorbed
        saving = interval > 0 and (step + 1) % interval == 0 and step + 1 < steps
        end = now + float(step_s[step]) + (cost if saving else 0.0)
        if failure is not None and failure[0] < end:
            lost += failure[0] - saved_at
            restarting += spec.restart_s
            count += 1
            now = saved_at = failure[0] + spec.restart_s
            step = saved_step
            failure = next(pending, None)
            continue
        now, step = end, step + 1
        if saving:
            written += 1
            saved_step, saved_at = step, now
    return FaultedRun(count, lost, restarting, int(written), written * cost, now)


def young_daly_interval_s(checkpoint_cost_s: float, mtbf_s: float) -> float:
    """Young's optimal time between checkpoints, sqrt(2 C M) (CACM 1974)."""
    return math.sqrt(2.0 * checkpoint_cost_s * mtbf_s)
