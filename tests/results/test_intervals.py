"""Interval algebra: the one-sweep ``minus`` against the definition, interval by interval."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.results.intervals import minus, union


def _minus_by_definition(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Each interval of ``a`` cut by every interval of ``b`` in turn."""
    out = []
    for start, end in a:
        cursor = start
        for bs, be in b:
            if be <= cursor or bs >= end:
                continue
            if bs > cursor:
                out.append((cursor, bs))
            cursor = max(cursor, be)
        if cursor < end:
            out.append((cursor, end))
    return np.array(out, dtype=float).reshape(-1, 2)


# up to 60 intervals a side: ``minus`` sweeps a few in Python and many with numpy
_intervals = st.lists(st.tuples(st.integers(0, 400), st.integers(1, 8)), max_size=60).map(
    lambda pairs: union((s / 4, s / 4 + w / 4) for s, w in pairs))


@settings(max_examples=300)
@given(a=_intervals, b=_intervals)
def test_minus_is_the_definition(a, b):
    assert np.array_equal(minus(a, b), _minus_by_definition(a, b))


def _union_by_definition(intervals: list[tuple[float, float]]) -> np.ndarray:
    """Merge in start order, one interval at a time."""
    merged: list[list[float]] = []
    for start, end in sorted(intervals):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return np.array(merged, dtype=float).reshape(-1, 2)


@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 8)), max_size=30))
def test_union_is_the_definition(pairs):
    intervals = [(s / 4, s / 4 + w / 4) for s, w in pairs]
    assert np.array_equal(union(intervals), _union_by_definition(intervals))
