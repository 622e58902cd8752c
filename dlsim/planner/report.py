"""The planner's page: headline cards, why the winner wins, the Pareto front, the top plans."""

from __future__ import annotations

from typing import Any

from dlsim.planner.models import model_name
from dlsim.planner.search import PlanResult
from dlsim.report import plots
from dlsim.report.sections import environment
from dlsim.report.units import Card, format_bytes, format_number, format_seconds

COLUMNS = ("gpus", "data", "tensor", "pipeline", "context", "expert", "microbatch", "schedule",
           "virtual_stages", "zero_stage", "shard_group", "recompute", "sequence_parallel",
           "offload", "placement", "algorithm", "protocol", "step_time_s",
           "step_time_source", "time_to_train_s", "cost_usd", "energy_kwh",
           "memory_per_device_bytes")


def pareto_scatter(candidates: list[dict[str, Any]], front: list[dict[str, Any]],
                   deadline_days: float | None) -> str:
    """Every fitting plan as a dot, the front as a line: the plans worth considering."""
    fig = plots._new_figure(7.5, 3.6)
    ax = fig.add_subplot()
    days = [r["time_to_train_s"] / 86400 for r in candidates]
    cost = [r["cost_usd"] for r in candidates]
    ax.scatter(days, cost, s=6, color="#9A9A9A", alpha=0.5, label="plans (estimate)")
    ax.plot([r["time_to_train_s"] / 86400 for r in front], [r["cost_usd"] for r in front],
            marker="o", color="#4C72B0", label="Pareto front")
    for r in front:
        ax.annotate(f"{r['gpus']:,} GPUs", (r["time_to_train_s"] / 86400, r["cost_usd"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7)
    if deadline_days is not None:
        ax.axvline(deadline_days, color="#C44E52", linestyle="--", linewidth=1,
                   label=f"deadline {deadline_days:g} days")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.legend(fontsize=8, frameon=False)
    plots._style(ax, "Time to train against cost", "days", "USD")
    return plots._to_data_uri(fig)


def render_plan(result: PlanResult) -> str:
    r = result.request
    best = result.plans[0] if result.plans else None
    size = result.space
    cards = [Card("Plans searched", f"{size['enumerated']:,}",
                  detail=f"{size['feasible']:,} feasible, {result.fitting:,} fit in memory"),
             Card("GPUs", ", ".join(f"{g:,}" for g in r.gpus), detail=r.cluster)]
    if best is not None:
        cards.append(Card.of("Best step time", format_seconds(best["step_time_s"]),
                             best["step_time_source"], "good"))
        cards.append(Card("Time to train", f"{best['time_to_train_s'] / 86400:.3g}", "days",
                          f"{r.tokens:.3g} tokens" if r.tokens else "one step"))
        if best["cost_usd"] is not None:
            cards.append(Card("Cost", f"{best['cost_usd'] / 1e3:,.0f}", "kUSD",
                              "device-hours × hourly price"))
        cards.append(Card("Energy", f"{best['energy_kwh'] / 1e3:,.3g}", "MWh",
                          "at board power"))
        cards.append(Card.of("Memory per device", format_bytes(best["memory_per_device_bytes"])))
    if result.smallest_gpus_meeting_deadline is not None:
        cards.append(Card("Smallest cluster", f"{result.smallest_gpus_meeting_deadline:,}",
                          "GPUs", f"meets {r.max_days:g} days"))
    candidates = [c for c in result.candidates if c["cost_usd"] is not None]
    image = pareto_scatter(candidates, result.pareto, r.max_days) if candidates else ""
    rows = [[format_number(p.get(c)) for c in COLUMNS] for p in result.plans]
    return environment().get_template("plan.html").render(
        title=f"Plan: {model_name(r.model)} on {r.cluster}",
        subtitle=f"plan · objective {r.objective} · global batch {r.global_batch:,}",
        cards=cards, explanation=result.explanation, evaluated=f"{result.evaluated:,}",
        pareto=image, columns=COLUMNS, rows=rows)
