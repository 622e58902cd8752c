"""Planner speed and quality: GPT-3 175B on 1,024 A100s (DGX A100 nodes), global batch 1536.

Run: python benchmarks/bench_planner.py  (prints the figures the README quotes).
Measures plans evaluated per second by the closed-form estimate, the engine time spent
confirming the best plans, and compares the winner with the Megatron-LM configuration
(t=8, p=16, d=8, interleaved 1F1B, full recomputation; Narayanan et al. SC'21, Table 1)
simulated by the same engine.
"""

from __future__ import annotations

import time

import dlsim
from dlsim.planner import PlanRequest, run_plan
from dlsim.planner.search import scenario_of
from dlsim.planner.space import Plan


def main() -> None:
    request = PlanRequest("gpt3-175b", "dgx-a100", (1024,), 1536, tokens=300e9, confirm=3)
    start = time.perf_counter()
    result = run_plan(request)
    wall = time.perf_counter() - start
    best = result.plans[0]
    print(f"plans evaluated: {result.evaluated:,} ({result.fitting:,} fit in memory)")
    print(f"estimate: {result.wall_s['estimate']:.2f} s "
          f"({result.evaluated / result.wall_s['estimate']:,.0f} plans/s); engine "
          f"confirmations: {result.wall_s['simulate']:.2f} s; total {wall:.2f} s")
    print(f"best: d={best['data']} t={best['tensor']} p={best['pipeline']} "
          f"b={best['microbatch']} {best['schedule']} v={best['virtual_stages']} "
          f"ZeRO-{best['zero_stage']} recompute={best['recompute']} "
          f"sequence_parallel={best['sequence_parallel']} {best['placement']} "
          f"{best['algorithm']}: {best['step_time_s']:.3f} s/step ({best['step_time_source']})")
    megatron = Plan(1024, 8, 8, 16, 1, "interleaved", 2, 0, "full", "pack", "ring")
    start = time.perf_counter()
    reference = dlsim.simulate(scenario_of(request, megatron, 8))
    print(f"Megatron-LM t=8 p=16 d=8 (interleaved v=2, full recompute): "
          f"{reference.step_time_s:.3f} s/step simulated in {time.perf_counter() - start:.2f} s"
          f"; best plan is {reference.step_time_s / best['step_time_s']:.2f}x as fast")


if __name__ == "__main__":
    main()
