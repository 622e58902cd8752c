"""HTML pages for one simulated scenario and for a parameter sweep.

Reports read results, they never re-simulate (STYLE.md). Both entry points are pure: they
return one self-contained page (inline CSS, plots as base64 PNG data URIs, no JavaScript) and
leave writing it to the caller, which writes files atomically. Every string that came from a
scenario is escaped by jinja2's autoescaping, so a scenario name cannot inject markup.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import pandas as pd
import yaml

from dlsim.report import plots
from dlsim.report.sync import sync_section
from dlsim.results.result import Result, Span
from dlsim.results.scaling import GroupScaling, amdahl_speedup, usl_capacity

TIMELINE_MAX_DEVICES = 16
BUSIEST_LINKS = 10
TOPOLOGY_MAX_CABLES = 64
_BREAKDOWN_ORDER = ("compute", "exposed_comm", "bubble", "straggler_wait", "idle")
_MEMORY_ORDER = ("params", "grads", "optimizer", "activations")
_LINK_COLUMNS = ("src", "dst", "bandwidth_GBps", "bytes", "busy_s", "utilisation")


@dataclass(frozen=True)
class Card:
    """One headline number: what it is, its value with units, and a line of context."""

    label: str
    value: str
    unit: str = ""
    detail: str = ""
    tone: str = ""  # '', 'good' or 'bad'

    @classmethod
    def of(cls, label: str, text: str, detail: str = "", tone: str = "") -> Card:
        """A card from formatted text such as '1.5 ms': the number, then its unit."""
        value, _, unit = text.partition(" ")
        return cls(label, value, unit, detail, tone)


# -- human units (SI inside, human units only at the edges) ---------------------------------

def _sig(value: float, digits: int = 3) -> str:
    """Three significant figures, but never scientific notation for large numbers."""
    return f"{value:,.0f}" if abs(value) >= 10 ** digits - 0.5 else f"{value:.{digits}g}"


def _scaled(value: float, units: tuple[tuple[float, str], ...], sep: str) -> str:
    """Pick the largest unit the value (rounded to 3 significant figures) reaches."""
    rounded = float(f"{value:.3g}")
    for scale, unit in units:
        if abs(rounded) >= scale:
            return f"{_sig(value / scale)}{sep}{unit}"
    scale, unit = units[-1]
    return f"{_sig(value / scale)}{sep}{unit}"


def format_seconds(seconds: float) -> str:
    """12.3 ms, 4.56 µs, 1.5 s: three significant figures in the unit that reads best."""
    if seconds == 0:
        return "0 s"
    return _scaled(seconds, ((1.0, "s"), (1e-3, "ms"), (1e-6, "µs"), (1e-9, "ns")), " ")


def format_bytes(nbytes: float) -> str:
    """Decimal (SI) bytes as hardware vendors quote capacities: 80 GB, 1.5 TB."""
    return _scaled(nbytes, ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"),
                            (1.0, "B")), " ")


def format_count(count: float) -> str:
    """Parameter counts the way the field writes them: 25.6M, 175B, 1.2T."""
    return _scaled(count, ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1.0, "")), "")


def format_number(value: Any) -> str:
    """Table cells: floats to 4 significant figures, integers with separators, rest as text."""
    if isinstance(value, bool | np.bool_) or value is None:
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "–" if math.isnan(value) else f"{float(value):.4g}"
    return str(value)


# -- sections ---------------------------------------------------------------------------------

def _summary_cards(s: Mapping[str, Any]) -> list[Card]:
    """Headline numbers for the kinds we know; unknown kinds fall back to the details table."""
    cards: list[Card] = []

    def add(key: str, label: str, fmt: Callable[[Any], str], detail: str = "") -> None:
        if s.get(key) is not None:
            cards.append(Card.of(label, fmt(s[key]), detail))

    if s.get("kind") == "collective":
        if s.get("op") is not None:
            cards.append(Card("Collective", str(s["op"]), detail=f"algorithm: "
                              f"{s.get('algorithm', '?')}"))
        add("devices", "Devices", lambda v: f"{v:,}")
        add("size_bytes", "Message size", format_bytes)
        add("time_s", "Time", format_seconds)
        add("algbw_GBps", "Algorithm bandwidth", lambda v: f"{_sig(v)} GB/s", "size / time")
        add("busbw_GBps", "Bus bandwidth", lambda v: f"{_sig(v)} GB/s", "as nccl-tests reports")
    else:
        add("step_time_s", "Step time", format_seconds)
        add("throughput_samples_per_s", "Throughput", lambda v: f"{_sig(v)} samples/s")
        add("time_to_accuracy_s", "Time to accuracy", format_seconds,
            "steps to the target x time per step")
        add("tflops_per_device", "Per device", lambda v: f"{_sig(v)} TFLOP/s")
        add("mfu", "MFU", lambda v: f"{v * 100:.1f} %", "model FLOPs utilisation")
        add("parameters", "Parameters", format_count)
        mem, cap, fits = (s.get(k) for k in
                          ("memory_per_device_bytes", "memory_capacity_bytes", "fits_in_memory"))
        if mem is not None:
            detail = f"of {format_bytes(cap)}" if cap else ""
            if fits is not None:
                detail = f"{detail} · {'fits' if fits else 'does not fit'}".strip(" ·")
            tone = "" if fits is None else ("good" if fits else "bad")
            cards.append(Card.of("Memory per device", format_bytes(mem), detail, tone))
    add("comm_bytes_total", "Communication", format_bytes, "bytes sent by all devices")
    return cards


def _flatten(d: Mapping[str, Any], prefix: str = "") -> list[tuple[str, str]]:
    rows: list[tuple[str, str]] = []
    for key, value in d.items():
        if isinstance(value, Mapping):
            rows.extend(_flatten(value, f"{prefix}{key}."))
        else:
            rows.append((f"{prefix}{key}", format_number(value)))
    return rows


def _simulation_line(sim: Mapping[str, Any]) -> str:
    parts = []
    if sim.get("fidelity") is not None:
        parts.append(f"fidelity: {sim['fidelity']}")
    if sim.get("events") is not None:
        parts.append(f"{sim['events']:,} events")
    if sim.get("seed") is not None:
        parts.append(f"seed {sim['seed']}")
    return " · ".join(parts)


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
    return {"image": plots.breakdown_bar(ordered), "rows": rows,
            "total": format_seconds(total), "mismatch": mismatch}


def _timeline_section(spans: list[Span]) -> dict[str, Any] | None:
    if not spans:
        return None
    devices = sorted({sp.device for sp in spans})
    shown = set(devices[:TIMELINE_MAX_DEVICES])
    omitted = len(devices) - len(shown)
    kept = spans if not omitted else [sp for sp in spans if sp.device in shown]
    title = "Timeline" + (f" (first {len(shown)} of {len(devices)} devices)" if omitted else "")
    return {"image": plots.timeline_gantt(kept, title), "omitted": omitted,
            "devices": len(devices), "spans": len(spans)}


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
    rows = [(str(r.src), str(r.dst), f"{_sig(float(r.bandwidth_GBps))} GB/s",
             format_bytes(float(r.bytes)), format_seconds(float(r.busy_s)),
             f"{100 * float(r.utilisation):.1f} %") for r in top.itertuples()]
    return {"image": plots.links_bar(labels, top["utilisation"].tolist()), "rows": rows,
            "shown": len(top), "total": len(links)}


def _topology_section(links: pd.DataFrame | None) -> dict[str, Any] | None:
    """The links that carried traffic drawn on the topology; a big one keeps its busiest
    TOPOLOGY_MAX_CABLES cables (both directions of a cable count as one)."""
    if links is None or links.empty or not {"src", "dst", "utilisation"} <= set(links.columns):
        return None
    ends = links[["src", "dst"]].to_numpy(dtype=str)
    cable = pd.Series([tuple(sorted(pair)) for pair in ends], index=links.index)
    busiest = links["utilisation"].groupby(cable).max()
    total = len(busiest)
    kept = busiest.sort_values(ascending=False, kind="stable").head(TOPOLOGY_MAX_CABLES)
    chosen = links[cable.isin(set(kept.index))]
    title = "Link utilisation on the topology"
    if len(kept) < total:
        title += f" (busiest {len(kept)} of {total} cables)"
    return {"image": plots.topology_utilisation(chosen, title), "shown": len(kept),
            "total": total}


def _plain(value: Any) -> Any:
    """Turn numpy scalars, tuples and other objects into what yaml.safe_dump accepts."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple | set):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def scenario_yaml(scenario: Mapping[str, Any]) -> str:
    """The scenario as the user would write it, keys in their original order."""
    return yaml.safe_dump(_plain(scenario), sort_keys=False, allow_unicode=True).rstrip()


# -- pages ------------------------------------------------------------------------------------

@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)


def render_run(result: Result) -> str:
    """One self-contained HTML page for one simulated scenario."""
    s = result.summary
    if s.get("kind") == "edge-inference":
        from dlsim.report.inference import render_inference  # it builds on this module

        return render_inference(result)
    if s.get("kind") == "federated":
        from dlsim.report.federated import render_federated  # it builds on this module

        return render_federated(result)
    name = str(s.get("name") or result.scenario.get("name") or "scenario")
    subtitle = [str(s.get("kind", "run"))]
    if s.get("devices") is not None:
        subtitle.append(f"{s['devices']:,} × {s['device']}" if s.get("device")
                        else f"{s['devices']:,} devices")
    if s.get("precision"):
        subtitle.append(str(s["precision"]))
    sections = {
        "breakdown": _breakdown_section(s),
        "sync": sync_section(s, format_seconds),
        "timeline": _timeline_section(list(result.spans)),
        "memory": _memory_section(s),
        "links": _links_section(result.links),
        "topology": _topology_section(result.links),
    }
    return _environment().get_template("run.html").render(
        title=name, subtitle=" · ".join(subtitle), cards=_summary_cards(s),
        details=_flatten(s), simulation=_simulation_line(s.get("simulation") or {}),
        scenario=scenario_yaml(result.scenario) if result.scenario else "",
        **sections)


def _optional(value: float | None, fmt: Callable[[float], str] = format_number) -> str:
    return "–" if value is None else fmt(value)


def _scaling_section(scaling: Sequence[GroupScaling]) -> dict[str, Any] | None:
    """Speed-up curves with both fits drawn, the fitted parameters and the per-point values."""
    if not scaling:
        return None
    curves, fits, points = [], [], []
    for g in scaling:
        n = g.points["devices"].to_numpy(dtype=float)
        grid = np.geomspace(n.min(), n.max(), 200)
        p = grid / g.base_devices
        curves.append({"label": g.label, "devices": n, "speedup": g.points["speedup"],
                       "fit_devices": grid,
                       "amdahl": amdahl_speedup(p, g.amdahl.f),
                       "usl": None if g.usl is None
                       else usl_capacity(p, g.usl.sigma, g.usl.kappa)})
        row = g.fit_row()
        fits.append((g.label, *(_optional(v) for k, v in row.items() if k != "line")))
        for r in g.points.to_dict("records"):
            points.append((g.label, f"{int(r['devices']):,}", format_number(r["speedup"]),
                           f"{100 * r['efficiency']:.1f} %", format_number(r["karp_flatt"]),
                           _optional(r.get("exposed_comm_share"),
                                     lambda v: "–" if math.isnan(v) else f"{100 * v:.1f} %")))
    return {"image": plots.scaling_curves(curves), "fits": fits, "points": points,
            "comm_share": any("exposed_comm_share" in g.points for g in scaling)}


def render_sweep(title: str, table: pd.DataFrame, x: str, y: str, group: str | None,
                 scenario: dict[str, Any], scaling: Sequence[GroupScaling] = (),
                 image: str | None = None) -> str:
    """A page for a parameter sweep: y against x (one line per group, or ``image`` drawn by
    the caller), the table, the base, and when the sweep varies a device count, its scaling
    analysis."""
    missing = [c for c in (x, y, group) if c is not None and c not in table.columns]
    if missing:
        raise KeyError(f"sweep table has no column(s) {missing}; columns: {list(table.columns)}")
    rows = [[format_number(v) for v in row] for row in table.itertuples(index=False)]
    plotted = table[table["error"].isna()] if "error" in table else table  # failed points
    if image is None:
        image = plots.sweep_plot(plotted, x, y, group) if len(plotted) else ""
    return _environment().get_template("sweep.html").render(
        title=title, subtitle=f"sweep · {len(table)} runs", image=image,
        scaling=_scaling_section(scaling),
        columns=[str(c) for c in table.columns], rows=rows, text_columns=[
            not pd.api.types.is_numeric_dtype(table[c]) or pd.api.types.is_bool_dtype(table[c])
            for c in table.columns],
        scenario=scenario_yaml(scenario) if scenario else "")
