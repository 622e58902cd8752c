"""The HTML page of a federated run: headline cards, round times, participation and energy
per device class, dropped clients and their wasted work, and the first rounds' timeline.

Reads ``Result.summary`` and spans only (reports never re-simulate); the page extends the
same base template as every dlsim report.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dlsim.report import federated_plots as plots
from dlsim.report.sections import environment, scenario_yaml, simulation_line, timeline_section
from dlsim.report.units import Card, format_bytes, format_count, format_seconds, scaled, significant
from dlsim.results.result import Result

_DROP_REASONS = {
    "overcommit": "over-committed: the round already had its K updates",
    "deadline": "missed the round deadline",
    "slowest": "among the slowest fraction",
    "random": "dropped at random before uploading",
    "offline": "went offline before its upload ended",
    "stale": "update staler than max_staleness",
}


def format_duration(seconds: float) -> str:
    """Long simulated spans in hours or minutes, short ones as dlsim.report.units does."""
    scale, unit = plots.time_unit(seconds)
    return format_seconds(seconds) if unit == "s" else f"{significant(seconds / scale)} {unit}"


def format_joules(joules: float) -> str:
    """Device energy in the unit that reads best, as dlsim.report.units scales seconds and bytes."""
    return scaled(joules, ((1e6, "MJ"), (1e3, "kJ"), (1.0, "J")), " ")


_card = Card.of


def _cards(s: Mapping[str, Any]) -> list[Card]:
    rt = s["round_time_s"]
    wasted = s["wasted"]
    if s.get("fedbuff"):
        per_round = (f"fedbuff, {s['fedbuff']['buffer']} updates a round, "
                     f"{s['fedbuff']['concurrency']} of {s['clients']:,} clients at once")
    else:
        per_round = f"{s['algorithm']}, {s['clients_per_round']} of {s['clients']:,} clients"
    cards = [
        _card(f"Time to {s['rounds']} rounds", format_duration(s["time_to_rounds_s"]),
              per_round),
        _card("Round time, median", format_duration(rt["p50"]),
              f"mean {format_duration(rt['mean'])} · p90 {format_duration(rt['p90'])} · "
              f"max {format_duration(rt['max'])}"),
        _card("Downloaded", format_bytes(s["bytes_down"]), "model broadcasts"),
        _card("Uploaded", format_bytes(s["bytes_up"]),
              f"update {format_bytes(s['update_bytes'])} of "
              f"{format_bytes(s['model_bytes'])}"),
        _card("Wasted device time", format_duration(wasted["device_s"]),
              f"{wasted['clients']:,} dropped clients · {format_count(wasted['flops'])} FLOPs",
              "bad" if wasted["clients"] else ""),
        _card("Training energy", format_joules(s["energy_J"]), "device power × training time"),
    ]
    if s.get("convergence"):
        c = s["convergence"]
        cards.insert(0, _card("Time to target", format_duration(c["time_to_target_s"]),
                              f"{c['rounds_to_target']:,.0f} rounds · "
                              f"{c['updates_to_target']:,.0f} updates for "
                              f"{c['client_updates']:,} fresh ones"))
    if s.get("rounds_failed"):
        cards.append(_card("Failed rounds", f"{s['rounds_failed']:,}",
                           "too few updates to aggregate", "bad"))
    if s.get("staleness"):
        st = s["staleness"]
        cards.append(_card("Staleness, mean", f"{st['mean']:.3g}",
                           f"max {st['max']} · mean weight {st['mean_weight']:.3f}"))
    return cards


def _participation_section(s: Mapping[str, Any]) -> dict[str, Any]:
    part = s["participation"]
    names = list(part)
    per = [max(part[n]["clients"], 1) for n in names]
    image = plots.participation(names, [part[n]["selected"] / c for n, c in zip(names, per)],
                                [part[n]["aggregated"] / c for n, c in zip(names, per)],
                                [part[n]["energy_J"] for n in names])
    rows = [(n, f"{p['clients']:,}", f"{p['selected']:,}", f"{p['aggregated']:,}",
             f"{p['aggregated_per_client']:.3g}", format_duration(p["train_device_s"]),
             format_joules(p["energy_J"])) for n, p in part.items()]
    return {"image": image, "rows": rows}


def _rounds_section(s: Mapping[str, Any]) -> dict[str, Any]:
    table = s["round_table"]
    ends = np.array([r["end_s"] for r in table])
    durations = ends - np.array([r["start_s"] for r in table])
    rt = s["round_time_s"]
    rows = [(k, format_duration(rt[k])) for k in ("mean", "p50", "p90", "max")]
    return {"image": plots.round_times(durations, ends), "rows": rows}


def render_federated(result: Result) -> str:
    s = result.summary
    subtitle = (f"federated · {s['algorithm']} · {s['model']} · {s['clients']:,} clients · "
                f"{s['rounds']} rounds")
    drops = [(_DROP_REASONS.get(k, k), f"{v:,}") for k, v in s["dropped"].items()]
    return environment().get_template("federated.html").render(
        title=str(s["name"]), subtitle=subtitle, cards=_cards(s),
        description=(result.scenario or {}).get("description", ""),
        rounds=_rounds_section(s), participation=_participation_section(s), drops=drops,
        asynchronous=s["algorithm"] == "fedbuff",
        timeline=timeline_section(list(result.spans)),
        scenario=scenario_yaml(result.scenario) if result.scenario else "",
        simulation=simulation_line(s.get("simulation") or {}))
