"""Figures for edge-inference reports: the latency/energy-vs-split curve and the spatial
partition's latency against the device count. Same conventions as ``dlsim.report.plots``."""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.axes import Axes

from dlsim.report.plots import _new_figure, _style, _to_data_uri

PART_COLOURS = {"device_s": "#4C72B0", "upload_s": "#DD8452", "server_s": "#55A868",
                "download_s": "#C9A26B"}
PART_LABELS = {"device_s": "device compute", "upload_s": "upload", "server_s": "server compute",
               "download_s": "result download"}


def _expected_and_best(ax: Axes, table: pd.DataFrame, expected: str, best: int, colour: str,
                       label: str) -> None:
    """The expected values with early exits as a line (when ``table`` has them), the best
    split as a dashed vertical line, and the legend."""
    if expected in table:
        ax.plot(np.arange(len(table)), table[expected] * 1e3, color="#222222", marker="o",
                markersize=3, linewidth=1.4, label="expected, with early exits")
    ax.axvline(best, color=colour, linestyle="--", linewidth=1.2, label=label)
    ax.legend(fontsize=8, frameon=False, ncols=3)


def split_curve(table: pd.DataFrame, best_latency: int, best_energy: int) -> str:
    """Stacked latency parts per split point above the device energy per split point; the
    expected values with early exits as lines when the table has them."""
    fig = _new_figure(10.0, 6.2)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=(3, 2))
    x = np.arange(len(table))
    base = np.zeros(len(table))
    for part, colour in PART_COLOURS.items():
        ms = table[part].to_numpy() * 1e3
        top.bar(x, ms, bottom=base, color=colour, width=0.75, label=PART_LABELS[part])
        base += ms
    _expected_and_best(top, table, "expected_latency_s", best_latency, "#C44E52",
                       "fastest split")
    _style(top, "Latency per split point", "", "latency (ms)")
    bottom.bar(x, table["energy_J"] * 1e3, color="#8172B3", width=0.75,
               label="device energy, full request")
    _expected_and_best(bottom, table, "expected_energy_J", best_energy, "#2e7d32",
                       "least-energy split")
    _style(bottom, "Device energy per split point", "last layer on the device", "energy (mJ)")
    bottom.set_xticks(x, table["split_after"].tolist(), rotation=60, ha="right", fontsize=7)
    return _to_data_uri(fig)


def spatial_lines(table: pd.DataFrame) -> str:
    """Latency against the number of devices, one line per partitioning strategy."""
    fig = _new_figure(8.0, 3.8)
    ax = fig.add_subplot()
    for strategy, frame in table.groupby("strategy", sort=True):
        ax.plot(frame["devices"], frame["latency_s"] * 1e3, marker="o", markersize=4,
                linewidth=1.6, label=str(strategy))
    ax.set_xticks(sorted(table["devices"].unique()))
    _style(ax, "Spatial partition latency", "devices", "latency (ms)")
    ax.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False)
    return _to_data_uri(fig)
