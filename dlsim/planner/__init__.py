"""Capacity planning: which data/tensor/pipeline plan to run, on how many devices.

``run_plan`` is the entry point; ``space`` enumerates plans, ``estimate`` ranks them in
closed form, ``search`` filters, ranks and confirms with the engine, ``report`` draws them.
"""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

from dlsim.output import slug, to_json, write_report_dir
from dlsim.planner.models import model_name
from dlsim.planner.search import PlanRequest, PlanResult
from dlsim.planner.search import plan as run_plan

__all__ = ["PlanRequest", "PlanResult", "plan_to_json", "run_plan", "write_plan"]


def plan_summary(result: PlanResult) -> dict:
    """What `dlsim plan --json` prints and summary.json holds."""
    return {"evaluated": result.evaluated, "fitting": result.fitting, "space": result.space,
            "request": asdict(result.request),
            "plans": result.plans, "pareto": result.pareto,
            "explanation": result.explanation,
            "smallest_gpus_meeting_deadline": result.smallest_gpus_meeting_deadline,
            **({"time_to_loss": result.time_to_loss} if result.time_to_loss else {})}


def plan_to_json(result: PlanResult) -> str:
    return to_json(plan_summary(result))


def write_plan(result: PlanResult, out_dir: Path) -> Path:
    """reports/plan-<model>-<cluster>/: summary.json, plans.csv (every plan estimated: those
    that fit and could reach the top, or every one that fits with ``--all-plans``),
    index.html."""
    import pandas as pd

    from dlsim.planner.report import render_plan

    r = result.request
    table = pd.DataFrame([{k: v for k, v in row.items() if not isinstance(v, dict)}
                          for row in result.candidates])
    return write_report_dir(out_dir / slug(f"plan-{model_name(r.model)}-{r.cluster}"), {
        "summary.json": plan_to_json(result), "plans.csv": table.to_csv(index=False),
        "index.html": render_plan(result)})
