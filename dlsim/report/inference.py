"""The HTML page of an edge-inference run: headline cards, the split curve and its table,
early exits, the device/edge/cloud hierarchy and the spatial partitions.

Reads ``Result.summary`` only (reports never re-simulate); the page extends the same base
template as every dlsim report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pandas as pd

from dlsim.report import inference_plots as plots
from dlsim.report.sections import environment, scenario_yaml, simulation_line, timeline_section
from dlsim.report.units import Card, format_bytes, format_number, format_seconds, scaled
from dlsim.results.result import Result

_SPLIT_COLUMNS = {"split_after": "last device layer", "device_s": "device", "upload_s": "upload",
                  "server_s": "server", "download_s": "download", "latency_s": "latency",
                  "expected_latency_s": "expected latency", "energy_J": "device energy",
                  "expected_energy_J": "expected energy", "upload_bytes": "sent",
                  "throughput_per_s": "pipelined req/s"}


def format_joules(joules: float) -> str:
    """Device energy in the unit that reads best, as dlsim.report.units scales seconds and bytes."""
    return scaled(joules, ((1.0, "J"), (1e-3, "mJ")), " ")


def _cell(column: str, value: Any) -> str:
    if column.endswith("_per_s"):
        return f"{float(value):.3g}"
    if column.endswith("_s"):
        return format_seconds(float(value))
    if column.endswith("_J"):
        return format_joules(float(value))
    if column.endswith("bytes"):
        return format_bytes(float(value))
    if column in ("share", "probability"):
        return f"{100 * float(value):.1f} %"
    if column == "speedup":
        return f"{float(value):.3g}×"
    return format_number(value)


def _table(rows: list[Mapping[str, Any]], columns: Mapping[str, str]) -> dict[str, Any]:
    shown = [c for c in columns if rows and c in rows[0]]
    return {"head": [columns[c] for c in shown],
            "rows": [[_cell(c, row[c]) for c in shown] for row in rows]}


_card = Card.of


def _cards(s: Mapping[str, Any]) -> list[Card]:
    cards = [_card("Device only", format_seconds(s["device_only_latency_s"]),
                   f"{s['model']} on {s['device']}")]
    split = s.get("split")
    if split:
        exp = "expected_" if s.get("exits") else ""
        fast, frugal = split["best_latency"], split["best_energy"]
        cards.append(_card("Fastest split", format_seconds(fast[exp + "latency_s"]),
                           f"after {fast['split_after']}", "good"))
        cards.append(_card("Least device energy", format_joules(frugal[exp + "energy_J"]),
                           f"after {frugal['split_after']}"))
        cards.append(_card("Server only", format_seconds(split["server_only_latency_s"]),
                           f"{split['server']} over {split['link']}"))
    if s.get("exits"):
        cards.append(_card("Final output reached", f"{100 * s['final_output_share']:.1f} %",
                           f"{len(s['exits'])} early exit(s)"))
    if s.get("hierarchy"):
        h = s["hierarchy"]
        cards.append(_card("Hierarchy, expected", format_seconds(h["expected_latency_s"]),
                           f"{format_bytes(h['expected_bytes'])} moved per request"))
    if s.get("spatial"):
        best = s["spatial"]["best"]
        cards.append(_card("Best spatial partition", format_seconds(best["latency_s"]),
                           f"{best['strategy']} on {best['devices']} × {s['spatial']['device']}"))
    return cards


def _split_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    split = s.get("split")
    if not split:
        return None
    frame = pd.DataFrame(split["table"])
    image = plots.split_curve(frame, int(split["best_latency"]["device_layers"]),
                              int(split["best_energy"]["device_layers"]))
    return {"image": image, "server": split["server"], "link": split["link"],
            "radio": split["radio_counted"], **_table(split["table"], _SPLIT_COLUMNS)}


def _exits_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    if not s.get("exits"):
        return None
    rows = [*s["exits"], {"after": "final output", "probability": 1.0,
                          "share": s["final_output_share"]}]
    return _table(rows, {"after": "exit after", "probability": "taken if reached",
                         "share": "share of requests"})


def _hierarchy_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    h = s.get("hierarchy")
    if not h:
        return None
    columns = {"exit": "exit", "tier": "tier", "share": "share", "latency_s": "latency",
               "bytes": "bytes moved", "device_energy_J": "device energy"}
    return {**h, **_table(h["table"], columns),
            "expected": [format_seconds(h["expected_latency_s"]),
                         format_bytes(h["expected_bytes"])],
            "cloud_only": [format_seconds(h["cloud_only_latency_s"]),
                           format_bytes(h["cloud_only_bytes"])]}


def _spatial_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    sp = s.get("spatial")
    if not sp:
        return None
    columns = {"strategy": "strategy", "devices": "devices", "compute_s": "compute",
               "exchange_s": "halo exchange", "exchange_bytes": "exchanged",
               "scatter_gather_s": "scatter + gather", "tail_s": "fc tail",
               "latency_s": "latency", "speedup": "speed-up"}
    return {"image": plots.spatial_lines(pd.DataFrame(sp["table"])), "device": sp["device"],
            **_table(sp["table"], columns)}


def render_inference(result: Result) -> str:
    s = result.summary
    subtitle = f"edge-inference · {s['model']} · batch {s['batch']} · {s['precision']}"
    return environment().get_template("inference.html").render(
        title=str(s["name"]), subtitle=subtitle, cards=_cards(s),
        description=(result.scenario or {}).get("description", ""),
        split=_split_section(s), exits=_exits_section(s), hierarchy=_hierarchy_section(s),
        spatial=_spatial_section(s), timeline=timeline_section(list(result.spans)),
        scenario=scenario_yaml(result.scenario) if result.scenario else "",
        simulation=simulation_line(s.get("simulation") or {}))
