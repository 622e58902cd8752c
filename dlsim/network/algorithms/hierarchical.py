"""The two-level all-reduce: rings inside each node, rings across nodes (Horovod, NCCL
CollNet-style)."""

from __future__ import annotations

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def hierarchical_allreduce(devices: np.ndarray, size_bytes: float, nodes: np.ndarray,
                           **_: object) -> list[Phase]:
    """Intra-node ring reduce-scatter -> inter-node ring all-reduce of each G/L slice (one
    ring per local rank, L rings at once) -> intra-node ring all-gather (Horovod, NCCL
    CollNet-style two-level scheme). L ranks per node, M nodes."""
    order = np.argsort(nodes, kind="stable")
    local = devices[order]
    counts = np.unique(nodes, return_counts=True)[1]
    if len(set(counts.tolist())) != 1:
        raise ScenarioError("hierarchical all-reduce needs the same number of ranks on every "
                            f"node, got {counts.tolist()}.", field="algorithm")
    per_node, n_nodes = int(counts[0]), len(counts)
    grid = local.reshape(n_nodes, per_node)
    phases = []
    if per_node > 1:
        intra_src, intra_dst = grid.ravel(), np.roll(grid, -1, axis=1).ravel()
        chunk = np.full(grid.size, size_bytes / per_node)
        phases.append(Phase("intra-node reduce-scatter", intra_src, intra_dst, chunk,
                            per_node - 1))
    if n_nodes > 1:
        inter_src, inter_dst = grid.T.ravel(), np.roll(grid, -1, axis=0).T.ravel()
        phases.append(Phase("inter-node all-reduce", inter_src, inter_dst,
                            np.full(grid.size, size_bytes / per_node / n_nodes),
                            2 * (n_nodes - 1)))
    if per_node > 1:
        phases.append(Phase("intra-node all-gather", intra_src, intra_dst, chunk,
                            per_node - 1))
    return phases


register(ALGORITHM, "hierarchical", Algorithm({"allreduce": hierarchical_allreduce},
                                              planner=True, precedence=4))
