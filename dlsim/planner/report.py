"""The planner's page: the answer first (the winner's layout in words, its step time, time to
train, cost, energy and memory per GPU), then why it wins, the Pareto front, and the top
plans in a sortable table of only the columns that tell them apart."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlsim.planner.loss_report import batch_figure, loss_cards
from dlsim.planner.models import model_name
from dlsim.planner.search import PlanResult
from dlsim.report import plots
from dlsim.report.sections import environment
from dlsim.report.units import (
    Card,
    format_bytes,
    format_count,
    format_energy,
    format_number,
    format_seconds,
    format_usd,
    scaled,
)

# the plan's fields in the table, in this order, where they differ between the top plans
LAYOUT_COLUMNS = ("gpus", "global_batch", "data", "tensor", "pipeline", "context", "expert",
                  "expert_tensor",
                  "microbatch", "schedule", "virtual_stages", "zero_stage", "shard_group",
                  "recompute", "sequence_parallel", "tp_comm_overlap", "offload", "placement",
                  "algorithm", "protocol")
RESULT_COLUMNS = ("step_time_s", "step_time_source", "steps_to_target", "time_to_train_s",
                  "cost_usd",
                  "energy_kwh", "memory_per_device_bytes")
HEADINGS = {"gpus": "GPUs", "global_batch": "global batch", "data": "data",
            "tensor": "tensor", "pipeline": "pipeline",
            "context": "context", "expert": "expert", "expert_tensor": "expert tensor",
            "microbatch": "micro-batch", "schedule": "schedule", "virtual_stages": "virtual",
            "zero_stage": "ZeRO", "shard_group": "shard group", "recompute": "recompute",
            "sequence_parallel": "seq. parallel", "tp_comm_overlap": "TP overlap",
            "offload": "offload",
            "placement": "placement", "algorithm": "DP algorithm", "protocol": "protocol",
            "step_time_s": "step", "step_time_source": "from",
            "steps_to_target": "steps to target",
            "time_to_train_s": "time to train", "cost_usd": "cost",
            "energy_kwh": "energy", "memory_per_device_bytes": "memory / GPU"}


def format_duration(seconds: float) -> str:
    """Time to train as people say it: 45 s, 12 min, 5.2 h, 3.4 days, 1.2 years."""
    for scale, unit in ((365.25 * 86400, "years"), (86400, "days"), (3600, "h"), (60, "min")):
        if seconds >= scale:
            return scaled(seconds / scale, ((1.0, unit),), " ")
    return format_seconds(seconds)


def _usd(usd: float | None) -> str:
    return "unpriced" if usd is None else format_usd(usd)


def _cut(stages: int, layers: int) -> str:
    if layers % stages == 0:
        return f"{stages} pipeline stages of {layers // stages} layers"
    return f"{stages} pipeline stages of {layers // stages}-{-(-layers // stages)} layers"


def layout_in_words(row: dict[str, Any], layers: int, devices_per_node: int) -> str:
    """'8-way tensor parallel inside each node, 8 pipeline stages of 10 layers, 16
    data-parallel replicas, ZeRO-1, selective recomputation': the plan as an engineer says
    it; degrees of 1 and defaults are left out."""
    t, p, c, d = row["tensor"], row["pipeline"], row["context"], row["data"]
    parts = []
    if t > 1:
        where = ("inside each node" if t <= devices_per_node
                 else f"across {t // devices_per_node} nodes of one NVLink domain")
        sp = " with sequence parallelism" if row.get("sequence_parallel") else ""
        if row.get("tp_comm_overlap"):
            sp += " and its collectives overlapped with the GEMMs (TP overlap)"
        parts.append(f"{t}-way tensor parallel {where}{sp}")
    if c > 1:
        parts.append(f"{c}-way context parallel (ring attention)")
    if p > 1:
        v = row["virtual_stages"]
        chunks = f", {v} interleaved chunks each" if v > 1 else ""
        parts.append(f"{_cut(p, layers)} ({row['schedule']}{chunks})")
    if row["expert"] > 1:
        et = row["expert_tensor"]
        parts.append(f"{row['expert']}-way expert parallel"
                     + (f" with {et}-way expert tensor parallel" if et > 1 else ""))
    parts.append(f"{d} data-parallel replica{'s' if d > 1 else ''}" if d > 1
                 else "no data parallelism")
    zero = row["zero_stage"]
    if zero:
        group = row.get("shard_group")
        parts.append(f"ZeRO-{zero}" + (f" sharded in groups of {group}" if group else ""))
    recompute = {"none": "no recomputation", "selective": "selective recomputation",
                 "full": "full recomputation"}.get(row["recompute"], row["recompute"])
    parts.append(recompute)
    parts.append(f"micro-batch {row['microbatch']}")
    if row.get("offload", "none") != "none":
        parts.append(f"{row['offload']} offloaded to the host")
    return ", ".join(parts)


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


@dataclass(frozen=True)
class Cell:
    """A table cell: the text shown, and the value its column sorts by."""

    text: str
    key: str


def _cell(column: str, value: Any) -> Cell:
    text = {"step_time_s": format_seconds, "time_to_train_s": format_duration,
            "memory_per_device_bytes": format_bytes,
            "energy_kwh": lambda kwh: format_energy(kwh * 3.6e6),
            }.get(column, format_number)
    if column == "cost_usd":
        return Cell(_usd(value), "" if value is None else repr(float(value)))
    if value is None:
        return Cell("–", "")
    shown = text(value) if column in ("step_time_s", "time_to_train_s", "energy_kwh",
                                      "memory_per_device_bytes") else format_number(value)
    number = isinstance(value, int | float) and not isinstance(value, bool)
    return Cell(shown, repr(float(value)) if number else str(value))


def differing_columns(plans: list[dict[str, Any]]) -> list[str]:
    """The plan fields whose values are not the same in every row (all of them for one
    plan: nothing to compare it with), then the result columns."""
    if len(plans) < 2:
        keep = [c for c in LAYOUT_COLUMNS if c in plans[0]] if plans else []
    else:
        keep = [c for c in LAYOUT_COLUMNS if len({str(p.get(c)) for p in plans}) > 1]
    return keep + [c for c in RESULT_COLUMNS
                   if c != "steps_to_target" or any(c in p for p in plans)]


def render_plan(result: PlanResult) -> str:
    r = result.request
    best = result.plans[0] if result.plans else None
    size = result.space
    name = model_name(r.model)
    answer, cards = "", []
    if best is not None:
        from dlsim.hardware import profiles as hardware
        from dlsim.planner.models import model_shape

        per_node = hardware.system(r.cluster).devices_per_node
        layout = layout_in_words(best, model_shape(r.model).layers, per_node)
        amount = (f" {format_count(r.tokens)} tokens" if r.tokens else
                  f" to loss {r.target_loss:g} at a global batch of {best['global_batch']:,}"
                  if r.target_loss is not None else " (one step)")
        answer = (f"Train {name} on {best['gpus']:,} {r.cluster} GPUs as {layout}: "
                  f"{format_seconds(best['step_time_s'])} per step "
                  f"({best['step_time_source']}), "
                  f"{format_duration(best['time_to_train_s'])} to train{amount}.")
        cards += [Card.of("Step time", format_seconds(best["step_time_s"]),
                          best["step_time_source"], "good"),
                  Card.of("Time to train", format_duration(best["time_to_train_s"]),
                          f"{format_count(r.tokens)} tokens" if r.tokens else
                          f"to loss {r.target_loss:g}" if r.target_loss is not None
                          else "one step"),
                  Card.of("Cost", _usd(best["cost_usd"]),
                          "device-hours × hourly price"),
                  Card.of("Energy", format_energy(best["energy_kwh"] * 3.6e6),
                          "idle + dynamic power by activity"),
                  Card.of("Memory per GPU", format_bytes(best["memory_per_device_bytes"]),
                          f"{best['gpus']:,} GPUs")]
    skipped = (f"; {size['pruned']:,} skipped unchecked: their bound is slower than the top"
               if size.get("pruned") else "")
    cards.append(Card("Plans searched", f"{size['enumerated']:,}",
                      detail=f"{size['feasible']:,} checked and feasible, {result.fitting:,} "
                             f"fit in memory and estimated{skipped}"))
    if result.smallest_gpus_meeting_deadline is not None:
        cards.append(Card("Smallest cluster", f"{result.smallest_gpus_meeting_deadline:,}",
                          "GPUs", f"meets {r.max_days:g} days"))
    candidates = [c for c in result.candidates if c["cost_usd"] is not None]
    image = pareto_scatter(candidates, result.pareto, r.max_days) if candidates else ""
    loss = result.time_to_loss
    loss_image = batch_figure(loss) if loss else ""
    columns = differing_columns(result.plans)
    rows = [[_cell(c, p.get(c)) for c in columns] for p in result.plans]
    return environment().get_template("plan.html").render(
        title=f"Plan: {name} on {r.cluster}",
        subtitle=(f"plan · objective {r.objective} · target loss {r.target_loss:g}"
                  if loss else f"plan · objective {r.objective} · global batch "
                  f"{r.global_batch:,}"),
        answer=answer, cards=cards, explanation=result.explanation,
        loss_image=loss_image, loss_cards=loss_cards(loss, best) if loss else [],
        loss_batches=", ".join(f"{b:,}" for b in loss["batches"]) if loss else "",
        evaluated=f"{result.fitting:,}", pareto=image,
        columns=[HEADINGS[c] for c in columns], rows=rows,
        same=[f"{HEADINGS[c]} {format_number(best.get(c))}" for c in LAYOUT_COLUMNS
              if c not in columns and c in best] if best is not None else [])
