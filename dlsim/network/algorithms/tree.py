"""NCCL's double binary tree all-reduce (Sanders, Speck & Traeff 2009)."""

from __future__ import annotations

import numpy as np

from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def _binary_tree_parents(n: int) -> np.ndarray:
    """Parent position of each position in a balanced in-order binary tree (-1: root)."""
    parent = np.full(n, -1)
    stack = [(0, n - 1, -1)]
    while stack:
        lo, hi, up = stack.pop()
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        parent[mid] = up
        stack += [(lo, mid - 1, mid), (mid + 1, hi, mid)]
    return parent


def tree_depth(parent: np.ndarray) -> int:
    depth = np.zeros(len(parent), dtype=int)
    for v in range(len(parent)):
        u = v
        while parent[u] >= 0:
            depth[v] += 1
            u = parent[u]
    return int(depth.max())


def double_binary_tree(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """NCCL's double binary tree (Sanders, Speck & Traeff 2009): two trees, each reducing
    and broadcasting half the data, the second the first shifted by one rank so that most
    leaves of one are inner nodes of the other. Pipelined in chunks: every tree edge streams
    G/2 up and G/2 down at once, and the pipeline fills in 2 x depth latencies."""
    n = len(devices)
    if n < 2:
        return []
    parent = _binary_tree_parents(n)
    child = np.flatnonzero(parent >= 0)
    src, dst = [], []
    for order in (devices, np.roll(devices, -1)):
        up_from, up_to = order[child], order[parent[child]]
        src += [up_from, up_to]
        dst += [up_to, up_from]
    src_a, dst_a = np.concatenate(src), np.concatenate(dst)
    return [Phase("double binary tree reduce + broadcast", src_a, dst_a,
                  np.full(len(src_a), size_bytes / 2), 1, 2 * tree_depth(parent))]


register(ALGORITHM, "tree", Algorithm({"allreduce": double_binary_tree}, nccl=True,
                                      planner=True, precedence=1))
