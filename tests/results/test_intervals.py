"""Interval algebra: the one-sweep ``minus`` against the definition, interval by interval."""

from __future__ import annotations

import numpy as np
from hypothesis import given
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


_intervals = st.lists(st.tuples(st.integers(0, 60), st.integers(1, 8)), max_size=25).map(
    lambda pairs: union((s / 4, s / 4 + w / 4) for s, w in pairs))


@given(a=_intervals, b=_intervals)
def test_minus_is_the_definition(a, b):
    assert np.array_equal(minus(a, b), _minus_by_definition(a, b))
