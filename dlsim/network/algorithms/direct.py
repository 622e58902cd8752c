"""Direct exchanges: every rank messages every other rank, one latency per message.

A deployment choice rather than a library algorithm (its O(N^2) messages), so ``auto``
picks it only where nothing else runs the op (all-to-all, point-to-point sends).
"""

from __future__ import annotations

import numpy as np

from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def _pairs(devices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (i, j), i != j: the O(N^2) messages of a direct exchange."""
    n = len(devices)
    src, dst = np.repeat(devices, n), np.tile(devices, n)
    keep = src != dst
    return src[keep], dst[keep]


def direct_allreduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Naive all-reduce: every rank sends its G/N slice to every owner, then every owner
    sends the reduced slice back: N(N-1) messages per phase, one latency each."""
    if len(devices) < 2:
        return []
    src, dst = _pairs(devices)
    chunk = np.full(len(src), size_bytes / len(devices))
    return [Phase("direct reduce-scatter", src, dst, chunk),
            Phase("direct all-gather", src, dst, chunk)]


def direct_half(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Direct reduce-scatter or all-gather: one exchange of G/N between every pair."""
    if len(devices) < 2:
        return []
    src, dst = _pairs(devices)
    return [Phase("direct exchange", src, dst, np.full(len(src), size_bytes / len(devices)))]


def alltoall(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """All-to-all: each rank sends a distinct G/N block to every other rank."""
    return direct_half(devices, size_bytes)


def send(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Point to point: the first half of the group sends G each to the second half, pairwise
    (one pair, or the same send of every data-parallel replica at once)."""
    half = len(devices) // 2
    return [Phase("send", devices[:half], devices[half:], np.full(half, size_bytes))]


register(ALGORITHM, "direct", Algorithm(
    {"allreduce": direct_allreduce, "reducescatter": direct_half, "allgather": direct_half,
     "alltoall": alltoall, "send": send}, auto=False, precedence=3))
