"""Client traces from FedScale and FLASH, read from JSON or CSV renderings.

Both projects ship their traces as Python pickles; unpickling runs arbitrary code, so dlsim
reads only JSON or CSV renderings of the same records (convert once with a trusted script).
Client k of the simulated population uses trace entry k mod (number of entries), as FedScale
does. Entries are taken in the order of their ids (numeric ids numerically).

FedScale ``client_device_capacity`` (Lai et al., "FedScale", ICML 2022; the runtime's
``ClientMetadata``): per client ``computation``, the model's inference latency in ms per
sample, and ``communication``, the bandwidth in kbit/s used for both directions. FedScale
counts training as 3x inference (backward ~ 2x forward); so does dlsim.
  JSON: {"<id>": {"computation": 47.0, "communication": 2143.0}, ...}
  CSV:  client_id,computation,communication

FedScale ``client_behave_trace``: per client the starts (``active``) and ends
(``inactive``) in seconds of its available windows, repeating every ``finish_time`` s.
  JSON: {"<id>": {"active": [0, 900], "inactive": [600, 1500], "finish_time": 3600}, ...}
  CSV:  client_id,active,inactive,finish_time   (one row per window)

FLASH ``cached_timers.json`` (Yang et al., "Characterizing Impacts of Heterogeneity in
Federated Learning upon Large-Scale Smartphone Data", WWW 2021): per device ``ready_time``
windows [start, end] (s) between ``trace_start`` and ``trace_end``, repeating with period
trace_end - trace_start; ``isSuccess: false`` marks a device that is never ready.
  JSON: {"<guid>": {"isSuccess": true, "trace_start": 0, "trace_end": 86400,
                    "ready_time": [[3600, 7200]]}, ...}

FLASH ``speed_distri.json``: per device the mean and standard deviation of its download
and upload speed in KB/s (1 KB = 1024 B, as FLASH divides model bytes by 1024); every
transfer draws a speed from that normal distribution, redrawing negatives, as FLASH does.
  JSON: {"<guid>": {"down_u": 900.0, "down_sigma": 200.0, "up_u": 300.0, "up_sigma": 80.0}}
  CSV:  client_id,down_u,down_sigma,up_u,up_sigma
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from dlsim.contract.errors import ScenarioError
from dlsim.data import ROOT


def resolve(path: str, field: str) -> Path:
    """A trace path as given (relative to the working directory), else relative to dlsim's
    bundled data (the checkout, or the installed package: dlsim/data.py), so that bundled
    scenarios run from anywhere."""
    for candidate in (Path(path), ROOT / path):
        if candidate.is_file():
            return candidate
    raise ScenarioError(f"trace file '{path}' not found.", field=field)


def _records(path: str, field: str, columns: tuple[str, ...]) -> dict[str, dict[str, Any]]:
    """id -> record from a JSON mapping, or from CSV rows grouped by client_id (lists)."""
    file = resolve(path, field)
    csv = file.suffix.lower() == ".csv"
    try:
        data = pd.read_csv(file) if csv else json.loads(file.read_text())
    except (OSError, ValueError) as exc:  # pandas' ParserError is a ValueError
        raise ScenarioError(f"cannot read {file}: {exc}.", field=field) from None
    if csv:
        missing = [c for c in ("client_id", *columns) if c not in data.columns]
        if missing:
            raise ScenarioError(f"{file} lacks column(s) {', '.join(missing)}.", field=field)
        return {str(cid): {c: group[c].tolist() for c in columns}
                for cid, group in data.groupby("client_id", sort=False)}
    if not isinstance(data, dict) or not data or not all(isinstance(v, dict)
                                                         for v in data.values()):
        raise ScenarioError(f"{file} must be a non-empty JSON object of per-client objects.",
                            field=field)
    return data


def _ordered(records: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    keys = sorted(records, key=lambda k: (0, float(k), k) if _numeric(k) else (1, 0.0, k))
    return [records[k] for k in keys]


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _column(rows: list[dict[str, Any]], key: str, file: str, field: str) -> np.ndarray:
    try:
        values = np.array([np.ravel(r[key])[0] for r in rows], dtype=float)
    except (KeyError, IndexError, TypeError, ValueError):
        raise ScenarioError(f"every entry of {file} needs a numeric '{key}'.",
                            field=field) from None
    if not np.isfinite(values).all() or (values < 0).any():
        raise ScenarioError(f"'{key}' in {file} must be finite and non-negative.", field=field)
    return values


@dataclass(frozen=True)
class Capacity:
    """Per trace entry: seconds per training sample and link bandwidth (B/s)."""

    sample_s: np.ndarray
    bandwidth_Bps: np.ndarray


def fedscale_capacity(path: str) -> Capacity:
    field = "federated.traces.capacity"
    rows = _ordered(_records(path, field, ("computation", "communication")))
    ms = _column(rows, "computation", path, field)
    kbps = _column(rows, "communication", path, field)
    if (kbps <= 0).any():
        raise ScenarioError(f"'communication' in {path} must be positive (kbit/s).",
                            field=field)
    return Capacity(3.0 * ms / 1e3, kbps * 1e3 / 8.0)


@dataclass(frozen=True)
class Speeds:
    """Per trace entry: normal distributions of down/up bandwidth (B/s)."""

    down_mean: np.ndarray
    down_sd: np.ndarray
    up_mean: np.ndarray
    up_sd: np.ndarray


def flash_speed(path: str) -> Speeds:
    field = "federated.traces.flash_speed"
    names = ("down_u", "down_sigma", "up_u", "up_sigma")
    rows = _ordered(_records(path, field, names))
    down_u, down_s, up_u, up_s = (_column(rows, k, path, field) * 1024.0 for k in names)
    if (down_u <= 0).any() or (up_u <= 0).any():
        raise ScenarioError(f"mean speeds in {path} must be positive.", field=field)
    return Speeds(down_u, down_s, up_u, up_s)


@dataclass(frozen=True)
class Windows:
    """Available windows of each trace entry, repeating every ``period`` seconds.

    Window times are relative to the start of the period; ``start``, ``end`` and ``entry``
    are flat arrays sorted by (entry, start), so one ``searchsorted`` answers a query for
    every client at once.
    """

    period: np.ndarray
    entry: np.ndarray
    start: np.ndarray
    end: np.ndarray

    @property
    def entries(self) -> int:
        return len(self.period)

    def query(self, t: float, entry_of: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(online, seconds left in the current window) for clients using ``entry_of``."""
        span = float(self.period.max()) + 1.0
        keys = self.entry * span + self.start
        phase = np.mod(t, self.period[entry_of])
        idx = np.searchsorted(keys, entry_of * span + phase, side="right") - 1
        safe = np.maximum(idx, 0)
        online = (idx >= 0) & (self.entry[safe] == entry_of) & (phase < self.end[safe])
        return online, np.where(online, self.end[safe] - phase, 0.0)


def _windows(periods: list[float], spans: list[list[tuple[float, float]]], file: str,
             field: str) -> Windows:
    entry, start, end = [], [], []
    for i, (period, windows) in enumerate(zip(periods, spans, strict=True)):
        if not period > 0:
            raise ScenarioError(f"entry {i} of {file} has a non-positive period.", field=field)
        for s, e in sorted(windows):
            if e < s:
                raise ScenarioError(f"entry {i} of {file} has a window ending before it "
                                    f"starts ({s} > {e}).", field=field)
            entry.append(i)
            start.append(s)
            end.append(min(e, period))
    return Windows(np.asarray(periods, float), np.asarray(entry, int),
                   np.asarray(start, float), np.asarray(end, float))


def fedscale_behaviour(path: str) -> Windows:
    field = "federated.traces.behaviour"
    rows = _ordered(_records(path, field, ("active", "inactive", "finish_time")))
    periods, spans = [], []
    try:
        for row in rows:
            active = np.ravel(row["active"]).astype(float)
            inactive = np.ravel(row["inactive"]).astype(float)
            if len(active) != len(inactive):
                raise ValueError
            periods.append(float(np.ravel(row["finish_time"])[0]))
            spans.append(list(zip(active.tolist(), inactive.tolist())))
    except (KeyError, IndexError, TypeError, ValueError):
        raise ScenarioError(f"every entry of {path} needs numeric 'active' and 'inactive' "
                            "lists of equal length and a 'finish_time'.", field=field) from None
    return _windows(periods, spans, path, field)


def flash_availability(path: str) -> Windows:
    field = "federated.traces.flash_availability"
    rows = _ordered(_records(path, field, ()))
    periods: list[float] = []
    spans: list[list[tuple[float, float]]] = []
    try:
        for row in rows:
            if not row.get("isSuccess", True):  # FLASH could not parse this device's trace
                periods.append(1.0)
                spans.append([])
                continue
            first, last = float(row["trace_start"]), float(row["trace_end"])
            periods.append(last - first)
            spans.append([(float(s) - first, float(e) - first) for s, e in row["ready_time"]])
    except (KeyError, TypeError, ValueError):
        raise ScenarioError(f"every entry of {path} needs numeric 'trace_start', "
                            "'trace_end' and a 'ready_time' list of [start, end] pairs.",
                            field=field) from None
    return _windows(periods, spans, path, field)
