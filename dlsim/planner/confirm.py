"""The engine's confirmations of estimated plans, run ahead on worker processes.

The planner confirms its best plans by estimate one after another, and confirms more while
the engine finds the confirmed ones slower than the next estimates
(``search._confirm_beaten``): which plans it asks for next depends on what it has seen, but
which it *may* ask for does not (the best ``confirm`` and the extra candidates after them).
``Ahead`` starts those on a pool of processes in that order, as many at once as there are
workers, and hands each result over when the planner asks; a run it did not foresee is
started then. What the planner decides is the same as confirming one by one in this
process, since a simulation is a pure function of its scenario; only the wall time
differs (the GPT-3 175B plan's six confirmations take about 3.5 s each). A run it
started and never needed is killed with the pool when the planner is done, so it costs no
wall time and no process outlives the plan (``multiprocessing.Pool``, which can terminate
its workers, where ``concurrent.futures`` waits for them). The pool forks: the workers
start without importing anything.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.pool import AsyncResult, Pool
from typing import Any

from dlsim.simulate import simulate

Row = dict[str, Any]


def simulated(scenario: dict[str, Any]) -> dict[str, Any]:
    """What a confirmation reads of the engine's run of ``scenario`` (picklable)."""
    result = simulate(scenario)
    return {"step_time_s": result.step_time_s, "breakdown_s": result.breakdown_s,
            "memory_per_device_bytes": result.memory_per_device_bytes,
            "fits_in_memory": result.fits_in_memory,
            "energy_per_step_J": result.energy_per_step_J}


def worker_count(workers: int | None, runs: int) -> int:
    """Processes for ``runs`` confirmations: ``workers`` (None: one per CPU), at most one a
    run."""
    return max(1, min(workers or os.cpu_count() or 1, runs))


@contextmanager
def pool_of(count: int) -> Iterator[Pool | None]:
    """A pool of ``count`` processes, terminated on exit (a run started ahead and never
    asked for is killed, not waited for); None (this process) for one."""
    if count <= 1:
        yield None
        return
    with multiprocessing.get_context("fork").Pool(count) as pool:
        yield pool


class Ahead:
    """``run(scenario(row))`` of each row asked for, the ``likely`` rows started ahead, in
    their order, as many not yet asked for at once as ``pool`` has workers (None: each run
    in this process when asked for)."""

    def __init__(self, likely: list[Row], scenario: Callable[[Row], dict[str, Any]],
                 pool: Pool | None, width: int,
                 run: Callable[[dict[str, Any]], dict[str, Any]] = simulated) -> None:
        self._likely, self._scenario, self._run = likely, scenario, run
        self._pool, self._width = pool, width
        self._started: dict[int, AsyncResult] = {}
        self._taken: set[int] = set()
        self._fill()

    def result(self, row: Row) -> dict[str, Any]:
        """The run of ``row``, waited for (started now if it was not foreseen)."""
        if self._pool is None:
            return self._run(self._scenario(row))
        self._start(row)
        self._taken.add(id(row))
        self._fill()
        return self._started[id(row)].get()

    def _start(self, row: Row) -> None:
        if id(row) not in self._started:
            assert self._pool is not None
            self._started[id(row)] = self._pool.apply_async(self._run, (self._scenario(row),))

    def _fill(self) -> None:
        """Start the next likely rows while fewer than ``width`` started are not asked for."""
        if self._pool is None:
            return
        for row in self._likely:
            if len(self._started) - len(self._taken) >= self._width:
                return
            self._start(row)
