"""The figures of an HTML report, each one function returning a ``data:image/png`` URI.

Matplotlib is used through its object API only (``Figure`` + ``FigureCanvasAgg``): no pyplot
state is touched, so reports can be rendered from worker threads and processes of a sweep
without figures leaking between them. Every function takes plain data (dicts, spans, a
DataFrame) and knows nothing of scenarios; the report layer decides what to plot.
"""

from __future__ import annotations

import base64
import io
import itertools
import textwrap
from collections.abc import Hashable, Iterable, Mapping, Sequence

import networkx as nx
import numpy as np
import pandas as pd
from matplotlib import colormaps
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.cm import ScalarMappable
from matplotlib.collections import LineCollection, PolyCollection
from matplotlib.colors import Normalize
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import FuncFormatter, MaxNLocator

from dlsim.contract.span import Span

CATEGORY_COLOURS: dict[str, str] = {"compute": "#4C72B0", "comm": "#DD8452", "wait": "#9A9A9A"}
BREAKDOWN_COLOURS: dict[str, str] = {
    "compute": CATEGORY_COLOURS["compute"],
    "exposed_comm": CATEGORY_COLOURS["comm"],
    "bubble": "#8172B3",
    "straggler_wait": CATEGORY_COLOURS["wait"],
    "idle": "#D4D4D4",
}
MEMORY_COLOURS: dict[str, str] = {
    "params": "#4C72B0",
    "grads": "#55A868",
    "optimizer": "#8172B3",
    "activations": "#DD8452",
    "other": "#BDBDBD",
}
OVERFLOW_COLOUR = "#C44E52"
TOPOLOGY_LABELS = 6  # the busiest lines an aggregated topology labels
_FALLBACK = "#937860"
_DPI = 110


def _new_figure(width_in: float, height_in: float) -> Figure:
    fig = Figure(figsize=(width_in, height_in), dpi=_DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _style(ax: Axes, title: str, xlabel: str, ylabel: str = "") -> None:
    ax.set_title(title, fontsize=11, loc="left", fontweight="bold", color="#222222")
    ax.set_xlabel(xlabel, fontsize=9)
    if ylabel:
        ax.set_ylabel(ylabel, fontsize=9)
    ax.tick_params(labelsize=8, colors="#333333")
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)
    ax.grid(axis="x", color="#E6E6E6", linewidth=0.8)
    ax.set_axisbelow(True)


def _to_data_uri(fig: Figure) -> str:
    """Encode the figure as PNG and release it; PNG keeps 20k-span timelines small."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI, facecolor="white")
    fig.clear()
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def breakdown_bar(breakdown_s: Mapping[str, float]) -> str:
    """One stacked horizontal bar: where the step time goes (parts sum to the step)."""
    fig = _new_figure(8.0, 2.1)
    ax = fig.add_subplot()
    left = 0.0
    shown = {part: seconds for part, seconds in breakdown_s.items() if seconds > 0}
    for part, seconds in shown.items():
        width_ms = float(seconds) * 1e3
        ax.barh(0, width_ms, left=left, height=0.6, label=part.replace("_", " "),
                color=BREAKDOWN_COLOURS.get(part, _FALLBACK), edgecolor="white", linewidth=0.8)
        left += width_ms
    ax.set_yticks([])
    ax.set_xlim(0, left if left > 0 else 1.0)
    _style(ax, "Step time breakdown", "time (ms)")
    if shown:
        fig.legend(ncols=len(shown), fontsize=8, frameon=False, loc="outside lower center")
    return _to_data_uri(fig)


def _rows(spans: Iterable[Span]) -> list[tuple[int, str]]:
    """(device, stream) rows in a stable order: device id, then compute before comm."""
    order = {"compute": 0, "comm": 1}
    keys = {(s.device, s.stream) for s in spans}
    return sorted(keys, key=lambda k: (k[0], order.get(k[1], 2), k[1]))


def timeline_gantt(spans: Sequence[Span], title: str = "Timeline") -> str:
    """Gantt chart, one row per (device, stream), bars coloured by span category; waits
    (a stream at a collective whose peers have not arrived) are thin lines, so the bars
    show when bytes really move.

    Each category is one ``PolyCollection`` whose rectangles are built as a numpy array, not
    one artist (or one Python loop iteration inside matplotlib) per span: that is what keeps
    a 20,000-span timeline well under a second.
    """
    rows = _rows(spans)
    index = {key: i for i, key in enumerate(rows)}
    categories = sorted({s.category for s in spans},
                        key=lambda c: (list(CATEGORY_COLOURS).index(c)
                                       if c in CATEGORY_COLOURS else 99, c))
    fig = _new_figure(10.0, 1.3 + 0.26 * max(len(rows), 1))
    ax = fig.add_subplot()
    start_s = min((s.start_s for s in spans), default=0.0)
    end_s = max((s.end_s for s in spans), default=0.0)
    scale, unit = (1e3, "ms") if end_s - start_s < 10 else (1.0, "s")  # 35 s, not 35,000 ms
    for category in categories:
        chosen = [s for s in spans if s.category == category]
        row = np.fromiter((index[(s.device, s.stream)] for s in chosen), float, len(chosen))
        x0 = np.fromiter((s.start_s for s in chosen), float, len(chosen)) * scale
        x1 = np.fromiter((s.end_s for s in chosen), float, len(chosen)) * scale
        half = 0.08 if category == "wait" else 0.38  # a wait moves nothing: a thin line
        y0, y1 = row - half, row + half
        verts = np.stack([np.column_stack(p) for p in ((x0, y0), (x0, y1), (x1, y1), (x1, y0))],
                         axis=1)
        bars = PolyCollection(verts,  # type: ignore[arg-type]  # stubs miss the (N, 4, 2) path
                              facecolors=CATEGORY_COLOURS.get(category, _FALLBACK),
                              linewidths=0, antialiaseds=False)
        ax.add_collection(bars, autolim=False)
    ax.set_yticks(range(len(rows)), [f"dev {d} · {st}" for d, st in rows])
    ax.set_ylim(max(len(rows), 1) - 0.5, -0.5)
    lo, hi = start_s * scale, end_s * scale
    ax.set_xlim(lo, hi if hi > lo else lo + 1.0)
    _style(ax, title, f"time ({unit})")
    words = {"comm": "bytes moving", "wait": "waiting for peers"}
    handles = [Patch(color=CATEGORY_COLOURS.get(c, _FALLBACK), label=words.get(c, c))
               for c in categories]
    ax.legend(handles=handles, ncols=len(handles) or 1, fontsize=8, frameon=False,
              loc="lower right", bbox_to_anchor=(1, 1.0))
    return _to_data_uri(fig)


def memory_bar(parts_bytes: Mapping[str, float], capacity_bytes: float | None) -> str:
    """Stacked bar of per-device memory (GB) against the device's capacity line."""
    fig = _new_figure(8.0, 2.2)
    ax = fig.add_subplot()
    left = 0.0
    for part, nbytes in parts_bytes.items():
        if nbytes <= 0:
            continue
        width = float(nbytes) / 1e9
        ax.barh(0, width, left=left, height=0.6, label=part,
                color=MEMORY_COLOURS.get(part, _FALLBACK), edgecolor="white", linewidth=0.8)
        left += width
    right = left
    if capacity_bytes:
        cap = float(capacity_bytes) / 1e9
        over = left > cap
        ax.axvline(cap, color=OVERFLOW_COLOUR if over else "#222222", linestyle="--",
                   linewidth=1.6, label=f"capacity {cap:.4g} GB")
        if over:
            ax.barh(0, left - cap, left=cap, height=0.6, fill=False, hatch="///",
                    edgecolor=OVERFLOW_COLOUR, linewidth=0)
        right = max(left, cap)
    ax.set_xlim(0, (right or 1.0) * 1.04)
    ax.set_yticks([])
    _style(ax, "Memory per device", "memory (GB)")
    if ax.get_legend_handles_labels()[0]:
        fig.legend(ncols=len(parts_bytes) + 1, fontsize=8, frameon=False,
                   loc="outside lower center")
    return _to_data_uri(fig)


def links_bar(labels: Sequence[str], utilisation: Sequence[float]) -> str:
    """Horizontal bars of link utilisation (%), busiest on top."""
    fig = _new_figure(8.0, 1.2 + 0.3 * max(len(labels), 1))
    ax = fig.add_subplot()
    pct = np.asarray(utilisation, dtype=float) * 100.0
    ypos = np.arange(len(labels))
    ax.barh(ypos, pct, height=0.65, color=CATEGORY_COLOURS["comm"])
    for y, p in zip(ypos, pct, strict=True):
        ax.text(p + 1.0, float(y), f"{p:.1f}%", va="center", fontsize=8, color="#333333")
    ax.set_yticks(ypos, list(labels))
    ax.set_ylim(max(len(labels), 1) - 0.5, -0.5)
    ax.set_xlim(0, max(100.0, float(pct.max()) * 1.1 if len(pct) else 100.0))
    _style(ax, "Busiest links", "utilisation (% of simulated time)")
    return _to_data_uri(fig)


def bars(labels: Sequence[str | int], values: Sequence[float] | np.ndarray, title: str, xlabel: str,
         ylabel: str, colour: str = CATEGORY_COLOURS["wait"]) -> str:
    """Vertical bars, one per label (devices, staleness values); at most ~32 tick labels."""
    fig = _new_figure(8.0, 3.4)
    ax = fig.add_subplot()
    xpos = np.arange(len(labels))
    ax.bar(xpos, np.asarray(values, dtype=float), width=0.8, color=colour)
    every = max(1, len(labels) // 32)
    ax.set_xticks(xpos[::every], [str(v) for v in labels][::every])
    _style(ax, title, xlabel, ylabel)
    ax.grid(axis="x", visible=False)
    ax.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    return _to_data_uri(fig)


def goodput_curve(intervals_h: Sequence[float], goodput: Sequence[float], chosen_h: float,
                  chosen: float, spread: tuple[float, float]) -> str:
    """Goodput against the time between checkpoints (log hours), with the scenario's interval
    marked at its mean and its 5-95 % spread over the Monte Carlo runs as a bar beside it
    (not around it: where failures are rare most runs lose nothing, and the mean, pulled
    down by the few that do, lies below the 5th percentile)."""
    fig = _new_figure(8.0, 3.4)
    ax = fig.add_subplot()
    ax.plot(intervals_h, 100 * np.asarray(goodput, dtype=float), marker="o", markersize=4,
            linewidth=1.6, color=CATEGORY_COLOURS["compute"], label="fixed interval")
    low, high = 100 * spread[0], 100 * spread[1]
    ax.plot([chosen_h, chosen_h], [low, high], marker="_", markersize=10, linewidth=1.6,
            color=OVERFLOW_COLOUR, label="this run, 5-95 % of the runs")
    ax.plot([chosen_h], [100 * chosen], marker="D", linestyle="none", color=OVERFLOW_COLOUR,
            label="this run, mean")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    _style(ax, "Goodput against the checkpoint interval", "time between checkpoints (h)",
           "goodput (% of wall time)")
    ax.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    ax.legend(fontsize=8, frameon=False)
    return _to_data_uri(fig)


def wants_log(values: pd.Series) -> bool:
    """True when the values are all positive numbers spanning more than two decades."""
    xs = pd.to_numeric(values, errors="coerce")
    return bool(len(xs) and xs.notna().all() and xs.min() > 0 and xs.max() / xs.min() > 100)


def series_colours(values: Iterable[object]) -> dict[str, str]:
    """One colour per series, by its value's text in sorted order, so that every plot of a
    report that draws the same series draws it in the same colour."""
    return {v: f"C{i % 10}" for i, v in enumerate(sorted({str(v) for v in values}))}


def sweep_plot(table: pd.DataFrame, x: str, y: str, group: str | None,
               labels: tuple[str, str] | None = None,
               colours: Mapping[str, str] | None = None) -> str:
    """``y`` against ``x``, one series per value of ``group``: lines where ``x`` is a number,
    grouped bars where it names choices (a fabric, an algorithm, on/off), whose order means
    nothing and which a line between them would misstate.

    A numeric axis goes logarithmic when its values are positive and span more than two
    decades, as sweeps over device counts or message sizes (and the times they give) do.
    ``labels`` are the (x, y) axis titles (default: the column names); ``colours`` the
    colour of each group's series by its value's text (default: ``series_colours``).
    """
    fig = _new_figure(8.0, 4.2)
    ax = fig.add_subplot()
    groups = [(None, table)] if group is None else list(table.groupby(group, sort=True))
    colours = colours or series_colours(value for value, _ in groups)
    numeric = pd.api.types.is_numeric_dtype(table[x]) and not pd.api.types.is_bool_dtype(table[x])
    if numeric:
        for value, frame in groups:
            frame = frame.sort_values(x)
            ax.plot(frame[x].to_numpy(), frame[y].to_numpy(), marker="o", markersize=4,
                    linewidth=1.6, label=None if group is None else str(value),
                    color=colours.get(str(value), "C0"))
        if wants_log(table[x]):
            ax.set_xscale("log")
            ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        elif pd.api.types.is_integer_dtype(table[x]):  # stages, degrees: no 0.5 ticks
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:
        choices = list(dict.fromkeys(table[x].tolist()))  # the sweep's order
        width = 0.8 / len(groups)
        for i, (value, frame) in enumerate(groups):
            heights = frame.groupby(x, sort=False)[y].first().reindex(choices)
            ax.bar(np.arange(len(choices)) + (i - (len(groups) - 1) / 2) * width,
                   heights.to_numpy(dtype=float), width=width * 0.95,
                   label=None if group is None else str(value),
                   color=colours.get(str(value), "C0"))
        ax.set_xticks(np.arange(len(choices)), choice_labels(choices))
    if wants_log(table[y]):
        ax.set_yscale("log")
    xlabel, ylabel = labels or (x, y)
    _style(ax, f"{ylabel} against {xlabel}", xlabel, ylabel)
    ax.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    if group is not None:
        ax.legend(fontsize=8, frameon=False, title=group, title_fontsize=8)
    return _to_data_uri(fig)


# characters of tick text across a plot's width, and lines a tick may take
TICK_CHARACTERS, TICK_LINES = 96, 8


def choice_labels(choices: Sequence[object]) -> list[str]:
    """Each choice's text wrapped to its share of the axis (a sweep over whole sections,
    "data=32, tensor=8, ...", would run its labels into one another), at most ``TICK_LINES``
    lines, the rest cut with an ellipsis (the runs' table below has every value)."""
    width = max(10, TICK_CHARACTERS // max(1, len(choices)))
    return ["\n".join(textwrap.wrap(str(choice), width, break_long_words=False,
                                    max_lines=TICK_LINES, placeholder=" …"))
            for choice in choices]


def parity(table: pd.DataFrame, tolerance: float = 0.15) -> str:
    """Predicted against measured, log-log, one colour per table, with the line where they
    are equal and the band within ``tolerance`` of it: a validation at a glance, across
    tables whose units differ (GB, GB/s, s, TFLOP/s). Rows without a prediction are left out."""
    rows = table[(table["predicted"] > 0) & (table["measured"] > 0)]
    if rows.empty:
        return ""
    fig = _new_figure(8.0, 5.0)
    ax = fig.add_subplot()
    lo = float(min(rows["measured"].min(), rows["predicted"].min())) / 2
    hi = float(max(rows["measured"].max(), rows["predicted"].max())) * 2
    line = np.geomspace(lo, hi, 50)
    ax.fill_between(line, line * (1 - tolerance), line * (1 + tolerance), color="#E8E8E8",
                    label=f"within {tolerance:.0%}")
    ax.plot(line, line, color="#888888", linewidth=1.0, label="predicted = measured")
    colours = colormaps["tab20"]  # more tables than the default cycle's ten
    for i, (name, frame) in enumerate(rows.groupby("table", sort=True)):
        ax.plot(frame["measured"], frame["predicted"], "osD^v"[i % 5], markersize=4,
                color=colours((2 * i) % 20 + (i // 10) % 2), label=str(name))
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    _style(ax, "predicted against measured (each table in its own unit)", "measured",
           "predicted")
    ax.legend(fontsize=7, frameon=False, loc="upper left")
    return _to_data_uri(fig)


def scaling_curves(curves: Sequence[Mapping[str, object]]) -> str:
    """Speed-up against device count: measured points, the Amdahl and USL fits, and ideal.

    Each curve is a mapping with ``label``, ``devices`` and ``speedup`` (the measured
    points), ``fit_devices`` with ``amdahl`` and/or ``usl`` (the fitted curves on a
    dense grid), and optionally its ``colour`` (the same series' in the report's other
    plot). Speed-up is relative to each curve's smallest device count.
    """
    fig = _new_figure(8.0, 4.4)
    ax = fig.add_subplot()
    cycle = itertools.cycle([f"C{i}" for i in range(10)])
    lo, hi = np.inf, 0.0
    for curve in curves:
        colour = str(curve.get("colour") or next(cycle))
        n = np.asarray(curve["devices"], dtype=float)
        lo, hi = min(lo, float(n.min())), max(hi, float(n.max()))
        ax.plot(n, np.asarray(curve["speedup"], dtype=float), "o", color=colour,
                markersize=5, label=f"{curve['label']}: simulated")
        grid = np.asarray(curve.get("fit_devices", ()), dtype=float)
        for law, style, name in (("amdahl", "--", "Amdahl"), ("usl", ":", "USL")):
            if curve.get(law) is not None:
                ax.plot(grid, np.asarray(curve[law], dtype=float), style, color=colour,
                        linewidth=1.4, label=f"{curve['label']}: {name} fit")
        ax.plot(grid, grid / n.min(), "-", color="#BBBBBB", linewidth=0.8, zorder=0)
    if hi / lo > 8:  # log-log: Amdahl's plateau and USL's peak read as bends, ideal as 45°
        for axis, set_scale in ((ax.xaxis, ax.set_xscale), (ax.yaxis, ax.set_yscale)):
            set_scale("log", base=2)
            axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    _style(ax, "Speed-up vs devices (grey: ideal)", "devices", "speed-up over the smallest N")
    ax.grid(axis="y", color="#E6E6E6", linewidth=0.8)
    ax.legend(fontsize=7, frameon=False, ncols=2 if len(curves) > 1 else 1)
    return _to_data_uri(fig)


def topology_utilisation(edges: pd.DataFrame, title: str) -> str:
    """The topology graph with each link coloured and thickened by its utilisation.

    ``edges`` has src, dst and utilisation per directed link; the two directions of a cable
    are drawn as one line with the busier direction's utilisation. Devices (the
    integer-named nodes) and groups of them ('node 3', 'nodes 4–7') are blue dots; switches,
    NICs and sockets grey squares. With a ``cables`` column (an aggregated picture), the
    busiest lines are labelled with their utilisation and how many cables they stand for. The layout
    is Kamada-Kawai's, which starts from a circle and has no randomness, so the same
    topology is drawn the same way every time.
    """
    graph: nx.Graph[Hashable] = nx.Graph()
    counts = edges["cables"] if "cables" in edges else pd.Series(0, index=edges.index)
    for src, dst, u, n in zip(edges["src"], edges["dst"], edges["utilisation"], counts):
        busiest = graph.edges[src, dst]["u"] if graph.has_edge(src, dst) else 0.0
        graph.add_edge(src, dst, u=max(busiest, float(u)), cables=int(n))
    pos = nx.kamada_kawai_layout(graph)
    fig = _new_figure(8.0, 5.2)
    ax = fig.add_subplot()
    segments = [[pos[a], pos[b]] for a, b in graph.edges]
    util = np.array([d["u"] for _, _, d in graph.edges(data=True)]) * 100.0
    top = max(float(util.max()), 1e-9)  # the scale ends at the busiest link, not at 100 %
    norm = Normalize(0.0, top)
    cmap = colormaps["viridis_r"]
    lines = LineCollection(segments, colors=cmap(norm(util)), linewidths=0.8 + 3.5 * util / top,
                           zorder=1)
    ax.add_collection(lines)
    def is_devices(v: Hashable) -> bool:
        return str(v).isdigit() or str(v).startswith(("node ", "nodes "))

    devices = [v for v in graph if is_devices(v)]
    others = [v for v in graph if not is_devices(v)]
    for nodes, marker, colour, size in ((devices, "o", CATEGORY_COLOURS["compute"], 60),
                                        (others, "s", "#7F7F7F", 45)):
        if nodes:
            xy = np.array([pos[v] for v in nodes])
            ax.scatter(xy[:, 0], xy[:, 1], s=size, marker=marker, color=colour,
                       edgecolors="white", linewidths=0.6, zorder=2)
    if graph.number_of_nodes() <= (80 if "cables" in edges else 40):  # groups: few words
        for v, (x, y) in pos.items():
            ax.annotate(str(v), (x, y), xytext=(0, 6), textcoords="offset points",
                        ha="center", fontsize=6, color="#333333", zorder=3)
    if "cables" in edges:  # the busiest lines, labelled
        ranked = sorted(graph.edges(data=True), key=lambda e: -e[2]["u"])[:TOPOLOGY_LABELS]
        for a, b, d in ranked:
            (xa, ya), (xb, yb) = pos[a], pos[b]
            ax.annotate(f"{100 * d['u']:.0f}% · {d['cables']} cable"
                        f"{'s' if d['cables'] != 1 else ''}", ((xa + xb) / 2, (ya + yb) / 2),
                        ha="center", fontsize=6, color="#111111", zorder=4,
                        bbox={"boxstyle": "round,pad=0.15", "fc": "white", "ec": "none",
                              "alpha": 0.8})
    ax.set_aspect("equal")
    ax.axis("off")
    fig.suptitle(title, x=0.02, ha="left", fontsize=11, fontweight="bold", color="#222222")
    bar = fig.colorbar(ScalarMappable(norm, cmap), ax=ax, shrink=0.6)
    bar.set_label("utilisation (% of simulated time)", fontsize=8)
    bar.ax.tick_params(labelsize=7)
    return _to_data_uri(fig)
