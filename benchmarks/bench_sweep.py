"""Sweep throughput: one grid evaluated in this process, on local processes, on a Dask
LocalCluster, and again from the point cache.

Run: python benchmarks/bench_sweep.py [workers]  (prints a Markdown table for the README).
The grid is GPT-2 1.5B data parallel on 16 to 128 DGX A100 nodes on a fat tree with three
all-reduce algorithms (12 points). Wall time covers the whole ``run_sweep`` call, including
starting the pool or cluster; it is the median of ``REPEATS`` runs.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from pathlib import Path

import yaml

from dlsim.sweep.executors import PointCache, dask_executor, local_processes
from dlsim.sweep.grid import run_sweep

REPEATS = 3
ROOT = Path(__file__).resolve().parents[1]
VARY = {"cluster.nodes": [16, 32, 64, 128],
        "communication.data_parallel": ["ring", "tree", "hierarchical"]}


def timed(make: Callable[[], AbstractContextManager], base: dict,
          cache: PointCache | None = None) -> float:
    start = time.perf_counter()
    with make() as executor:
        run_sweep(base, VARY, progress=False, executor=executor, cache=cache)
    return time.perf_counter() - start


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else os.cpu_count() or 1
    base = yaml.safe_load((ROOT / "scenarios/gpt2-1.5b-1024gpu.yaml").read_text())
    points = len(VARY["cluster.nodes"]) * len(VARY["communication.data_parallel"])
    cases = [("in this process", lambda: local_processes(1)),
             (f"{workers} local processes", lambda: local_processes(workers)),
             (f"Dask LocalCluster, {workers} workers", lambda: dask_executor(workers=workers))]
    print(f"| executor ({points} points, {os.cpu_count()} CPUs) | wall time (s) | points/s |")
    print("|---|---:|---:|")
    for label, make in cases:
        wall = statistics.median(timed(make, base) for _ in range(REPEATS))
        print(f"| {label} | {wall:.2f} | {points / wall:.1f} |")
        sys.stdout.flush()
    with tempfile.TemporaryDirectory() as tmp:
        timed(lambda: local_processes(1), base, PointCache(Path(tmp)))
        wall = statistics.median(timed(lambda: local_processes(1), base, PointCache(Path(tmp)))
                                 for _ in range(REPEATS))
    print(f"| repeated, every point from the cache | {wall:.2f} | {points / wall:.1f} |")


if __name__ == "__main__":
    main()
