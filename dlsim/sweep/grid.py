"""Sweeps: a grid over scenario fields, each point simulated, results as one pandas table.

A sweep is the base scenario plus ``vary``: dotted field paths mapped to lists of values
(``cluster.devices: [8, 64]``). It comes from the scenario's own ``sweep:`` block or from
``dlsim sweep --vary``.
"""

from __future__ import annotations

import copy
import itertools
from collections.abc import Iterator
from concurrent.futures import Executor
from typing import Any

import pandas as pd

from dlsim.contract.errors import ScenarioError
from dlsim.kinds.registry import KINDS
from dlsim.sweep.executors import PointCache, evaluate


def _set(data: dict[str, Any], path: str, value: Any) -> None:
    node = data
    keys = path.split(".")
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise ScenarioError(f"'{key}' is not a mapping, so '{path}' cannot be set.",
                                field=f"sweep.{path}")
        node = child
    node[keys[-1]] = value


def points(base: dict[str, Any], vary: dict[str, list[Any]]) -> Iterator[dict[str, Any]]:
    """Every combination of the varied values, as full scenario dicts (last key fastest)."""
    body = {k: v for k, v in base.items() if k != "sweep"}
    for values in itertools.product(*vary.values()):
        point = copy.deepcopy(body)
        for path, value in zip(vary, values):
            _set(point, path, value)
        yield point


def _flatten(summary: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in summary.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def run_sweep(base: dict[str, Any], vary: dict[str, list[Any]], file: str | None = None,
              progress: bool = True, executor: Executor | None = None,
              cache: PointCache | None = None) -> pd.DataFrame:
    """Simulate every point; one row per point: the varied values, then the summary.

    A point that is invalid becomes a row whose ``error`` and ``error_field`` say why, and
    the other points still run; only when every point is invalid is that an error of the
    sweep itself (the first point's), since there is then nothing to show.
    """
    if not vary or any(not isinstance(v, list) or not v for v in vary.values()):
        raise ScenarioError("a sweep needs at least one field with a non-empty list of "
                            "values.", file=file, field="sweep")
    grid = list(points(base, vary))
    summaries = evaluate(grid, executor, cache, progress)
    if all("error" in summary for summary in summaries):
        first = summaries[0]
        raise ScenarioError(first["error"], file=file, field=first["error_field"])
    rows = []
    for point, summary in zip(grid, summaries):
        row = {path: _label(_get(point, path)) for path in vary}
        row.update(_flatten(summary))
        rows.append(row)
    return pd.DataFrame(rows)


def _label(value: Any) -> Any:
    """A varied value as a table cell: a whole section varied at once (``parallelism:
    [{data: 8}, {data: 4, tensor: 2}]``) as 'data=4, tensor=2', a list as its items."""
    if isinstance(value, dict):
        return ", ".join(f"{k}={_label(v)}" for k, v in value.items())
    if isinstance(value, list):
        return "[" + ", ".join(str(_label(v)) for v in value) + "]"
    return value


def _get(data: dict[str, Any], path: str) -> Any:
    for key in path.split("."):
        data = data[key]
    return data


def primary_metric(table: pd.DataFrame) -> str:
    """The summary field that answers the question of the sweep's kind (its first row's)."""
    return KINDS[table["kind"].dropna().iloc[0]].primary_metric


def succeeded(table: pd.DataFrame) -> pd.DataFrame:
    """The rows whose point simulated (no ``error``)."""
    return table[table["error"].isna()] if "error" in table else table


def pivot(table: pd.DataFrame, vary: list[str]) -> pd.DataFrame:
    """The primary metric with the last varied field across (so crossovers line up); failed
    points are left out (they are listed with their errors)."""
    metric = primary_metric(table)
    table = succeeded(table)
    if len(vary) < 2:
        return table[[*vary, metric]]
    wide = table.pivot_table(index=vary[:-1], columns=vary[-1], values=metric,
                             aggfunc="first", sort=False)
    values = wide.to_numpy(dtype=float)
    best = values.min(axis=1, keepdims=True)
    ties = (values <= best * (1 + 1e-12)).sum(axis=1) > 1
    wide["fastest"] = wide.idxmin(axis=1).where(~ties, "tie")
    return wide.reset_index()
