"""Decentralised gossip averaging (D-PSGD, Lian et al., NeurIPS 2017). It does not compute
the average, so ``auto`` never picks it."""

from __future__ import annotations

import numpy as np

from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def gossip(devices: np.ndarray, size_bytes: float, peers: list[np.ndarray] | None = None,
           **_: object) -> list[Phase]:
    """Instead of an all-reduce, each rank sends its whole G to each neighbour in the
    communication graph and averages what it receives; the replicas agree only in
    expectation (convergence is not modelled). ``peers[i]``: the group positions rank i
    exchanges with (default: the ring's two neighbours). A rank with d neighbours sends
    d*G per step."""
    n = len(devices)
    if n < 2:
        return []
    if peers is None:
        peers = [np.unique([(i - 1) % n, (i + 1) % n]) for i in range(n)]
    counts = [len(p) for p in peers]
    src = np.repeat(devices, counts)
    dst = devices[np.concatenate(peers).astype(int)]
    return [Phase("gossip exchange", src, dst, np.full(len(src), size_bytes))]


register(ALGORITHM, "gossip", Algorithm({"allreduce": gossip}, auto=False, peers=True,
                                        precedence=6))
