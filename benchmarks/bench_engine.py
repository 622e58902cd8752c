"""Simulator speed: wall time and events per second versus device count.

Run: python benchmarks/bench_engine.py  (prints a Markdown table for the README).
Each case is simulated `REPEATS` times and the median wall time is reported; wall time is
measured around dlsim.simulate, so it includes building the topology and routing.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import dlsim

REPEATS = 3
ROOT = Path(__file__).resolve().parents[1]


def ring_allreduce(n: int, preset: bool) -> dict:
    cluster = ({"preset": "dgx-a100", "nodes": n // 8} if preset else
               {"topology": "ring", "devices": n, "link": {"bandwidth_GBps": 50,
                                                            "latency_us": 1}})
    return {"name": f"ring-{n}", "kind": "collective", "cluster": cluster,
            "collective": {"op": "allreduce", "algorithm": "ring", "size_bytes": 1 << 30}}


def on_dgx_nodes(n: int, op: str, algorithm: str, size: int, oversubscription: float = 1.0
                 ) -> dict:
    return {"name": f"{op}-{n}", "kind": "collective",
            "cluster": {"preset": "dgx-a100", "nodes": n // 8,
                        "oversubscription": oversubscription},
            "collective": {"op": op, "algorithm": algorithm, "size_bytes": size}}


def dp_step(fidelity: str, scenario: str = "gpt2-1.5b-1024gpu") -> dict:
    import yaml

    data = yaml.safe_load((ROOT / f"scenarios/{scenario}.yaml").read_text())
    data["simulation"] = {"fidelity": fidelity}
    return data


CASES = [
    ("ring all-reduce 1 GiB, textbook ring", 1024, lambda: ring_allreduce(1024, False)),
    ("ring all-reduce 1 GiB, textbook ring", 8192, lambda: ring_allreduce(8192, False)),
    ("ring all-reduce 1 GiB, DGX A100 nodes on a fat tree", 1024,
     lambda: ring_allreduce(1024, True)),
    ("ring all-reduce 1 GiB, DGX A100 nodes on a fat tree", 8192,
     lambda: ring_allreduce(8192, True)),
    ("hierarchical all-reduce 1 GiB, DGX A100 nodes on a fat tree", 4096,
     lambda: on_dgx_nodes(4096, "allreduce", "hierarchical", 1 << 30)),
    ("all-to-all 256 MiB, DGX A100 nodes on a 2:1 fat tree (contended spines)", 1024,
     lambda: on_dgx_nodes(1024, "alltoall", "direct", 1 << 28, oversubscription=2)),
    ("data-parallel step, GPT-2 1.5B (symmetry)", 1024, lambda: dp_step("auto")),
    ("data-parallel step, GPT-2 1.5B (every rank)", 1024, lambda: dp_step("full")),
    ("3D step, GPT-3 175B, t=8 p=16 d=8, 192 micro-batches (symmetry)", 1024,
     lambda: dp_step("auto", "gpt3-175b-megatron")),
]


def main() -> None:
    print("| case | devices | wall time (s) | events | events/s | simulated time (s) |")
    print("|---|---:|---:|---:|---:|---:|")
    for label, n, make in CASES:
        walls, result = [], None
        for _ in range(REPEATS):
            scenario = make()
            start = time.perf_counter()
            result = dlsim.simulate(scenario)
            walls.append(time.perf_counter() - start)
        wall = statistics.median(walls)
        events = result.summary["simulation"]["events"]
        simulated = result.summary.get("step_time_s", result.summary.get("time_s"))
        print(f"| {label} | {n:,} | {wall:.3f} | {events:,} | {events / wall:,.0f} | "
              f"{simulated:.4g} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
