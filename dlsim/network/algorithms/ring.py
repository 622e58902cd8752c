"""Rings (Patarasuk & Yuan 2009), and the chains and send/recv NCCL runs on its rings.

Under NCCL's protocols a ring collective is NCCL's set of rings, one per local rank
(``rail_rings``).
"""

from __future__ import annotations

from functools import partial

import numpy as np

from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def _ring_phase(label: str, devices: np.ndarray, chunk_bytes: float, rounds: int) -> Phase:
    """Every rank sends ``chunk_bytes`` to its successor, ``rounds`` times."""
    n = len(devices)
    return Phase(label, devices, np.roll(devices, -1), np.full(n, chunk_bytes), rounds)


def ring_allreduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Reduce-scatter then all-gather around the ring (Patarasuk & Yuan 2009).

    Each rank sends 2(N-1) chunks of G/N: 2(N-1)/N*G per rank, 2(N-1)*G in total, and the
    time on an uncontended ring is 2(N-1)*(alpha + G/(N*B)).
    """
    n = len(devices)
    if n < 2:
        return []
    return [_ring_phase("ring reduce-scatter + all-gather", devices, size_bytes / n,
                        2 * (n - 1))]


def ring_reduce_scatter(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    n = len(devices)
    return [_ring_phase("ring reduce-scatter", devices, size_bytes / n, n - 1)] if n > 1 else []


def ring_allgather(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    n = len(devices)
    return [_ring_phase("ring all-gather", devices, size_bytes / n, n - 1)] if n > 1 else []


def chain_broadcast(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Pipelined chain from rank 0 (NCCL's ring broadcast): G crosses every hop once and the
    pipeline fills in N-1 latencies."""
    n = len(devices)
    if n < 2:
        return []
    return [Phase("chain broadcast", devices[:-1], devices[1:], np.full(n - 1, size_bytes),
                  1, n - 1)]


def chain_reduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Pipelined chain towards rank 0, the broadcast reversed."""
    n = len(devices)
    if n < 2:
        return []
    return [Phase("chain reduce", devices[1:], devices[:-1], np.full(n - 1, size_bytes),
                  1, n - 1)]


def ring_sendrecv(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Point to point as nccl-tests' sendrecv runs it: every rank sends G to the next."""
    n = len(devices)
    if n < 2:
        return []
    return [Phase("send/recv", devices, np.roll(devices, -1), np.full(n, size_bytes))]


RING = {"allreduce": ring_allreduce, "reducescatter": ring_reduce_scatter,
        "allgather": ring_allgather}


def rail_rings(op: str, devices: np.ndarray, size_bytes: float, nodes: np.ndarray,
               **_: object) -> list[Phase]:
    """NCCL's rings on a multi-node job: one ring per local rank (NCCL's channels), ring c
    visiting each node's ranks from local rank c, so it leaves node m from local rank c-1
    and enters node m+1 at local rank c. With a NIC per GPU the L rings cross the fabric
    through L different NICs (Jeaugey, "Massively Scale Your Deep Learning Training with
    NCCL 2.4", NVIDIA blog 2019) instead of one ring squeezing through a single NIC. Each
    ring carries G/L. Falls back to one ring when nodes are uneven or hold one rank."""
    order = np.argsort(nodes, kind="stable")
    counts = np.unique(nodes, return_counts=True)[1]
    per_node = int(counts[0])
    if len(counts) < 2 or per_node < 2 or len(set(counts.tolist())) != 1:
        return RING[op](devices, size_bytes)
    grid = devices[order].reshape(len(counts), per_node)
    rings = [np.roll(grid, -c, axis=1).ravel() for c in range(per_node)]
    n = len(devices)
    steps = 2 * (n - 1) if op == "allreduce" else n - 1
    src = np.concatenate(rings)
    dst = np.concatenate([np.roll(r, -1) for r in rings])
    return [Phase(f"{per_node} rings ({op})", src, dst,
                  np.full(len(src), size_bytes / per_node / n), steps)]


register(ALGORITHM, "ring", Algorithm(
    {**RING, "broadcast": chain_broadcast, "reduce": chain_reduce, "sendrecv": ring_sendrecv},
    nccl=True, nccl_lowerings={op: partial(rail_rings, op) for op in RING}, planner=True,
    precedence=0))
