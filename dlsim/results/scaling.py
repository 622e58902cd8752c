"""Scaling analysis of a sweep over a device count: speed-up, efficiency, Amdahl and USL fits.

Speed-up is throughput relative to the smallest device count N₀ of the sweep (the base), so
with p = N/N₀ the base point has S(1) = 1 and both laws are fitted in units of that base:

- Amdahl (1967): S(p) = 1 / ((1 − f) + f/p). Linearised, 1/S − 1 = f·(1/p − 1): one
  least-squares slope through the origin, f kept in [0, 1]. The limit is 1/(1 − f) and
  p½ = f/(1 − f) base units reach half of it.
- Gunther's Universal Scalability Law (Gunther, *Guerrilla Capacity Planning*, 2007, ch. 4):
  C(p) = p / (1 + σ(p − 1) + κp(p − 1)). Linearised, p/C − 1 = σ(p − 1) + κp(p − 1):
  least squares in (σ, κ) with both non-negative. Throughput peaks at p* = √((1 − σ)/κ).
- Karp & Flatt (CACM 33(5), 1990): the serial fraction the measurement itself implies,
  e(p) = (1/S − 1/p)/(1 − 1/p); beside it the exposed-communication share of the step
  (``breakdown_s.exposed_comm / step_time_s``), which the simulator measured directly.

Throughput is ``throughput_samples_per_s`` for training. For a collective it is the bytes
reduced per second with every device bringing its own buffer, N · size / time, so that a
data-parallel all-reduce reads as weak scaling.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import nnls

DEVICE_COUNT_FIELDS = ("cluster.devices", "cluster.nodes", "parallelism.data",
                       "collective.devices")


def amdahl_speedup(p: np.ndarray | float, f: float) -> np.ndarray:
    """Amdahl's law: speed-up on p units when a fraction f of the work is parallel."""
    return 1.0 / ((1.0 - f) + f / np.asarray(p, dtype=float))


def usl_capacity(p: np.ndarray | float, sigma: float, kappa: float) -> np.ndarray:
    """Gunther's USL: relative capacity on p units with contention σ and coherency κ."""
    p = np.asarray(p, dtype=float)
    return p / (1.0 + sigma * (p - 1.0) + kappa * p * (p - 1.0))


def karp_flatt(p: np.ndarray, speedup: np.ndarray) -> np.ndarray:
    """Experimentally determined serial fraction; undefined (NaN) at the base p = 1."""
    p = np.asarray(p, dtype=float)
    s = np.asarray(speedup, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 1.0, (1.0 / s - 1.0 / p) / (1.0 - 1.0 / p), np.nan)


# Parameters of each law: a fit through as many points beyond the base as it has parameters
# passes through all of them, and its R² = 1 would say nothing.
AMDAHL_PARAMETERS, USL_PARAMETERS = 1, 2


def enough_points(devices: int, parameters: int) -> bool:
    """Whether ``devices`` device counts (the base, where every law gives 1, and the rest)
    test a law of ``parameters`` fitted parameters: more points beyond the base than that."""
    return devices - 1 > parameters


def _r2(observed: np.ndarray, predicted: np.ndarray, parameters: int) -> float | None:
    """Coefficient of determination of the speed-ups; None when the points are too few to
    test the fit (``enough_points``) or do not vary by more than rounding (1e-9 relative),
    where the ratio would be noise over noise."""
    if not enough_points(len(observed), parameters):
        return None
    total = float(np.sum((observed - observed.mean()) ** 2))
    if total <= len(observed) * (1e-9 * abs(float(observed.mean()))) ** 2:
        return None
    return 1.0 - float(np.sum((observed - predicted) ** 2)) / total


@dataclass(frozen=True)
class AmdahlFit:
    f: float
    limit: float | None       # 1/(1 − f) base units; None when f = 1 (no limit)
    p_half: float | None      # f/(1 − f): base units reaching half the limit; None if f = 0
    r2: float | None


@dataclass(frozen=True)
class USLFit:
    sigma: float
    kappa: float
    p_peak: float | None      # √((1 − σ)/κ); 1 when σ ≥ 1; None when κ = 0 (no peak)
    r2: float | None


def fit_amdahl(p: np.ndarray, speedup: np.ndarray) -> AmdahlFit:
    """Least-squares f from 1/S − 1 = f·(1/p − 1); needs at least one p > 1."""
    p, s = np.asarray(p, dtype=float), np.asarray(speedup, dtype=float)
    x, y = (1.0 / p - 1.0)[:, None], 1.0 / s - 1.0
    f = float(np.clip(np.linalg.lstsq(x, y, rcond=None)[0][0], 0.0, 1.0))
    limit = None if f == 1.0 else 1.0 / (1.0 - f)
    p_half = None if f in (0.0, 1.0) else f / (1.0 - f)  # f = 0: nothing to reach half of
    return AmdahlFit(f, limit, p_half, _r2(s, amdahl_speedup(p, f), AMDAHL_PARAMETERS))


def fit_usl(p: np.ndarray, capacity: np.ndarray) -> USLFit:
    """Least-squares σ, κ ≥ 0 from p/C − 1 = σ(p − 1) + κp(p − 1); needs two p > 1."""
    p, c = np.asarray(p, dtype=float), np.asarray(capacity, dtype=float)
    a = np.column_stack([p - 1.0, p * (p - 1.0)])
    coef = nnls(a, p / c - 1.0)[0]  # non-negative least squares (Lawson–Hanson)
    # a term adding under 1e-9 to the denominator anywhere in the data is not determined by
    # it (rounding leaves κ ~ 1e-18, which would put a fictitious peak at p ~ 1e9)
    coef[coef * a.max(axis=0) < 1e-9] = 0.0
    sigma, kappa = (float(v) for v in coef)
    if sigma >= 1.0:
        p_peak: float | None = 1.0
    elif kappa > 0.0:
        p_peak = math.sqrt((1.0 - sigma) / kappa)
    else:
        p_peak = None
    return USLFit(sigma, kappa, p_peak, _r2(c, usl_capacity(p, sigma, kappa), USL_PARAMETERS))


def throughput(table: pd.DataFrame) -> pd.Series | None:
    """The work rate each row achieved (see the module docstring), or None if unknown."""
    if "throughput_samples_per_s" in table:
        return pd.to_numeric(table["throughput_samples_per_s"], errors="coerce")
    if {"devices", "size_bytes", "time_s"} <= set(table.columns):
        return table["devices"] * table["size_bytes"] / table["time_s"]
    return None


def device_field(vary: list[str]) -> str | None:
    """The first varied field that sets a device count, if any."""
    return next((key for key in vary if key in DEVICE_COUNT_FIELDS), None)


@dataclass(frozen=True)
class GroupScaling:
    """One line of a scaling study: the points with their speed-ups and both fits."""

    label: str
    base_devices: int
    points: pd.DataFrame      # devices, p, throughput, speedup, efficiency, karp_flatt, ...
    amdahl: AmdahlFit
    usl: USLFit | None        # None with fewer than 3 device counts

    def fit_row(self) -> dict[str, Any]:
        """Both fits on one flat row, N½ and N* in devices (None where there is no value)."""
        a, u, n0 = self.amdahl, self.usl, self.base_devices

        def devices(p: float | None) -> float | None:
            return None if p is None else n0 * p

        row: dict[str, Any] = {"line": self.label, "base_devices": n0}
        row.update({"amdahl_f": a.f, "amdahl_limit": a.limit,
                    "n_half_devices": devices(a.p_half), "amdahl_r2": a.r2})
        row.update({"usl_sigma": None, "usl_kappa": None, "n_peak_devices": None,
                    "usl_r2": None} if u is None else
                   {"usl_sigma": u.sigma, "usl_kappa": u.kappa,
                    "n_peak_devices": devices(u.p_peak), "usl_r2": u.r2})
        return row

    def summary(self) -> dict[str, Any]:
        """The JSON-ready record: the fitted parameters and the per-point values."""
        return {**self.fit_row(),
                "points": self.points.replace({np.nan: None}).to_dict("records")}


def _group_scaling(label: str, frame: pd.DataFrame) -> GroupScaling | None:
    frame = frame.dropna(subset=["throughput"]).groupby("devices", as_index=False).first()
    frame = frame.sort_values("devices", ignore_index=True)
    if len(frame) < 2 or (frame["throughput"] <= 0).any():
        return None  # one device count is no scaling curve
    n0 = int(frame["devices"].iloc[0])
    p = frame["devices"].to_numpy(dtype=float) / n0
    s = frame["throughput"].to_numpy(dtype=float) / float(frame["throughput"].iloc[0])
    points = pd.DataFrame({"devices": frame["devices"].astype(int), "p": p,
                           "throughput": frame["throughput"], "speedup": s,
                           "efficiency": s / p, "karp_flatt": karp_flatt(p, s)})
    if "exposed_comm_share" in frame:
        points["exposed_comm_share"] = frame["exposed_comm_share"]
    return GroupScaling(label, n0, points, fit_amdahl(p, s),
                        fit_usl(p, s) if len(points) >= 3 else None)


def scaling_analysis(table: pd.DataFrame, vary: list[str]) -> list[GroupScaling]:
    """Per combination of the other varied fields, the scaling along the device count.

    Empty when no varied field is a device count or the rows carry no throughput. Rows that
    failed (an ``error`` column set) are left out.
    """
    key = device_field(vary)
    rate = throughput(table)
    if key is None or rate is None or "devices" not in table:
        return []
    data = pd.DataFrame({"devices": table["devices"], "throughput": rate})
    if {"breakdown_s.exposed_comm", "step_time_s"} <= set(table.columns):
        data["exposed_comm_share"] = table["breakdown_s.exposed_comm"] / table["step_time_s"]
    others = [k for k in vary if k != key]
    for k in others:
        data[k] = table[k].astype(str)
    if "error" in table:
        data = data[table["error"].isna()]
    data = data.dropna(subset=["devices"])
    if not others:
        groups = [("all", data)]
    else:
        groups = [(", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in zip(others, values)),
                   frame)
                  for values, frame in data.groupby(others, sort=False)]
    found = (_group_scaling(label, frame) for label, frame in groups)
    return [g for g in found if g is not None]
