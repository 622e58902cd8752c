"""Simulator speed: wall time and events per second versus device count.

Run: python benchmarks/bench_engine.py  (prints a Markdown table for the README).
Each case is simulated `REPEATS` times and the median wall time is reported; wall time is
measured around dlsim.simulate, so it includes building the topology and routing.

``--family gpt3 --devices 1024 16384`` runs the GPT-3 175B family of issue 15 instead (t=8,
p=16, interleaved, 192 micro-batches per replica: ``bench_side_by_side.gpt3``), with CPU
time beside wall time (on a shared machine the steadier figure); ``--profile N`` prints the
N costliest functions of each run by own time (cProfile), where the time goes.
``--family qwen3`` times one Qwen3-235B-A22B step on 256 H100 in NeMo's layout (EP 32).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

REPEATS = 3
ROOT = Path(__file__).resolve().parents[1]
# this checkout's dlsim, not an installed one (a script's path puts benchmarks/ first)
sys.path.insert(0, str(ROOT))

import dlsim  # noqa: E402


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


def gpt3_family(devices: list[int], sequence_parallel: bool, profile: int) -> None:
    """One GPT-3 175B step per device count: wall and CPU seconds, events, step time."""
    from bench_side_by_side import gpt3  # the same scenarios the side-by-side run uses

    print("| devices | wall time (s) | CPU time (s) | events | simulated time (s) |")
    print("|---:|---:|---:|---:|---:|")
    for n in devices:
        profiler = cProfile.Profile() if profile else None
        start, cpu = time.perf_counter(), time.process_time()
        if profiler is not None:
            profiler.enable()
        result = dlsim.simulate(gpt3(n, sequence_parallel))
        if profiler is not None:
            profiler.disable()
        wall, cpu = time.perf_counter() - start, time.process_time() - cpu
        s = result.summary
        print(f"| {n:,} | {wall:.2f} | {cpu:.2f} | {s['simulation']['events']:,} | "
              f"{s['step_time_s']:.4g} |")
        if profiler is not None:
            pstats.Stats(profiler, stream=sys.stdout).sort_stats("tottime").print_stats(profile)
        sys.stdout.flush()


def qwen3_step() -> None:
    """One Qwen3-235B-A22B step on 256 H100 in NeMo's layout (t=2, p=8, v=4, e=32, FP8,
    global batch 8192 of 4096 tokens, micro-batch 1; issue 13's benchmark), built as the
    NeMo validation row is (``dlsim.validation.modern``): wall and CPU seconds, events."""
    from dlsim.validation.modern import MEGATRON_GRADS, NEMO_MODELS, RECIPES, _training

    model = {**NEMO_MODELS["Qwen3_235B_a22B"], "seq_len": 4096}
    scenario = _training("qwen3-235b-256-h100", model, 256, "fp8", 8192, 1,
                         {"tensor": 2, "pipeline": 8, "context": 1, "expert": 32,
                          "virtual_stages": 4}, tp_comm_overlap=True,
                         grad_dtype=MEGATRON_GRADS, fp8_recipe=RECIPES.get("FP8"))
    start, cpu = time.perf_counter(), time.process_time()
    s = dlsim.simulate(scenario).summary
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    print("| devices | wall time (s) | CPU time (s) | events | simulated time (s) |")
    print("|---:|---:|---:|---:|---:|")
    print(f"| 256 | {wall:.2f} | {cpu:.2f} | {s['simulation']['events']:,} | "
          f"{s['step_time_s']:.4g} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--family", choices=("cases", "gpt3", "qwen3"), default="cases",
                        help="cases: the README table; gpt3: GPT-3 175B at --devices; "
                        "qwen3: one Qwen3-235B-A22B step on 256 H100 (EP 32)")
    parser.add_argument("--devices", type=int, nargs="*", default=[1024, 16384],
                        help="device counts of the gpt3 family (multiples of 128)")
    parser.add_argument("--sequence-parallel", action="store_true")
    parser.add_argument("--profile", type=int, default=0, metavar="N",
                        help="print the N costliest functions of each gpt3 run")
    args = parser.parse_args()
    if args.family == "gpt3":
        gpt3_family(args.devices, args.sequence_parallel, args.profile)
        return
    if args.family == "qwen3":
        qwen3_step()
        return
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
