"""NVLS-Tree: NCCL's all-reduce across Hopper/Blackwell nodes (NCCL 2.18+, ``NCCL_ALGO=NVLSTree``).

Inside each node the NVSwitch reduces and multicasts as in NVLS (``nvls``); between nodes
each local rank's reduced 1/L shard (L GPUs per node) is all-reduced with the same local
rank of the other nodes over its own NIC, and the result is multicast back. The three
stages are pipelined (NCCL's tuner prices the algorithm at the slower of its intra-node
NVLS bandwidth and its inter-node bandwidth, ``src/graph/tuning.cc``: ``bw = min(intraBw,
interBw)``), so the lowering is one phase whose flows carry every stage's bytes at once:

- every GPU's switch port carries (L+1)/L x G each way (the NVLS all-reduce's load);
- every GPU's NIC carries 2(M-1)/M x G/L each way over M nodes. NCCL runs a tree between
  the nodes' heads and models its bandwidth as the NIC rate doubled on 2 nodes and not on
  more (``interBw * (nNodes <= 2 ? 2 : 1)``, tuning.cc): the same per-NIC load as a ring
  between the same local ranks, G/L at M = 2 and towards 2G/L as M grows, which is how the
  flows are laid out (local rank l of node m to local rank l of node m+1).

Latency: NCCL charges ``intraLat + 2 log2(nNodes) interLat``; the inter-node flows pay
2 ceil(log2 M) step latencies, the intra-node ones one. Runs only where every node's GPUs
sit on one NVSwitch of generation 3 or later and the inter-node flows leave through NICs
(``runs_on``); with one node NCCL disables it (NVLS covers that case).
"""

from __future__ import annotations

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import register
from dlsim.hardware.topology import LINK_CLASSES, Topology
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase
from dlsim.network.algorithms.nvls import NVLS_MIN_GENERATION

NET = LINK_CLASSES.index("net")


def node_grid(devices: np.ndarray, nodes: np.ndarray) -> np.ndarray:
    """The group as an M x L grid (node, local rank), or an input error unless it spans two
    or more nodes with the same two or more ranks on each."""
    order = np.argsort(nodes, kind="stable")
    counts = np.unique(nodes, return_counts=True)[1]
    if len(counts) < 2 or counts[0] < 2 or len(set(counts.tolist())) != 1:
        raise ScenarioError(f"nvls-tree needs two or more nodes with the same number (two or "
                            f"more) of ranks on each, not {counts.tolist()} ranks per node; "
                            f"on one node use nvls.", field="algorithm")
    return np.asarray(devices)[order].reshape(len(counts), int(counts[0]))


def nvls_tree_allreduce(devices: np.ndarray, size_bytes: float, nodes: np.ndarray,
                        **_: object) -> list[Phase]:
    """In-switch reduce + multicast inside each node, each local rank's shard all-reduced
    across the nodes' NICs, pipelined into one phase (module docstring)."""
    grid = node_grid(devices, nodes)
    m, local = grid.shape
    intra_src = grid.ravel()
    intra_dst = np.roll(grid, -1, axis=1).ravel()
    inter_src = grid.ravel()
    inter_dst = np.roll(grid, -1, axis=0).ravel()
    intra = np.full(m * local, size_bytes * (local + 1) / local)
    inter = np.full(m * local, 2 * (m - 1) / m * size_bytes / local)
    depth = 2 * int(np.ceil(np.log2(m)))
    return [Phase(f"NVLS-Tree ({m} nodes x {local} GPUs)",
                  np.concatenate([intra_src, inter_src]), np.concatenate([intra_dst, inter_dst]),
                  np.concatenate([intra, inter]), 1,
                  np.concatenate([np.ones(m * local, dtype=int),
                                  np.full(m * local, depth)]))]


def on_reducing_switches_and_nics(topology: Topology, phases: list[Phase]) -> bool:
    """Whether every flow either crosses one NVSwitch of generation 3+ (GPU -> switch ->
    GPU) or leaves its node through a NIC."""
    for phase in phases:
        links, starts, lengths = topology.flow_routes(phase.src, phase.dst)
        reducing = (lengths == 2) & (np.minimum.reduceat(topology.nvswitch_generation[links],
                                                         starts) >= NVLS_MIN_GENERATION)
        via_nic = np.maximum.reduceat((topology.link_class[links] == NET).astype(int),
                                      starts) > 0
        if not (reducing | via_nic).all():
            return False
    return True


register(ALGORITHM, "nvls-tree", Algorithm(
    {"allreduce": nvls_tree_allreduce}, auto=False, nccl=False,
    runs_on=on_reducing_switches_and_nics,
    needs="every node's GPUs on one NVSwitch of generation 3 or later (H100, H200, B200 "
          "systems) and NICs between the nodes", precedence=10))
