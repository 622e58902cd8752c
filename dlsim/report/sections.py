"""What every run page shares, whatever its kind: the template environment, the timeline of
the simulated streams, the line saying how it was simulated, and the scenario as YAML.

Kind pages (``pages``, ``federated``, ``inference``) build on these and on ``units``; none
imports another kind's page, and ``dlsim.report.kinds`` picks the page for a kind.
"""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
import yaml

from dlsim.report import plots
from dlsim.results.result import Span

TIMELINE_MAX_DEVICES = 16


@lru_cache(maxsize=1)
def environment() -> jinja2.Environment:
    """The templates of every dlsim page; autoescaping keeps scenario text from being markup."""
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(Path(__file__).with_name("templates")),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)


def timeline_section(spans: list[Span]) -> dict[str, Any] | None:
    """The Gantt chart of the first TIMELINE_MAX_DEVICES devices' spans."""
    if not spans:
        return None
    devices = sorted({sp.device for sp in spans})
    shown = set(devices[:TIMELINE_MAX_DEVICES])
    omitted = len(devices) - len(shown)
    kept = spans if not omitted else [sp for sp in spans if sp.device in shown]
    title = "Timeline" + (f" (first {len(shown)} of {len(devices)} devices)" if omitted else "")
    return {"image": plots.timeline_gantt(kept, title), "omitted": omitted,
            "devices": len(devices), "spans": len(spans)}


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
