"""HTML pages for a training step, a collective and a parameter sweep.

Reports read results, they never re-simulate (STYLE.md). Every entry point is pure: it
returns one self-contained page (inline CSS, plots as base64 PNG data URIs, no JavaScript) and
leaves writing it to the caller, which writes files atomically. Every string that came from a
scenario is escaped by jinja2's autoescaping, so a scenario name cannot inject markup. The
page of a run is chosen by its kind in ``dlsim.report.kinds``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from dlsim.report import plots
from dlsim.report.sections import environment, scenario_yaml, simulation_line, timeline_section
from dlsim.report.sync import sync_section
from dlsim.report.topology import aggregate
from dlsim.report.units import (
    Card,
    axis_label,
    format_bytes,
    format_count,
    format_energy,
    format_number,
    format_power,
    format_seconds,
    format_usd,
    significant,
)
from dlsim.results.result import Result
from dlsim.results.scaling import (
    AMDAHL_PARAMETERS,
    USL_PARAMETERS,
    GroupScaling,
    amdahl_speedup,
    enough_points,
    usl_capacity,
)

BUSIEST_LINKS = 10
TOPOLOGY_MAX_CABLES = 64
TOPOLOGY_MAX_VERTICES = 40  # more ends than this: drawn aggregated
_BREAKDOWN_ORDER = ("compute", "exposed_comm", "bubble", "straggler_wait", "idle")
_MEMORY_ORDER = ("params", "grads", "optimizer", "activations")
_LINK_COLUMNS = ("src", "dst", "bandwidth_GBps", "bytes", "busy_s", "utilisation")


def _card(s: Mapping[str, Any], key: str, label: str, fmt: Callable[[Any], str],
          detail: str = "") -> list[Card]:
    """A card for ``s[key]`` when the summary has it, else none."""
    return [Card.of(label, fmt(s[key]), detail)] if s.get(key) is not None else []


def _collective_cards(s: Mapping[str, Any]) -> list[Card]:
    """A collective's headline numbers, the way nccl-tests reports them."""
    op = ([Card("Collective", str(s["op"]), detail=f"algorithm: {s.get('algorithm', '?')}")]
          if s.get("op") is not None else [])
    return [*op,
            *_card(s, "devices", "Devices", lambda v: f"{v:,}"),
            *_card(s, "size_bytes", "Message size", format_bytes),
            *_card(s, "time_s", "Time", format_seconds),
            *_card(s, "algbw_GBps", "Algorithm bandwidth", lambda v: f"{significant(v)} GB/s",
                   "size / time"),
            *_card(s, "busbw_GBps", "Bus bandwidth", lambda v: f"{significant(v)} GB/s",
                   "as nccl-tests reports"),
            *_card(s, "comm_bytes_total", "Communication", format_bytes,
                   "bytes sent by all devices"),
            *_card(s, "energy_J", "Energy", format_energy, _average_power(s)),
            *_card(s, "cost_usd", "Cost", format_usd, "devices x time x hourly price")]


def _average_power(s: Mapping[str, Any]) -> str:
    watts = s.get("average_power_W")
    return f"average {format_power(watts)} per device" if watts is not None else ""


def _energy_cards(s: Mapping[str, Any]) -> list[Card]:
    """Energy and cost per step, and per token (or per sample for models without one)."""
    unit = "token" if "energy_per_token_J" in s else "sample"
    per_energy, per_cost = s.get(f"energy_per_{unit}_J"), s.get(f"cost_per_{unit}_usd")
    return [*_card(s, "energy_per_step_J", "Energy per step", format_energy,
                   " · ".join(x for x in (_average_power(s), f"{format_energy(per_energy)} "
                              f"per {unit}" if per_energy is not None else "") if x)),
            *_card(s, "cost_per_step_usd", "Cost per step", format_usd,
                   f"{format_usd(per_cost * 1e6)} per million {unit}s"
                   if per_cost is not None else "")]


def _training_cards(s: Mapping[str, Any]) -> list[Card]:
    """A training step's headline numbers; those the summary lacks are left out."""
    cards = [
        *_card(s, "step_time_s", "Step time", format_seconds),
        *_card(s, "throughput_samples_per_s", "Throughput",
               lambda v: f"{significant(v)} samples/s"),
        *_card(s, "time_to_accuracy_s", "Time to accuracy", format_seconds,
               "steps to the target x time per step"),
        *_card(s, "tflops_per_device", "Per device", lambda v: f"{significant(v)} TFLOP/s"),
        *_card(s, "mfu", "MFU", lambda v: f"{v * 100:.1f} %", "model FLOPs utilisation"),
        *_card(s, "parameters", "Parameters", format_count)]
    mem, cap, fits = (s.get(k) for k in
                      ("memory_per_device_bytes", "memory_capacity_bytes", "fits_in_memory"))
    if mem is not None:
        detail = f"of {format_bytes(cap)}" if cap else ""
        if fits is not None:
            detail = f"{detail} · {'fits' if fits else 'does not fit'}".strip(" ·")
        tone = "" if fits is None else ("good" if fits else "bad")
        cards.append(Card.of("Memory per device", format_bytes(mem), detail, tone))
    unmapped = (s.get("trace") or {}).get("unmapped") or {}
    return (cards + _card(s, "comm_bytes_total", "Communication", format_bytes,
                          "bytes sent by all devices") + _energy_cards(s)
            + _card(s, "unmapped_trace_nodes", "Unmapped trace nodes", format_count,
                    ", ".join(f"{name} ×{n}" for name, n in unmapped.items())
                    or "every trace node ran or was a view, annotation or wrapper")
            + _card(s, "trace_groups_assumed", "Process groups assumed", format_count,
                    "communication ops whose group the trace does not name (gloo records "
                    "none): run over the world group"))


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", format_number(value)))
    return rows


def _in_order(values: Mapping[str, Any], order: tuple[str, ...]) -> dict[str, float]:
    """``values`` as floats, the known keys in ``order`` first, any others after them."""
    ordered = {k: float(values[k]) for k in order if k in values}
    ordered.update({k: float(v) for k, v in values.items() if k not in ordered})
    return ordered


def _breakdown_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    parts = s.get("breakdown_s") or {}
    if not parts:
        return None
    ordered = _in_order(parts, _BREAKDOWN_ORDER)
    total = sum(ordered.values())
    step = float(s.get("step_time_s") or total)
    rows = [(k.replace("_", " "), format_seconds(v), f"{100 * v / step:.1f} %" if step else "–")
            for k, v in ordered.items()]
    mismatch = ""
    if step and abs(total - step) > 1e-3 * step:
        mismatch = (f"The parts sum to {format_seconds(total)}, not the step time "
                    f"{format_seconds(step)}.")
    axes = s.get("communication_by_axis") or {}
    axis_rows = [(axis, format_bytes(a["bytes"]), format_seconds(a["time_s"]),
                  format_seconds(a["exposed_s"])) for axis, a in axes.items()]
    stage_rows, stage_note = _stage_rows(s.get("breakdown_by_stage_s") or [], step)
    return {"image": plots.breakdown_bar(ordered), "rows": rows,
            "total": format_seconds(total), "mismatch": mismatch, "axes": axis_rows,
            "stages": stage_rows, "stages_note": stage_note}


def _stage_rows(stages: Sequence[Mapping[str, float]], step: float
                ) -> tuple[list[tuple[str, ...]], str]:
    """One row per run of consecutive pipeline stages alike to 1 % of the step (their mean),
    and which stage sets the pace: a stage that ends last need not be the busiest, and then
    its bubble is also the wait for the busiest one."""
    if not stages or not step:
        return [], ""
    parts = np.array([[p["compute"], p["exposed_comm"], p["bubble"]] for p in stages])
    busy = parts[:, 0] + parts[:, 1]
    rows: list[tuple[str, ...]] = []
    busiest, first = "", 0
    for s in range(1, len(stages) + 1):
        if s < len(stages) and np.abs(parts[s] - parts[first]).max() <= 0.01 * step:
            continue
        compute, exposed, bubble = parts[first:s].mean(axis=0)
        label = f"{first}" if first == s - 1 else f"{first}–{s - 1}"
        rows.append((label, format_seconds(compute), format_seconds(exposed),
                     format_seconds(bubble), f"{100 * (compute + exposed) / step:.1f} %"))
        if first <= busy.argmax() < s:
            busiest = f"Stage {label} is" if first == s - 1 else f"Stages {label} are"
        first = s
    note = (f"{busiest} the busiest: {format_seconds(busy.max())} of compute and "
            f"exposed communication a step; the least busy, "
            f"{format_seconds(busy.min())}. Every micro-batch waits for the busiest stage, so "
            f"on the others the bubble is the fill and drain and that wait."
            if busy.max() > 1.01 * busy.min() else
            "The stages are equally busy: the bubble is the pipeline's fill and drain.")
    return rows, note


def _overflow_message(parts: Mapping[str, float], total: float, capacity: float) -> str:
    """Say how far over capacity it is and which component takes it over."""
    over = total - capacity
    if over <= 0:
        return (f"The simulator reports that this does not fit: {format_bytes(total)} per "
                f"device against {format_bytes(capacity)} of capacity.")
    message = (f"Does not fit: {format_bytes(total)} needed per device against "
               f"{format_bytes(capacity)} of capacity, {format_bytes(over)} "
               f"({100 * over / capacity:.1f} %) over.")
    cumulative = 0.0
    before: list[str] = []
    for name, nbytes in parts.items():
        if cumulative + nbytes > capacity:
            if not before:
                return f"{message} The {name} alone ({format_bytes(nbytes)}) exceed the capacity."
            return (f"{message} {' + '.join(before)} ({format_bytes(cumulative)}) fit; "
                    f"the {name} ({format_bytes(nbytes)}) take it over.")
        cumulative += nbytes
        before.append(name)
    return message


def _savings_message(savings: Mapping[str, float], capacity: float) -> str:
    """What each usual saving, added in turn, would bring the plan to (the simulator's
    ``memory_savings_bytes``, arithmetic from ``dlsim.parallel.memory``, not simulated)."""
    if not savings:
        return ""
    tries = "; ".join(f"{label}: {format_bytes(nbytes)}"
                      + (" (fits)" if nbytes <= capacity else "")
                      for label, nbytes in savings.items())
    verdict = ("" if any(v <= capacity for v in savings.values())
               else " None of these fits: it needs more devices, tensor or pipeline stages.")
    return f" Adding savings in turn: {tries}.{verdict}"


def _memory_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    breakdown = s.get("memory_breakdown_bytes") or {}
    if not breakdown:
        return None
    parts = _in_order(breakdown, _MEMORY_ORDER)
    total = float(s.get("memory_per_device_bytes") or sum(parts.values()))
    if total > sum(parts.values()) * 1.005:
        parts["other"] = total - sum(parts.values())
    capacity = float(s.get("memory_capacity_bytes") or 0.0)
    fits = s.get("fits_in_memory")
    if fits is None and capacity:
        fits = total <= capacity
    rows = [(k, format_bytes(v), f"{100 * v / total:.1f} %" if total else "–")
            for k, v in parts.items()]
    if s.get("memory_host_bytes"):
        rows.append(("optimizer offloaded to host", format_bytes(s["memory_host_bytes"]),
                     f"{format_bytes(s.get('offload_pcie_bytes_per_step') or 0)} over PCIe "
                     "per step"))
    overflow = ""
    if fits is False and capacity:
        overflow = (_overflow_message(parts, total, capacity)
                    + _savings_message(s.get("memory_savings_bytes") or {}, capacity))
    return {"image": plots.memory_bar(parts, capacity or None), "rows": rows,
            "total": format_bytes(total), "capacity": format_bytes(capacity) if capacity else "",
            "fits": fits, "overflow": overflow}


def _links_section(links: pd.DataFrame | None) -> dict[str, Any] | None:
    if links is None or links.empty or not set(_LINK_COLUMNS) <= set(links.columns):
        return None
    top = links.sort_values(["utilisation", "bytes"], ascending=False, kind="stable")
    top = top.head(BUSIEST_LINKS)
    labels = [f"{r.src} → {r.dst}" for r in top.itertuples()]
    rows = [(str(r.src), str(r.dst), f"{significant(float(r.bandwidth_GBps))} GB/s",
             format_bytes(float(r.bytes)), format_seconds(float(r.busy_s)),
             f"{100 * float(r.utilisation):.1f} %") for r in top.itertuples()]
    return {"image": plots.links_bar(labels, top["utilisation"].tolist()), "rows": rows,
            "shown": len(top), "total": len(links)}


def _topology_section(links: pd.DataFrame | None) -> dict[str, Any] | None:
    """The links that carried traffic drawn on the topology. One with more than
    TOPOLOGY_MAX_VERTICES ends is drawn aggregated (``dlsim.report.topology``: devices in
    their nodes, alike nodes together, the busiest lines labelled), and if that is still too
    big, by its TOPOLOGY_MAX_CABLES busiest lines."""
    if links is None or links.empty or not {"src", "dst", "utilisation"} <= set(links.columns):
        return None
    ends = links[["src", "dst"]].to_numpy(dtype=str)
    total = len({tuple(sorted(pair)) for pair in ends})
    drawn, aggregated = links, len(set(ends.ravel())) > TOPOLOGY_MAX_VERTICES
    if aggregated:
        drawn = aggregate(links)
    lines = pd.Series([tuple(sorted(p)) for p in drawn[["src", "dst"]].to_numpy(dtype=str)],
                      index=drawn.index)
    busiest = drawn["utilisation"].groupby(lines).max()
    shown = len(busiest)
    if len(set(drawn[["src", "dst"]].to_numpy(dtype=str).ravel())) > TOPOLOGY_MAX_VERTICES:
        kept = busiest.sort_values(ascending=False, kind="stable").head(TOPOLOGY_MAX_CABLES)
        drawn, shown = drawn[lines.isin(set(kept.index))], len(kept)
    title = "Link utilisation" + (f" ({total:,} cables, by node and switch)" if aggregated
                                  else " on the topology")
    if shown < len(busiest):
        title += f", busiest {shown} of {len(busiest)} lines"
    return {"image": plots.topology_utilisation(drawn, title), "aggregated": aggregated,
            "shown": shown, "lines": len(busiest), "total": total}


def render_training(result: Result) -> str:
    """The page of a training step."""
    return _run_page(result, _training_cards(result.summary))


def render_collective(result: Result) -> str:
    """The page of one collective."""
    return _run_page(result, _collective_cards(result.summary))


def _run_page(result: Result, cards: list[Card]) -> str:
    """One self-contained HTML page for an engine run: its cards, then the sections its
    summary, spans and links have data for."""
    s = result.summary
    name = str(s.get("name") or result.scenario.get("name") or "scenario")
    subtitle = [str(s.get("kind", "run"))]
    if s.get("devices") is not None:
        subtitle.append(f"{s['devices']:,} × {s['device']}" if s.get("device")
                        else f"{s['devices']:,} devices")
    if s.get("precision"):
        recipe = f" ({s['fp8_recipe']} scaling)" if s.get("fp8_recipe") else ""
        subtitle.append(f"{s['precision']}{recipe}")
    sections = {
        "breakdown": _breakdown_section(s),
        "sync": sync_section(s),
        "timeline": timeline_section(list(result.spans)),
        "memory": _memory_section(s),
        "links": _links_section(result.links),
        "topology": _topology_section(result.links),
    }
    return environment().get_template("run.html").render(
        title=name, subtitle=" · ".join(subtitle), cards=cards,
        description=(result.scenario or {}).get("description", ""),
        details=_flatten(s), simulation=simulation_line(s.get("simulation") or {}),
        scenario=scenario_yaml(result.scenario) if result.scenario else "",
        **sections)


def _optional(value: float | None, fmt: Callable[[float], str] = format_number) -> str:
    return "–" if value is None else fmt(value)


def _scaling_section(scaling: Sequence[GroupScaling],
                     colours: Mapping[str, str]) -> dict[str, Any] | None:
    """Speed-up curves with both fits drawn, the fitted parameters and the per-point values;
    a line's colour is its group's in the sweep plot (``colours`` by the group's value)."""
    if not scaling:
        return None
    curves, fits, points = [], [], []
    for g in scaling:
        value = g.label.rsplit("=", 1)[-1]  # "group=value" (the sweep's last varied field)
        n = g.points["devices"].to_numpy(dtype=float)
        grid = np.geomspace(n.min(), n.max(), 200)
        p = grid / g.base_devices
        curves.append({"label": g.label, "devices": n, "speedup": g.points["speedup"],
                       "colour": colours.get(value),
                       "fit_devices": grid,
                       "amdahl": amdahl_speedup(p, g.amdahl.f),
                       "usl": None if g.usl is None
                       else usl_capacity(p, g.usl.sigma, g.usl.kappa)})
        row, counts = g.fit_row(), len(g.points)
        fewest = {"amdahl_r2": AMDAHL_PARAMETERS, "usl_r2": USL_PARAMETERS}
        fits.append((g.label, *("not enough points" if k in fewest and not enough_points(
            counts, fewest[k]) else _optional(v) for k, v in row.items() if k != "line")))
        for r in g.points.to_dict("records"):
            points.append((g.label, f"{int(r['devices']):,}", format_number(r["speedup"]),
                           f"{100 * r['efficiency']:.1f} %", format_number(r["karp_flatt"]),
                           _optional(r.get("exposed_comm_share"),
                                     lambda v: "–" if math.isnan(v) else f"{100 * v:.1f} %")))
    return {"image": plots.scaling_curves(curves), "fits": fits, "points": points,
            "comm_share": any("exposed_comm_share" in g.points for g in scaling)}


def _cell(column: str, value: Any) -> str:
    """A table cell in human units where the column's name gives them (bytes, seconds)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        if column.endswith("_bytes") or column.endswith("bytes_total"):
            return format_bytes(float(value))
        if column.endswith("_s") or column.split(".")[0] == "breakdown_s":
            return format_seconds(float(value))
    return format_number(value)


def _sweep_columns(table: pd.DataFrame, varied: list[str], result: str) -> list[str]:
    """The runs table's columns in the table's order, less those the same in every run (the
    base scenario's, in sweep.csv), with the result plotted moved up beside the last varied
    column if it stood further right (a sweep's summary fields follow its varied ones)."""
    def kept(column: str) -> bool:
        return column in varied or column == result or table[column].astype(
            str).nunique(dropna=False) > 1

    columns = [str(c) for c in table.columns if kept(str(c))]
    last = max(columns.index(c) for c in varied) if varied else -1
    if columns.index(result) > last:
        columns.remove(result)
        columns.insert(last + 1, result)
    return columns


def render_sweep(title: str, table: pd.DataFrame, x: str, y: str, group: str | None,
                 scenario: dict[str, Any], scaling: Sequence[GroupScaling] = (),
                 image: str | None = None) -> str:
    """A page for a parameter sweep: y against x (one line per group, or ``image`` drawn by
    the caller), the table, the base, and when the sweep varies a device count, its scaling
    analysis."""
    missing = [c for c in (x, y, group) if c is not None and c not in table.columns]
    if missing:
        raise KeyError(f"sweep table has no column(s) {missing}; columns: {list(table.columns)}")
    shown = _sweep_columns(table, [c for c in (x, group) if c is not None], y)
    rows = [[_cell(str(c), v) for c, v in zip(shown, row)]
            for row in table[shown].itertuples(index=False)]
    plotted = table[table["error"].isna()] if "error" in table else table  # failed points
    colours = plots.series_colours(table[group] if group is not None else [])
    if image is None:
        image = plots.sweep_plot(plotted, x, y, group, (axis_label(x), axis_label(y)),
                                 colours) if len(plotted) else ""
    return environment().get_template("sweep.html").render(
        title=title, subtitle=f"sweep · {len(table)} runs", image=image,
        description=(scenario or {}).get("description", ""),
        scaling=_scaling_section(scaling, colours),
        columns=[str(c) for c in shown], rows=rows, same=len(table.columns) - len(shown),
        text_columns=[
            not pd.api.types.is_numeric_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c])
            for c in shown],
        scenario=scenario_yaml(scenario) if scenario else "")
