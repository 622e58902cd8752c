"""Collective algorithms as small lowering functions: a collective becomes phases of flows.

Each function takes the participating devices in rank order and the collective's size in
bytes (nccl-tests' convention: the per-rank buffer for all-reduce and reduce-scatter input,
the gathered output for all-gather) and returns the phases the network runs one after
another. A phase's ``rounds`` are identical rounds sent back to back (a ring's 2(N-1) steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from dlsim.errors import ScenarioError


@dataclass(frozen=True)
class Phase:
    """Flows ``src[i] -> dst[i]`` of ``size_bytes[i]`` each, repeated ``rounds`` times."""

    label: str
    src: np.ndarray
    dst: np.ndarray
    size_bytes: np.ndarray
    rounds: int = 1


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


def server_ranks(n: int, servers: int) -> np.ndarray:
    """Ranks that host a parameter-server shard, spread evenly over the job."""
    return np.unique(np.linspace(0, n, servers, endpoint=False).astype(int))


def parameter_server(devices: np.ndarray, size_bytes: float, servers: int = 1,
                     **_: object) -> list[Phase]:
    """Push gradients to K server shards, then pull the updated parameters (Li et al. 2014).

    Servers are colocated on K of the N ranks and shard k owns G/K bytes. Every rank pushes
    its G/K slice to each other server and pulls it back: 2(N-1)*G bytes in total as for the
    ring, but each server's link carries (N-1)*G/K of it in each direction.
    """
    n = len(devices)
    if servers < 1 or servers > n:
        raise ScenarioError(f"a parameter server needs 1..{n} servers for {n} devices, "
                            f"got {servers}.", field="communication.servers")
    if n < 2:
        return []
    hosts = devices[server_ranks(n, servers)]
    workers = np.repeat(devices, len(hosts))
    shards = np.tile(hosts, n)
    shard = np.full(len(workers), size_bytes / len(hosts))
    return [Phase("push to servers", workers, shards, shard),
            Phase("pull from servers", shards, workers, shard)]


Lowering = Callable[..., list[Phase]]

ALGORITHMS: dict[str, dict[str, Lowering]] = {
    "allreduce": {"ring": ring_allreduce, "ps": parameter_server},
    "reducescatter": {"ring": ring_reduce_scatter},
    "allgather": {"ring": ring_allgather},
}


def lower(op: str, algorithm: str, devices: np.ndarray, size_bytes: float,
          servers: int = 1) -> list[Phase]:
    """The phases of collective ``op`` run by ``algorithm`` over ``devices``."""
    by_algorithm = ALGORITHMS.get(op)
    if by_algorithm is None:
        raise ScenarioError(f"unknown collective '{op}'; allowed: {', '.join(ALGORITHMS)}.",
                            field="collective.op")
    fn = by_algorithm.get(algorithm)
    if fn is None:
        raise ScenarioError(f"no '{algorithm}' algorithm for {op}; allowed: "
                            f"{', '.join(by_algorithm)}.", field="algorithm")
    return fn(np.asarray(devices), float(size_bytes), servers=servers)


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests' bus-bandwidth factor (doc/PERFORMANCE.md): busbw = algbw * factor."""
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op in ("reducescatter", "allgather"):
        return (n - 1) / n
    return 1.0
