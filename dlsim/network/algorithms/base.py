"""What every collective algorithm shares: the phases it lowers to, its registration, and the
lookups the tuner, the planner and the kinds use.

A lowering function takes the participating devices in rank order and the collective's size
in bytes (nccl-tests' convention: the per-rank buffer for all-reduce and reduce-scatter
input, the gathered output for all-gather) and returns the phases the network runs one after
another. A phase's ``rounds`` are identical rounds sent back to back (a ring's 2(N-1) steps).
Each algorithm module of this package registers an ``Algorithm`` under its scenario name in
the ``ALGORITHM`` family of ``dlsim.contract.registry``; that family is what
``collective.algorithm`` and ``communication.data_parallel`` accept.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import ALGORITHM, did_you_mean, registered
from dlsim.hardware.topology import Topology


@dataclass(frozen=True)
class Phase:
    """Flows ``src[i] -> dst[i]`` of ``size_bytes[i]`` each, repeated ``rounds`` times.

    ``latency_rounds`` is how many message latencies the phase pays in sequence; it equals
    ``rounds`` unless the phase is a pipeline (a tree or chain streaming its data in chunks
    pays its depth in latencies but sends the bytes once); an array gives it per flow.
    A protocol (``dlsim.network.protocol``) may set ``latency_s``, each flow's whole latency
    instead of its path's latency times ``latency_rounds``, and ``wire_factor``, the bytes
    each flow puts on the wire per payload byte.
    """

    label: str
    src: np.ndarray
    dst: np.ndarray
    size_bytes: np.ndarray
    rounds: int = 1
    latency_rounds: int | np.ndarray | None = None
    latency_s: np.ndarray | None = None
    wire_factor: np.ndarray | None = None


Lowering = Callable[..., list[Phase]]


@dataclass(frozen=True)
class Algorithm:
    """A collective algorithm: the lowering of each op it runs, and who may choose it.

    ``auto``: ``algorithm: auto`` may pick it under the ideal (textbook) model; ``nccl``: it
    is one of NCCL's own algorithms, the only candidates of ``auto`` under NCCL's protocols;
    ``nccl_lowerings``: how NCCL runs an op where that differs from the textbook lowering;
    ``planner``: the planner searches it for data-parallel gradients; ``peers``: it lowers
    over each rank's neighbours in the topology (the tuner passes them); ``runs_on``: whether
    the hardware can run its lowered phases at all (NVLS needs an NVSwitch that reduces;
    None: any topology), ``needs`` what it asks for. ``precedence`` is
    the tie order: of equally fast candidates ``auto`` keeps the one with the lowest
    (NCCL's tuner keeps the earlier candidate), and lists of algorithms follow it.
    """

    lowerings: Mapping[str, Lowering]
    auto: bool = True
    nccl: bool = False
    nccl_lowerings: Mapping[str, Lowering] = field(default_factory=dict)
    planner: bool = False
    peers: bool = False
    runs_on: Callable[[Topology, list[Phase]], bool] | None = None
    needs: str = "every rank of the group on one NVSwitch of generation 3 or later (H100, " \
                 "H200, B200 systems)"  # what runs_on asks for, in the error when it fails
    precedence: int = 100  # after every algorithm dlsim ships


def merge_phases(phases: tuple[Phase, ...]) -> Phase:
    """One phase carrying the flows of the same phase of several instances."""
    first = phases[0]
    if len(phases) == 1:
        return first
    lr = first.latency_rounds
    if isinstance(lr, np.ndarray):
        lr = np.concatenate([p.latency_rounds for p in phases])
    return replace(first, src=np.concatenate([p.src for p in phases]),
                   dst=np.concatenate([p.dst for p in phases]),
                   size_bytes=np.concatenate([p.size_bytes for p in phases]),
                   latency_rounds=lr,
                   latency_s=None if first.latency_s is None
                   else np.concatenate([p.latency_s for p in phases]),
                   wire_factor=None if first.wire_factor is None
                   else np.concatenate([p.wire_factor for p in phases]))


def algorithms() -> dict[str, Algorithm]:
    """Every registered algorithm, in precedence order (registration order among equals)."""
    every = list(registered(ALGORITHM).items())
    order = sorted(range(len(every)), key=lambda i: (every[i][1].precedence, i))
    return dict(every[i] for i in order)


def algorithms_for(op: str) -> dict[str, Algorithm]:
    """The registered algorithms that run ``op``, in precedence order."""
    return {name: a for name, a in algorithms().items() if op in a.lowerings}


def collective_ops() -> list[str]:
    """Every op some registered algorithm runs."""
    return list(dict.fromkeys(op for a in algorithms().values() for op in a.lowerings))


def lowering(op: str, algorithm: str, field: str = "algorithm", nccl: bool = False
             ) -> Lowering:
    """The lowering function of ``algorithm`` for ``op`` (``nccl``: as NCCL runs it under
    its protocols), or an input error naming both and what is allowed."""
    serving = algorithms_for(op)
    if not serving:
        raise ScenarioError(f"unknown collective '{op}'; allowed: "
                            f"{', '.join(collective_ops())}.", field="collective.op")
    spec = serving.get(algorithm)
    if spec is None:
        allowed = list(serving)
        raise ScenarioError(f"no '{algorithm}' algorithm for {op}"
                            f"{did_you_mean(algorithm, allowed)}; allowed: "
                            f"{', '.join(allowed)}.", field=field)
    return (spec.nccl_lowerings.get(op) if nccl else None) or spec.lowerings[op]


def check_algorithm(op: str, algorithm: str, field: str) -> None:
    """An input error unless ``algorithm`` (or ``auto``) can run ``op``."""
    if algorithm == "auto" and algorithms_for(op):
        return
    lowering(op, algorithm, field)


def needs_peers(algorithm: str) -> bool:
    """Whether ``algorithm`` lowers over each rank's topology neighbours (gossip)."""
    spec = registered(ALGORITHM).get(algorithm)
    return spec is not None and spec.peers


def lower(op: str, algorithm: str, devices: np.ndarray, size_bytes: float,
          servers: int = 1, nodes: np.ndarray | None = None,
          hosts: np.ndarray | None = None, peers: list[np.ndarray] | None = None,
          nccl: bool = False, topology: Topology | None = None) -> list[Phase]:
    """The phases of collective ``op`` run by ``algorithm`` over ``devices``; ``nodes``
    gives each device's node (hierarchical algorithms need it), ``hosts`` the devices of
    dedicated parameter servers (None: colocated), ``peers`` each rank's gossip partners,
    ``nccl`` whether NCCL's library runs it (its protocols), ``topology`` the hardware
    (algorithms that find their rings in the links need it: multi-ring, torus rings)."""
    devices = np.asarray(devices)
    nodes = np.zeros(len(devices), dtype=int) if nodes is None else np.asarray(nodes)
    return lowering(op, algorithm, nccl=nccl)(devices, float(size_bytes), servers=servers,
                                              nodes=nodes, hosts=hosts, peers=peers,
                                              topology=topology)


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests' bus-bandwidth factor (doc/PERFORMANCE.md): busbw = algbw * factor."""
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op in ("reducescatter", "allgather", "alltoall"):
        return (n - 1) / n
    return 1.0
