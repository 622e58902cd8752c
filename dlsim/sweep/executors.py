"""Evaluating many scenarios at once: here, on local processes, or on a Dask cluster.

``evaluate(scenarios, executor)`` is the one entry point sweeps and the planner share. An
executor is any ``concurrent.futures.Executor`` (a ``ProcessPoolExecutor``, or a Dask
client's ``get_executor()``), or None to simulate in this process. Completed points are kept
in a ``PointCache``, one JSON file per scenario hash written atomically as each point
finishes, so an interrupted sweep resumes where it stopped and a repeated one simulates
nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Iterator, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from rich.progress import Progress

from dlsim import __version__
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import Scenario, load_scenario
from dlsim.data import CALIBRATION as CALIBRATION_DIR
from dlsim.hardware.profiles import PROFILES_DIR
from dlsim.simulate import run_scenario

PACKAGE_DIR = Path(__file__).resolve().parents[1]


@lru_cache(maxsize=1)
def _inputs_digest() -> str:
    """Hash of every hardware profile and calibration file, the data a simulation reads
    besides its scenario, and of dlsim's own modules (a development checkout changes the
    model without changing the version), so that editing any invalidates cached points."""
    digest = hashlib.sha256()
    for root in (PROFILES_DIR, CALIBRATION_DIR, PACKAGE_DIR):
        for path in sorted(p for p in root.rglob("*") if p.is_file() and p.suffix != ".pyc"):
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def scenario_hash(scenario: Scenario) -> str:
    """sha256 of the canonical JSON of the validated scenario, the dlsim version, the
    hardware profiles, calibration files and dlsim's source: equal hashes mean the
    simulation would give the same summary. (A calibration file kept outside calibration/
    counts by its path.)"""
    payload = {"dlsim": __version__, "inputs": _inputs_digest(),
               "scenario": scenario.model_dump(mode="json")}
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return hashlib.sha256(text.encode()).hexdigest()


class PointCache:
    """Summaries of completed points, ``<directory>/<hash>.json``; counts hits and writes."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)
        self.hits = 0
        self.writes = 0

    def get(self, key: str) -> dict[str, Any] | None:
        try:
            summary = json.loads((self.directory / f"{key}.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):  # absent, or unreadable: simulate it again
            return None
        self.hits += 1
        return summary

    def put(self, key: str, summary: dict[str, Any]) -> None:
        """Write through a temporary file and rename it: a reader never sees half a file."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{key}.", dir=self.directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump(summary, fh, allow_nan=False)
            os.replace(tmp, self.directory / f"{key}.json")
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        self.writes += 1


def error_row(scenario: dict[str, Any], exc: ScenarioError) -> dict[str, Any]:
    """What an invalid point yields instead of a summary: its name, kind and the error."""
    return {"name": scenario.get("name"), "kind": scenario.get("kind", "training"),
            "error": exc.message, "error_field": exc.field}


def simulate_point(scenario: Scenario) -> dict[str, Any]:
    """Worker body: the summary as JSON would carry it (so fresh and cached rows are equal),
    or an error row when the simulator rejects the scenario."""
    try:
        summary = run_scenario(scenario).summary
    except ScenarioError as exc:
        return error_row(scenario.model_dump(mode="json"), exc)
    return json.loads(json.dumps(summary, allow_nan=False))


def evaluate(scenarios: Sequence[dict[str, Any]], executor: Executor | None = None,
             cache: PointCache | None = None, progress: bool = False) -> list[dict[str, Any]]:
    """One summary per scenario dict, in order.

    A point that fails validation or that the simulator rejects (``ScenarioError``) gives an
    error row (``error``, ``error_field``) instead of stopping the others; error rows are not
    cached. Any other exception is a bug and propagates. Points are cached as they finish.
    """
    results: list[dict[str, Any] | None] = [None] * len(scenarios)
    pending: list[tuple[int, Scenario, str]] = []
    for i, data in enumerate(scenarios):
        try:
            scenario = load_scenario(data)
        except ScenarioError as exc:
            results[i] = error_row(data, exc)
            continue
        key = scenario_hash(scenario)
        results[i] = cache.get(key) if cache is not None else None
        if results[i] is None:
            pending.append((i, scenario, key))
    finished = _run(pending, executor)  # submitted before the progress bar starts its thread
    with Progress(transient=True, disable=not progress) as bar:
        task = bar.add_task("simulating", total=len(scenarios),
                            completed=len(scenarios) - len(pending))
        for i, key, summary in finished:
            results[i] = summary
            if cache is not None and "error" not in summary:
                cache.put(key, summary)
            bar.advance(task)
    return results  # type: ignore[return-value]  # every slot is filled above


def _run(pending: list[tuple[int, Scenario, str]], executor: Executor | None
         ) -> Iterator[tuple[int, str, dict[str, Any]]]:
    """Submit every point; the iterator yields (index, hash, summary) as they finish."""
    if executor is None or len(pending) <= 1:
        return ((i, key, simulate_point(scenario)) for i, scenario, key in pending)
    futures = {executor.submit(simulate_point, scenario): (i, key)
               for i, scenario, key in pending}
    return _as_finished(futures)


def _as_finished(futures: dict[Future, tuple[int, str]]
                 ) -> Iterator[tuple[int, str, dict[str, Any]]]:
    try:
        for future in as_completed(futures):
            i, key = futures[future]
            yield i, key, future.result()
    finally:  # interrupted: drop what has not started; what finished is already cached
        for future in futures:
            future.cancel()


@contextmanager
def local_processes(workers: int | None = None) -> Iterator[Executor | None]:
    """A process pool of ``workers`` (default: one per CPU); 1 simulates in this process."""
    workers = workers or os.cpu_count() or 1
    if workers <= 1:
        yield None
        return
    with ProcessPoolExecutor(max_workers=workers) as pool:
        yield pool


@contextmanager
def dask_executor(scheduler: str | None = None, workers: int | None = None,
                  processes: bool = True) -> Iterator[Executor]:
    """An executor on a Dask cluster: the scheduler at ``scheduler`` (tcp://host:8786), or
    a ``LocalCluster`` of ``workers`` single-threaded workers started here."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise ScenarioError("Dask is not installed; pip install 'dlsim[distributed]'.",
                            field="--scheduler" if scheduler else "--dask-workers") from None
    if scheduler:
        try:
            client = Client(scheduler, timeout="10s")
        except (OSError, TimeoutError) as exc:
            raise ScenarioError(f"cannot reach the Dask scheduler {scheduler}: {exc}.",
                                field="--scheduler") from None
        with client:
            yield client.get_executor()
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=processes,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        yield client.get_executor()


@contextmanager
def executor_for(workers: int | None = None, scheduler: str | None = None,
                 dask_workers: int | None = None) -> Iterator[Executor | None]:
    """The executor a sweep's options ask for: Dask when given a scheduler or a worker
    count for a local Dask cluster, else local processes."""
    if scheduler and dask_workers:
        raise ScenarioError("give --scheduler (an existing Dask cluster) or --dask-workers "
                            "(start one here), not both.", field="--scheduler")
    if scheduler or dask_workers:
        with dask_executor(scheduler, dask_workers) as executor:
            yield executor
        return
    with local_processes(workers) as executor:
        yield executor
