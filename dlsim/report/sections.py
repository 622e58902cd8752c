"""What every run page shares, whatever its kind: the template environment, the timeline of
the simulated streams, the line saying how it was simulated, and the scenario as YAML.

Kind pages (``pages``, ``federated``, ``inference``) build on these and on ``units``; none
imports another kind's page, and ``dlsim.report.kinds`` picks the page for a kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml

from dlsim.report import plots
from dlsim.results.result import Span

TIMELINE_MAX_DEVICES = 16  # the expanded timeline's devices (trace.json has them all)
TIMELINE_REPRESENTATIVES = 5  # devices the timeline shows at first, when it has more
# A pipeline stage's four point-to-point streams read as one row: what moves between stages.
P2P_STREAMS = {"send-fwd": "pipeline p2p", "recv-fwd": "pipeline p2p",
               "send-bwd": "pipeline p2p", "recv-bwd": "pipeline p2p"}


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates of every dlsim page; autoescaping keeps scenario text from being markup."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)


def representatives(devices: list[int], k: int = TIMELINE_REPRESENTATIVES) -> list[int]:
    """``k`` of the devices (in order) that stand for the rest: the first two, the middle
    one and the last two, so a pipeline shows its fill, its steady state and its drain."""
    if len(devices) <= k + 1:
        return devices
    head, tail = (k - 1) // 2, k // 2
    return [*devices[:head], devices[len(devices) // 2], *devices[-tail:]]


def timeline_section(spans: list[Span]) -> dict[str, Any] | None:
    """The Gantt chart of representative devices (``representatives``), and the first
    TIMELINE_MAX_DEVICES devices' in full for the page to expand; a stage's point-to-point
    streams are drawn as one row."""
    if not spans:
        return None
    merged = [replace(sp, stream=P2P_STREAMS[sp.stream]) if sp.stream in P2P_STREAMS else sp
              for sp in spans]
    devices = sorted({sp.device for sp in merged})
    chosen = representatives(devices)
    title = "Timeline" + (f" ({len(chosen)} of {len(devices)} devices: first, middle, last)"
                          if len(chosen) < len(devices) else "")
    section: dict[str, Any] = {
        "image": plots.timeline_gantt(_on(merged, chosen), title), "shown": chosen,
        "devices": len(devices), "spans": len(spans), "full": None, "omitted": 0}
    if len(chosen) < len(devices):
        expanded = devices[:TIMELINE_MAX_DEVICES]
        section["omitted"] = len(devices) - len(expanded)
        section["full"] = plots.timeline_gantt(_on(merged, expanded), "Timeline" + (
            f" (first {len(expanded)} of {len(devices)} devices)" if section["omitted"]
            else ""))
    return section


def _on(spans: list[Span], devices: list[int]) -> list[Span]:
    wanted = set(devices)
    return [sp for sp in spans if sp.device in wanted]


def simulation_line(sim: Mapping[str, Any]) -> str:
    """The summary's ``simulation`` block in words: fidelity, events, seed."""
    parts = []
    if sim.get("fidelity") is not None:
        parts.append(f"fidelity: {sim['fidelity']}")
    if sim.get("events") is not None:
        parts.append(f"{sim['events']:,} events")
    if sim.get("seed") is not None:
        parts.append(f"seed {sim['seed']}")
    return " · ".join(parts)


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
