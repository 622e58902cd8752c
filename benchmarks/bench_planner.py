"""Planner speed and breadth: the plan space and how fast the planner goes through it.

Run: python benchmarks/bench_planner.py [--model gpt3-175b --cluster dgx-a100 --gpus 1024
     --global-batch 1536] [--confirm 3] [--workers N] [--against /work/main]
(the README's and docs/questions/18-planner-space.md's figures). It prints the space
(plans enumerated, feasible by the engine's rules, fitting in memory, estimated, pruned),
the estimate's wall and CPU time and plans per second, the engine confirmations (on one
process per CPU, as ``dlsim plan`` runs them, unless ``--workers``), and the best plan;
CPU time is this process's only. ``--against TREE`` runs the same request with TREE's
dlsim first (another checkout, e.g. main before the wider space) in a subprocess and prints
both side by side with the ratios. ``--target-loss 2.0`` plans to that loss, the global
batch searched around B_crit (the request of issue 18's 60 s target). Llama-3.1 405B on
8,192 H100 (1,024 DGX H100): ``--model llama-3.1-405b --cluster dgx-h100 --gpus 8192
--global-batch 2048``; ``--model`` also takes a Hugging Face config.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path


def measure(model: str, cluster: str, gpus: int, global_batch: int, confirm: int,
            max_plans: int, workers: int | None = None,
            target_loss: float | None = None) -> dict:
    from dlsim.planner import PlanRequest, run_plan

    fields = PlanRequest.__dataclass_fields__
    request = PlanRequest(model, cluster, (gpus,), global_batch, confirm=confirm,
                          **({"max_plans": max_plans} if "max_plans" in fields else {}),
                          **({"workers": workers} if "workers" in fields else {}),
                          **({"target_loss": target_loss} if target_loss else {}))
    wall, cpu = time.perf_counter(), time.process_time()
    result = run_plan(request)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    space = getattr(result, "space", None) or {"enumerated": result.evaluated,
                                                "feasible": result.evaluated,
                                                "fitting": result.fitting,
                                                "estimated": result.fitting, "pruned": 0}
    best = result.plans[0]
    keys = ("data", "tensor", "pipeline", "context", "expert", "microbatch", "schedule",
            "virtual_stages", "zero_stage", "shard_group", "recompute", "sequence_parallel",
            "tp_comm_overlap", "offload", "placement", "algorithm", "protocol")
    return {"space": space, "estimate_wall_s": result.wall_s["estimate"],
            "simulate_wall_s": result.wall_s["simulate"], "wall_s": wall, "cpu_s": cpu,
            "best": {k: best[k] for k in keys if k in best},
            "best_step_s": best["step_time_s"], "best_source": best["step_time_source"],
            "best_estimate_s": best["estimated_step_time_s"],
            "best_memory_gb": best["memory_per_device_bytes"] / 1e9}


def report(name: str, m: dict) -> None:
    s = m["space"]
    print(f"[{name}] space: {s['enumerated']:,} plans enumerated, {s['feasible']:,} "
          f"feasible, {s['fitting']:,} fit in memory, {s['estimated']:,} estimated, "
          f"{s['pruned']:,} pruned")
    print(f"[{name}] estimate: {m['estimate_wall_s']:.1f} s wall "
          f"({s['enumerated'] / m['estimate_wall_s']:,.0f} plans enumerated/s, "
          f"{s['feasible'] / m['estimate_wall_s']:,.0f} feasible plans/s); engine "
          f"confirmations {m['simulate_wall_s']:.1f} s; total {m['wall_s']:.1f} s wall, "
          f"{m['cpu_s']:.1f} s CPU")
    print(f"[{name}] best: {m['best']}: {m['best_step_s']:.3f} s/step ({m['best_source']}; "
          f"estimate {m['best_estimate_s']:.3f} s), {m['best_memory_gb']:.1f} GB per GPU")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="gpt3-175b")
    parser.add_argument("--cluster", default="dgx-a100")
    parser.add_argument("--gpus", type=int, default=1024)
    parser.add_argument("--global-batch", type=int, default=1536)
    parser.add_argument("--confirm", type=int, default=3)
    parser.add_argument("--max-plans", type=int, default=10**9)
    parser.add_argument("--workers", type=int, default=None,
                        help="confirmation processes (default: one per CPU, as dlsim plan)")
    parser.add_argument("--target-loss", type=float, default=None,
                        help="plan to a target loss (the global batch searched around it)")
    parser.add_argument("--against", type=Path, help="another dlsim tree to compare with")
    parser.add_argument("--json", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    request = (args.model, args.cluster, args.gpus, args.global_batch, args.confirm,
               args.max_plans, args.workers, args.target_loss)
    if args.json:
        print(json.dumps(measure(*request)))
        return
    if args.against is not None:
        argv = [sys.executable, __file__, "--json", *sys.argv[1:]]
        cut = argv.index("--against")
        argv[cut:cut + 2] = []
        env = {**os.environ, "PYTHONPATH": str(args.against.resolve())}
        old = json.loads(subprocess.run(argv, env=env, check=True, capture_output=True,
                                        text=True, cwd=args.against).stdout)
        report(str(args.against), old)
    new = measure(*request)
    report("this tree", new)
    if args.against is not None:
        s, o = new["space"], old["space"]
        rate = ((s["enumerated"] / new["estimate_wall_s"])
                / (o["enumerated"] / old["estimate_wall_s"]))
        print(f"ratios (this tree / {args.against}): space "
              f"{s['enumerated'] / o['enumerated']:.0f}x, estimate wall "
              f"{new['estimate_wall_s'] / old['estimate_wall_s']:.2f}x, plans enumerated "
              f"per second {rate:.1f}x, best step {new['best_step_s'] / old['best_step_s']:.3f}x")


if __name__ == "__main__":
    main()
