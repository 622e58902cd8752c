"""What a simulation returns: a summary, the spans of every simulated stream, link records.

The engine and the kinds produce these (a ``Span`` is ``dlsim.contract.span``'s); metrics,
report and CLI only read them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

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
    wall_s: float = 0.0  # simulator wall time; not in summary, which must be reproducible

    def __getattr__(self, name: str) -> Any:
        summary = self.__dict__.get("summary", {})
        if name in summary:
            return summary[name]
        raise AttributeError(name)


def records(table: pd.DataFrame) -> list[dict[str, Any]]:
    """The rows as plain Python values for JSON (summary.json tables, sweep rows): floats
    exact (``DataFrame.to_json`` keeps only 10 digits by default), NaN as None."""
    def plain(value: Any) -> Any:
        if isinstance(value, np.generic):
            value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return [{str(k): plain(v) for k, v in row.items()} for row in table.to_dict("records")]
