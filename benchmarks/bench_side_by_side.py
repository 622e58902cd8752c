"""Engine speed against an earlier commit, side by side in one run (issue 15's figures).

Run: git archive <commit> | tar -x -C /tmp/base
     python benchmarks/bench_side_by_side.py /tmp/base [--repeats 3] [--max-devices 16384]

Each case runs in a fresh process per measurement (so peak memory is the case's own),
alternating the two trees, and the median wall time of ``dlsim.simulate`` is reported with
the ratio earlier / this tree, and the ratio of CPU times (on a machine whose load swings,
the steadier of the two). A case whose first run
takes longer than ``--long-s`` on either tree is run once on each. The exponent
is the slope of log wall time against log devices between a family's smallest and largest.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
import dlsim
scenario = json.loads(sys.argv[1])
start, cpu = time.perf_counter(), time.process_time()
result = dlsim.simulate(scenario)
wall, cpu = time.perf_counter() - start, time.process_time() - cpu
s = result.summary
print(json.dumps({"wall_s": wall, "cpu_s": cpu, "events": s["simulation"]["events"],
                  "simulated_s": s.get("step_time_s", s.get("time_s")),
                  "peak_rss_MB": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def gpt3(devices: int, sequence_parallel: bool) -> dict[str, Any]:
    """GPT-3 175B with Megatron's layout (t=8, p=16, interleaved, 2 chunks), 192
    micro-batches per replica whatever the data-parallel degree (so the work per replica,
    and the simulated step, stay the same as N grows)."""
    data = devices // 128
    return {"name": f"gpt3-{devices}", "model": {"preset": "gpt3-175b"},
            "cluster": {"preset": "dgx-a100", "nodes": devices // 8}, "precision": "bf16",
            "training": {"global_batch": 192 * data, "microbatch": 1, "optimizer": "adam"},
            "parallelism": {"data": data, "tensor": 8, "pipeline": 16,
                            "schedule": "interleaved", "virtual_stages": 2,
                            "sequence_parallel": sequence_parallel, "recompute": "full"},
            "placement": "pack"}


def korthikanti_1t() -> dict[str, Any]:
    """The 1T-parameter GPT of Korthikanti et al. (2022), Table 3: 512 GPUs, t=8, p=64,
    512 micro-batches of 1, sequence parallelism and selective recomputation."""
    return {"name": "megatron-1t", "model": {"preset": "megatron-1t"},
            "cluster": {"preset": "dgx-a100", "nodes": 64}, "precision": "bf16",
            "training": {"global_batch": 512, "microbatch": 1, "optimizer": "adam"},
            "parallelism": {"data": 1, "tensor": 8, "pipeline": 64, "schedule": "1f1b",
                            "sequence_parallel": True, "recompute": "selective"},
            "placement": "pack"}


def dp_slow_gpu(devices: int) -> dict[str, Any]:
    """GPT-2 1.5B data parallel, every rank simulated because device 3 computes 1.5x long."""
    return {"name": f"gpt2-dp-{devices}", "model": {"preset": "gpt2-1.5b"},
            "cluster": {"preset": "dgx-a100", "nodes": devices // 8, "fabric": "fat-tree",
                        "nics_per_leaf": 32},
            "precision": "bf16",
            "training": {"global_batch": 2 * devices, "microbatch": 2, "optimizer": "adam"},
            "communication": {"data_parallel": "ring"}, "stragglers": {"fixed": {3: 1.5}}}


def ring(devices: int) -> dict[str, Any]:
    return {"name": f"ring-{devices}", "kind": "collective",
            "cluster": {"preset": "dgx-a100", "nodes": devices // 8},
            "collective": {"op": "allreduce", "algorithm": "ring", "size_bytes": 1 << 30}}


FAMILIES: list[tuple[str, list[tuple[int, Any]]]] = [
    ("GPT-3 175B, t=8 p=16, interleaved (symmetry)",
     [(n, lambda n=n: gpt3(n, False)) for n in (1024, 4096, 16384)]),
    ("ring all-reduce 1 GiB, DGX A100 nodes", [(n, lambda n=n: ring(n)) for n in (1024, 4096)]),
    ("GPT-3 175B, t=8 p=16, interleaved, sequence parallel (symmetry)",
     [(n, lambda n=n: gpt3(n, True)) for n in (1024, 4096, 16384)]),
    ("Megatron 1T, t=8 p=64, 512 micro-batches (Korthikanti et al.)",
     [(512, korthikanti_1t)]),
    ("GPT-2 1.5B data parallel, one GPU 1.5x slow (every rank)",
     [(n, lambda n=n: dp_slow_gpu(n)) for n in (256, 1024)]),
]


def measure(tree: Path, scenario: dict[str, Any], timeout_s: float) -> dict[str, Any] | None:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    try:
        # run in the tree: ``python -c`` puts the working directory first on sys.path
        done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(scenario)], env=env,
                              cwd=tree, capture_output=True, text=True, timeout=timeout_s,
                              check=True)
    except subprocess.TimeoutExpired:
        return None
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("base", type=Path, help="the earlier commit's tree")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-devices", type=int, default=16384)
    parser.add_argument("--only", nargs="*", default=[""],
                        help="run only the families whose label contains one of these texts")
    parser.add_argument("--long-s", type=float, default=40.0,
                        help="a case whose first run takes longer is run once on each tree")
    args = parser.parse_args()
    print("| case | devices | this tree (s) | earlier (s) | earlier / this | CPU time, earlier / "
          "this | events | peak memory (MB) |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for label, sizes in FAMILIES:
        if not any(text in label for text in args.only):
            continue
        points = []
        for n, make in sizes:
            if n > args.max_devices:
                continue
            scenario = make()
            new, old = [], []
            for _ in range(args.repeats):
                new.append(measure(ROOT, scenario, 600))
                old.append(measure(args.base, scenario, 600))
                if max(m["wall_s"] if m else 600.0 for m in new + old) > args.long_s:
                    break  # a long case: one run each
            new_ok = [m for m in new if m]
            old_ok = [m for m in old if m]
            wall = statistics.median(m["wall_s"] for m in new_ok)
            base_wall = statistics.median(m["wall_s"] for m in old_ok) if old_ok else None
            points.append((n, wall))
            runs = f" ({len(new_ok)} run{'s' if len(new_ok) > 1 else ''})"
            earlier = f"{base_wall:.2f}" if base_wall else "over 600"
            ratio = f"{base_wall / wall:.2f}x" if base_wall else "-"
            cpu_ratio = (statistics.median(m["cpu_s"] for m in old_ok)
                         / statistics.median(m["cpu_s"] for m in new_ok)) if old_ok else None
            cpu = f"{cpu_ratio:.2f}x" if cpu_ratio else "-"
            print(f"| {label} | {n:,} | {wall:.3f}{runs} | {earlier} | {ratio} | {cpu} | "
                  f"{new_ok[0]['events']:,} | {max(m['peak_rss_MB'] for m in new_ok):,.0f} |")
            sys.stdout.flush()
        if len(points) > 1:
            (n0, w0), (n1, w1) = points[0], points[-1]
            print(f"| {label}: wall time ~ N^{math.log(w1 / w0) / math.log(n1 / n0):.2f} "
                  f"({n0:,} to {n1:,}) | | | | | | | |")


if __name__ == "__main__":
    main()
