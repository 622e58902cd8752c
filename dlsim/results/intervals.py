"""Interval algebra over a device's timeline, and the time breakdown built from it.

The breakdown partitions [0, T] of one device's timeline, so its parts sum to T exactly:
compute (any compute span), exposed communication (a collective moving data while no compute
runs), straggler wait (waiting at a collective for peers, with nothing else running), pipeline
bubble (zero for data parallelism, which has none), and idle (the rest). Communication is also
split by the grid axis each collective ran over (data, tensor, pipeline, ...).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable

import numpy as np

from dlsim.contract.program import AXIS_OF_ROLE
from dlsim.contract.span import Span


def union(intervals: Iterable[tuple[float, float]]) -> np.ndarray:
    """Disjoint, sorted intervals covering the same time as ``intervals`` (shape (k, 2)):
    sorted by start, an interval opens a new piece where it starts after every earlier one
    has ended (one array at the end: a 1T step's device holds 16,000 spans)."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            if end > merged[-1][1]:
                merged[-1][1] = end
        else:
            merged.append([start, end])
    return np.array(merged, dtype=float).reshape(-1, 2)


def length(intervals: np.ndarray) -> float:
    return float((intervals[:, 1] - intervals[:, 0]).sum()) if len(intervals) else 0.0


def minus(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The parts of disjoint sorted intervals ``a`` not covered by disjoint sorted intervals
    ``b``: the gaps of ``b`` (and the time before and after it), each clipped to every
    interval of ``a`` it meets (a step of ZeRO-3's per-layer gathers holds thousands)."""
    if len(a) == 0 or len(b) == 0:
        return a.reshape(-1, 2)
    if len(a) + len(b) < 64:  # numpy's calls cost more than a sweep of a few
        return _minus_few(a, b)
    gaps = np.column_stack([np.r_[-np.inf, b[:, 1]], np.r_[b[:, 0], np.inf]])
    gaps = gaps[gaps[:, 0] < gaps[:, 1]]
    # the gaps each interval of a meets: those ending after its start and starting before
    # its end (both sorted, so a range of gaps per interval)
    first = np.searchsorted(gaps[:, 1], a[:, 0], side="right")
    last = np.searchsorted(gaps[:, 0], a[:, 1], side="left")
    counts = np.maximum(last - first, 0)
    which = np.repeat(np.arange(len(a)), counts)
    gap = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) \
        + np.repeat(first, counts)
    out = np.column_stack([np.maximum(a[which, 0], gaps[gap, 0]),
                           np.minimum(a[which, 1], gaps[gap, 1])])
    return out[out[:, 0] < out[:, 1]]


def _minus_few(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    out = []
    cuts = b.tolist()
    first = 0  # the first interval of b that does not end before the current one of a
    for start, end in a.tolist():
        while first < len(cuts) and cuts[first][1] <= start:
            first += 1
        cursor, i = start, first
        while i < len(cuts) and cuts[i][0] < end:
            bs, be = cuts[i]
            i += 1
            if be <= cursor:
                continue
            if bs > cursor:
                out.append((cursor, bs))
            cursor = max(cursor, be)
        if cursor < end:
            out.append((cursor, end))
    return np.array(out, dtype=float).reshape(-1, 2)


def spans_by_device(spans: Iterable[Span]) -> dict[int, list[Span]]:
    """The spans of each device, in their order."""
    mine: dict[int, list[Span]] = defaultdict(list)
    for span in spans:
        mine[span.device].append(span)
    return mine


def breakdown(spans: list[Span], device: int, total_s: float,
              pipeline: bool = False) -> dict[str, float]:
    """Seconds of [0, total_s] on ``device`` by category; the values sum to ``total_s``.

    In a pipeline a stage with nothing to do is waiting for its neighbours' activations or
    gradients: that time, idle or blocked on a receive, is the pipeline bubble.
    """
    mine = [s for s in spans if s.device == device]
    compute = union((s.start_s, s.end_s) for s in mine if s.category == "compute")
    comm = union((s.start_s, s.end_s) for s in mine if s.category == "comm")
    wait = union((s.start_s, s.end_s) for s in mine if s.category == "wait")
    exposed = minus(comm, compute)
    stalled = minus(minus(wait, compute), comm)
    parts = {"compute": length(compute), "exposed_comm": length(exposed), "bubble": 0.0,
             "straggler_wait": length(stalled)}
    parts["idle"] = max(total_s - sum(parts.values()), 0.0)
    if pipeline:
        parts["bubble"] = parts.pop("straggler_wait") + parts.pop("idle")
        parts.update(straggler_wait=0.0, idle=0.0)
    return parts


def stage_breakdowns(spans: list[Span], devices: list[int], total_s: float, steps: int
                     ) -> list[dict[str, float]]:
    """The pipeline breakdown per step of one device of each stage (``devices[s]``). The
    critical device's breakdown alone misleads when stages are unequal: the stage that ends
    last is often not the slowest, and its bubble then holds the wait for the slowest one."""
    mine = spans_by_device(spans)
    return [{k: v / steps for k, v in breakdown(mine[d], d, total_s, pipeline=True).items()}
            for d in devices]


def communication_by_axis(spans: list[Span], device: int, bytes_by_role: dict[str, float],
                          steps: int) -> dict[str, dict[str, float]]:
    """Per grid axis a collective ran over (``dlsim.contract.program.AXIS_OF_ROLE``), per
    step: the bytes every rank injected for it, the seconds ``device`` spent in its
    collectives (``time_s``, their union) and the part of that no compute overlapped
    (``exposed_s``). Each axis is measured on its own, so the exposed times of two axes that
    ran at once both count their common stretch."""
    mine = [s for s in spans if s.device == device]
    compute = union((s.start_s, s.end_s) for s in mine if s.category == "compute")
    out: dict[str, dict[str, float]] = {}
    for role, nbytes in bytes_by_role.items():
        axis = AXIS_OF_ROLE[role]
        entry = out.setdefault(axis, {"bytes": 0.0, "time_s": 0.0, "exposed_s": 0.0})
        entry["bytes"] += nbytes / steps
    for axis, entry in out.items():
        busy = union((s.start_s, s.end_s) for s in mine
                     if s.category == "comm" and AXIS_OF_ROLE.get(s.role) == axis)
        entry["time_s"] = length(busy) / steps
        entry["exposed_s"] = length(minus(busy, compute)) / steps
    return out
