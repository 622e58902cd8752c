"""Human units for reports (SI inside, human units only at the edges), and the headline card
that shows one such number.

Every page (run, federated, inference, sweep, plan) formats with these, so a duration or a
size reads the same way everywhere.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Card:
    """One headline number: what it is, its value with units, and a line of context."""

    label: str
    value: str
    unit: str = ""
    detail: str = ""
    tone: str = ""  # '', 'good' or 'bad'

    @classmethod
    def of(cls, label: str, text: str, detail: str = "", tone: str = "") -> Card:
        """A card from formatted text such as '1.5 ms': the number, then its unit."""
        value, _, unit = text.partition(" ")
        return cls(label, value, unit, detail, tone)


def significant(value: float, digits: int = 3) -> str:
    """Three significant figures, but never scientific notation for large numbers."""
    return f"{value:,.0f}" if abs(value) >= 10 ** digits - 0.5 else f"{value:.{digits}g}"


def scaled(value: float, units: tuple[tuple[float, str], ...], sep: str) -> str:
    """Pick the largest unit the value (rounded to 3 significant figures) reaches; ``units``
    are (scale, name) pairs, largest first."""
    rounded = float(f"{value:.3g}")
    for scale, unit in units:
        if abs(rounded) >= scale:
            return f"{significant(value / scale)}{sep}{unit}"
    scale, unit = units[-1]
    return f"{significant(value / scale)}{sep}{unit}"


def format_seconds(seconds: float) -> str:
    """12.3 ms, 4.56 µs, 1.5 s, 3.09 h, 7.08 days: three significant figures in the unit that
    reads best."""
    if seconds == 0:
        return "0 s"
    return scaled(seconds, ((86400.0, "days"), (3600.0, "h"), (1.0, "s"), (1e-3, "ms"),
                            (1e-6, "µs"), (1e-9, "ns")), " ")


def format_bytes(nbytes: float) -> str:
    """Decimal (SI) bytes as hardware vendors quote capacities: 80 GB, 1.5 TB."""
    return scaled(nbytes, ((1e15, "PB"), (1e12, "TB"), (1e9, "GB"), (1e6, "MB"), (1e3, "kB"),
                           (1.0, "B")), " ")


def format_energy(joules: float) -> str:
    """Joules in the unit that reads best: 573 J, 1.2 MJ, 2.19 mJ; kWh above 3.6 MJ, as
    power bills count it."""
    if joules >= 3.6e6:
        return scaled(joules / 3.6e6, ((1e6, "GWh"), (1e3, "MWh"), (1.0, "kWh")), " ")
    if joules == 0:
        return "0 J"
    return scaled(joules, ((1e3, "kJ"), (1.0, "J"), (1e-3, "mJ"), (1e-6, "µJ"),
                           (1e-9, "nJ")), " ")


def format_power(watts: float) -> str:
    """272 W, 5.6 kW, 1.2 MW."""
    return scaled(watts, ((1e6, "MW"), (1e3, "kW"), (1.0, "W"), (1e-3, "mW")), " ")


def format_usd(usd: float) -> str:
    """Dollars and cents from a dollar up (1,234.56 USD), three significant figures below
    (0.00300 USD a step, 1.15e-08 USD a token) and from ten thousand (891k USD, 1.2M USD)."""
    if usd >= 1e4:
        return scaled(usd, ((1e9, "B"), (1e6, "M"), (1e3, "k")), "") + " USD"
    return f"{usd:,.2f} USD" if usd >= 1 else f"{usd:.3g} USD"


def format_count(count: float) -> str:
    """Parameter counts the way the field writes them: 25.6M, 175B, 1.2T."""
    return scaled(count, ((1e12, "T"), (1e9, "B"), (1e6, "M"), (1e3, "k"), (1.0, "")), "")


def format_number(value: Any) -> str:
    """Table cells: floats to 4 significant figures, integers with separators, rest as text."""
    if isinstance(value, bool | np.bool_) or value is None:
        return str(value)
    if isinstance(value, int | np.integer):
        return f"{int(value):,}"
    if isinstance(value, float | np.floating):
        return "–" if math.isnan(value) else f"{float(value):.4g}"
    return str(value)


# Units of a field named by its suffix (the summary's convention: SI names with the unit
# last), and words for the fields whose names carry none.
_SUFFIX_UNITS = (("_per_s_per_gpu", "/s per GPU"), ("_samples_per_s", "samples/s"),
                 ("_per_s", "/s"), ("_GBps", "GB/s"), ("_bytes", "bytes"), ("_usd", "USD"),
                 ("_kwh", "kWh"), ("_ms", "ms"), ("_us", "µs"), ("_s", "s"), ("_pct", "%"),
                 ("_days", "days"), ("_GB", "GB"), ("_J", "J"), ("_W", "W"))
_FIELD_WORDS = {"mfu": "model FLOPs utilisation (fraction of peak)",
                "tflops_per_device": "achieved TFLOP/s per device",
                "throughput_samples_per_s": "throughput (samples/s)",
                "busbw_GBps": "bus bandwidth (GB/s)", "algbw_GBps": "algorithm bandwidth (GB/s)",
                "comm_bytes_total": "bytes communicated (bytes)",
                "devices": "devices", "nodes": "nodes"}


def axis_label(field: str) -> str:
    """A plot axis for a table column: words with the unit in parentheses, as in
    'step time (s)' for ``step_time_s`` or 'size (bytes)' for ``collective.size_bytes``; the
    section a nested field sits in is kept in words where the leaf alone would be vague
    ('data parallelism' for ``parallelism.data``)."""
    section, _, leaf = field.rpartition(".")
    if leaf in _FIELD_WORDS:
        return _FIELD_WORDS[leaf]
    for name in (leaf, section.rsplit(".", 1)[-1]):  # breakdown_s.compute: seconds too
        for suffix, unit in _SUFFIX_UNITS:
            if name.endswith(suffix) and len(name) > len(suffix):
                words = (leaf[: -len(suffix)] if name == leaf else leaf).replace("_", " ")
                return f"{words} ({unit})"
    words = leaf.replace("_", " ")
    return f"{words}-parallel degree" if section.endswith("parallelism") and leaf in (
        "data", "tensor", "pipeline", "context", "expert") else words
