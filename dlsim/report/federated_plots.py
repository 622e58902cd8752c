"""Figures for federated reports: round times and participation per device class.
Same conventions as ``dlsim.report.plots`` (object API, one PNG data URI per figure)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dlsim.report.plots import CATEGORY_COLOURS, _new_figure, _style, _to_data_uri


def time_unit(seconds: float) -> tuple[float, str]:
    """Hours past two hours, minutes past two minutes, else seconds: (scale, unit)."""
    if seconds >= 2 * 3600:
        return 3600.0, "h"
    if seconds >= 120:
        return 60.0, "min"
    return 1.0, "s"


def round_times(durations_s: Sequence[float] | np.ndarray,
                ends_s: Sequence[float] | np.ndarray) -> str:
    """Histogram of round durations beside the time at which each round completed."""
    fig = _new_figure(10.0, 3.6)
    hist, curve = fig.subplots(1, 2)
    durations = np.asarray(durations_s, dtype=float)
    scale, unit = time_unit(float(durations.max(initial=0.0)))
    shown = np.round(durations / scale, 9)  # equal rounds may differ in the last bit
    hist.hist(shown, bins=min(40, max(len(durations) // 4, 5)),
              color=CATEGORY_COLOURS["compute"], edgecolor="white", linewidth=0.5)
    hist.axvline(float(np.median(durations)) / scale if len(durations) else 0.0,
                 color="#222222", linestyle="--", linewidth=1.2, label="median")
    _style(hist, "Round time", f"round time ({unit})", "rounds")
    hist.legend(fontsize=8, frameon=False)
    ends = np.asarray(ends_s, dtype=float)
    scale, unit = time_unit(float(ends.max(initial=0.0)))
    curve.step(np.concatenate(([0.0], ends / scale)), np.arange(len(ends) + 1), where="post",
               color=CATEGORY_COLOURS["comm"], linewidth=1.6)
    _style(curve, "Rounds completed", f"simulated time ({unit})", "rounds")
    curve.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    return _to_data_uri(fig)


def participation(classes: Sequence[str], selected_per_client: Sequence[float],
                  aggregated_per_client: Sequence[float], energy_J: Sequence[float]) -> str:
    """Per device class: selections and aggregated updates per client, and training energy."""
    fig = _new_figure(10.0, 3.0 + 0.25 * len(classes))
    counts, energy = fig.subplots(1, 2)
    y = np.arange(len(classes))
    counts.barh(y - 0.2, selected_per_client, height=0.4, color="#BDBDBD", label="selected")
    counts.barh(y + 0.2, aggregated_per_client, height=0.4, color=CATEGORY_COLOURS["compute"],
                label="aggregated")
    counts.set_yticks(y, list(classes))
    counts.invert_yaxis()
    _style(counts, "Participation per client", "rounds per client of the class")
    counts.legend(fontsize=8, frameon=False, ncols=2, loc="lower left",
                  bbox_to_anchor=(0, 1.06))  # above the axes: never over a bar
    energy.barh(y, np.asarray(energy_J, dtype=float) / 1e3, height=0.6, color="#8172B3")
    energy.set_yticks(y, list(classes))
    energy.invert_yaxis()
    _style(energy, "Training energy per class", "energy (kJ)")
    return _to_data_uri(fig)
