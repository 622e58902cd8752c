"""NVLS: NCCL's in-switch reduction on NVSwitch generation 3 and later (H100, H200, B200).

NVSwitch gen 3 executes NVLink multimem operations (NVIDIA, "NVIDIA NVLink and NVSwitch",
Hopper architecture whitepaper 2022; NCCL 2.17+ ``NCCL_ALGO=NVLS``): a GPU's
``multimem.ld_reduce`` makes the switch read one shard from every GPU and return the sum,
and ``multimem.st`` makes it replicate one store to every GPU. An all-reduce of G bytes is
a reduce-scatter that way (every GPU's port carries its G bytes up and its reduced G/N
shard down) then a multicast all-gather (G/N up, G down): (N+1)/N x G each way per GPU,
against the ring's 2(N-1)/N x G, so on 8 GPUs the bus bandwidth is 14/9 of the port rate
times NVLS's efficiency (``dlsim.network.protocol``). Reduce-scatter (G up, G/N down) and
all-gather (G/N up, G down) move as many bytes through the port's busier direction as a
ring does; NCCL offers them for the SMs they free, not for bandwidth.

The switch is the only place the bytes meet, so the lowering is one phase of flows that
load each GPU's two switch ports as the multimem operations do: GPU i sends the port
load to GPU i+1 (its bytes go up i's port and down i+1's). Only groups whose every flow
crosses one NVSwitch of generation 3 or later run it (``runs_on``): across nodes NCCL runs
NVLS-Tree (NVLS inside the node, a tree across: ``nvls_tree``).
"""

from __future__ import annotations

import numpy as np

from dlsim.contract.registry import register
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase

NVLS_MIN_GENERATION = 3  # the first NVSwitch with multimem reduction (Hopper)


def _port_phase(label: str, devices: np.ndarray, port_bytes: float) -> Phase:
    """One phase in which every GPU's switch port carries ``port_bytes`` each way."""
    n = len(devices)
    return Phase(label, devices, np.roll(devices, -1), np.full(n, port_bytes))


def nvls_allreduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """ld_reduce reduce-scatter then multimem.st all-gather: (N+1)/N x G each way per port."""
    n = len(devices)
    if n < 2:
        return []
    return [_port_phase("NVLS in-switch reduce + multicast", devices, size_bytes * (n + 1) / n)]


def nvls_reduce_scatter(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """ld_reduce: every port carries G up (the switch reads every shard), G/N down."""
    n = len(devices)
    return [_port_phase("NVLS in-switch reduce-scatter", devices, size_bytes)] if n > 1 else []


def nvls_allgather(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """multimem.st: every port carries its G/N shard up and the gathered G down."""
    n = len(devices)
    return [_port_phase("NVLS multicast all-gather", devices, size_bytes)] if n > 1 else []


def on_reducing_switch(topology: Topology, phases: list[Phase]) -> bool:
    """Whether every flow goes GPU -> NVSwitch -> GPU over links into one switch of
    generation 3 or later (a mesh, a PCIe path or a NIC hop cannot reduce in the switch)."""
    for phase in phases:
        links, _, lengths = topology.flow_routes(phase.src, phase.dst)
        if (lengths != 2).any() or (
                topology.nvswitch_generation[links] < NVLS_MIN_GENERATION).any():
            return False
    return True


register(ALGORITHM, "nvls", Algorithm(
    {"allreduce": nvls_allreduce, "reducescatter": nvls_reduce_scatter,
     "allgather": nvls_allgather}, auto=False, nccl=True, runs_on=on_reducing_switch,
    planner=True, precedence=7))
