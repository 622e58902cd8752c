"""What a simulation returns: a summary, the spans of every simulated stream, link records.

The kinds build it, every one with ``simulation_result`` (a ``Span`` is
``dlsim.contract.span``'s); metrics, report and CLI only read it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from dlsim.contract.scenario import Scenario
from dlsim.contract.span import Span


@dataclass
class Result:
    """The outcome of one scenario.

    ``summary`` is exactly what summary.json holds; its keys are also attributes
    (``result.step_time_s``). ``links`` has one row per directed link that carried traffic:
    link, src, dst, bandwidth_GBps, bytes, busy_s, utilisation.
    """

    summary: dict[str, Any]
    scenario: dict[str, Any]
    spans: list[Span] = field(default_factory=list)
    links: pd.DataFrame = field(default_factory=pd.DataFrame)
    # simulator wall time, set by dlsim.simulate.run_scenario; not in the summary, which
    # must be reproducible bit for bit
    wall_s: float = 0.0

    def __getattr__(self, name: str) -> Any:
        summary = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(name)


def simulation_result(scenario: Scenario, summary: dict[str, Any], *, fidelity: str,
                      events: int, flows: int | None = None, spans: Iterable[Span] = (),
                      links: pd.DataFrame | None = None, network: str = "fluid",
                      echo: set[str] | None = None) -> Result:
    """The Result of every kind, with the same ``summary["simulation"]`` block last: the
    ``fidelity`` simulated ('full', 'symmetric' or 'analytic'), the ``events`` processed, the
    network ``flows`` started where a flow-level network ran, the scenario's seed, and the
    ``network`` model when it is not the fluid default (so that fluid summaries stay as they
    were). ``echo`` limits the scenario fields the report shows to those the kind reads."""
    summary["simulation"] = {"fidelity": fidelity, "events": events,
                             **({} if flows is None else {"flows": flows}),
                             "seed": scenario.seed,
                             **({} if network == "fluid" else {"network": network})}
    asked = scenario.model_dump(mode="json", exclude_none=True, include=echo)
    return Result(summary, asked, list(spans), pd.DataFrame() if links is None else links)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as plain Python values for JSON (summary.json tables, sweep rows): floats
    exact (``DataFrame.to_json`` keeps only 10 digits by default), NaN as None."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return [{str(k): plain(v) for k, v in row.items()} for row in table.to_dict("records")]
