"""Interruption rates per cause, read from a table of interruptions observed on a cluster.

A row counts the interruptions of one cause (``component``, with its ``category``) seen in
``period_days`` on ``gpus`` devices (a number, or text whose first number it is, such as "up
to 16,384 H100"); its rate is count / (gpus x period_days) per GPU-day. ASSUMPTION: every
cause, host and network ones included, scales with the device count (a host or switch serves
a fixed number of GPUs), and the job's devices fail independently, so a job of n devices is
interrupted by a Poisson process of rate n x sum of the rates. Where the table says "up to"
n GPUs the rates are lower bounds. The bundled table (``rates: llama3``) is Table 5 of "The
Llama 3 Herd of Models" (Llama Team, arXiv 2407.21783, §3.3.4): 419 unexpected interruptions
in 54 days of Llama 3 405B pre-training on up to 16,384 H100.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from dlsim.contract.errors import ScenarioError
from dlsim.data import ROOT, VALIDATION

BUNDLED = {"llama3": VALIDATION / "llama3_interruptions.csv"}
COLUMNS = ("component", "interruption_count", "period_days", "gpus")


@dataclass(frozen=True)
class InterruptionRates:
    """Interruptions per GPU-day of each cause, from the table at ``path``."""

    path: str
    causes: tuple[str, ...]
    categories: tuple[str, ...]
    per_gpu_day: np.ndarray

    def per_second(self, devices: int) -> float:
        """The rate at which a job of ``devices`` devices is interrupted (any cause)."""
        return float(self.per_gpu_day.sum()) * devices / 86400.0

    def expected(self, devices: int, days: float) -> np.ndarray:
        """Expected interruptions of each cause for ``devices`` devices over ``days``."""
        return np.asarray(self.per_gpu_day * devices * days)


def _path(rates: str) -> Path:
    if rates in BUNDLED:
        return BUNDLED[rates]
    for candidate in (Path(rates), ROOT / rates):
        if candidate.is_file():
            return candidate
    raise ScenarioError(f"interruption table '{rates}' not found: give a CSV path (relative to "
                        f"the working directory or dlsim's data) or one of "
                        f"{', '.join(BUNDLED)}.", field="failures.rates")


def _devices(value: object, file: Path, row: int) -> float:
    first = re.search(r"\d[\d,]*(?:\.\d+)?", str(value))
    count = float(first.group().replace(",", "")) if first else 0.0
    if count <= 0:
        raise ScenarioError(f"{file}, row {row + 1}: gpus must be a positive number of "
                            f"devices (text such as 'up to 16,384 H100' gives its first "
                            f"number), got '{value}'.", field="failures.rates")
    return count


def load_rates(rates: str) -> InterruptionRates:
    """The table ``rates`` names, as interruptions per GPU-day of each cause."""
    file = _path(rates)
    try:
        table = pd.read_csv(file)
    except (OSError, ValueError) as exc:
        raise ScenarioError(f"cannot read {file}: {exc}.", field="failures.rates") from None
    missing = [c for c in COLUMNS if c not in table.columns]
    if missing or table.empty:
        raise ScenarioError(f"{file} needs a row per cause with columns {', '.join(COLUMNS)}"
                            f"{'; it lacks ' + ', '.join(missing) if missing else ''}.",
                            field="failures.rates")
    counts = pd.to_numeric(table["interruption_count"], errors="coerce").to_numpy(float)
    days = pd.to_numeric(table["period_days"], errors="coerce").to_numpy(float)
    if not (np.all(counts >= 0) and np.all(days > 0)):  # NaN fails both
        raise ScenarioError(f"{file}: interruption_count must be numbers >= 0 and period_days "
                            "numbers > 0.", field="failures.rates")
    gpus = np.array([_devices(v, file, i) for i, v in enumerate(table["gpus"])])
    categories = (table["category"].astype(str) if "category" in table.columns
                  else table["component"].astype(str))
    return InterruptionRates(str(rates), tuple(table["component"].astype(str)),
                             tuple(categories), counts / (gpus * days))
