"""Federated simulator speed: 10,000 clients, 100 per round, 200 rounds.

Run: python benchmarks/bench_federated.py  (prints a Markdown table for the README).
Each case is simulated `REPEATS` times; the median wall time and the median process CPU
time are reported (the CPU time is what the simulator costs when the machine is shared).
Wall time is measured around dlsim.simulate, so it includes building the population.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

import yaml

import dlsim

REPEATS = 3
ROOT = Path(__file__).resolve().parents[1]


def bundled(name: str) -> dict:
    return yaml.safe_load((ROOT / "scenarios" / f"{name}.yaml").read_text())


def unlimited_server(name: str) -> dict:
    data = bundled(name)
    data["federated"].pop("server")
    return data


CASES = [
    ("FedAvg, over-commit 1.3, 1 Gb/s shared server link (federated-phones)",
     lambda: bundled("federated-phones")),
    ("FedAvg, over-commit 1.3, server link never binds", lambda: unlimited_server(
        "federated-phones")),
    ("FedBuff, 100 concurrent, buffer 10 (federated-fedbuff)",
     lambda: bundled("federated-fedbuff")),
]


def main() -> None:
    print("| case | clients | rounds | wall time (s) | CPU time (s) | events "
          "| simulated time (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for label, make in CASES:
        walls, cpus, result = [], [], None
        for _ in range(REPEATS):
            scenario = make()
            start, cpu = time.perf_counter(), time.process_time()
            result = dlsim.simulate(scenario)
            walls.append(time.perf_counter() - start)
            cpus.append(time.process_time() - cpu)
        s = result.summary
        print(f"| {label} | {s['clients']:,} | {s['rounds']} | {statistics.median(walls):.2f} | "
              f"{statistics.median(cpus):.2f} | {s['simulation']['events']:,} | "
              f"{s['time_to_rounds_s']:.4g} |")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
