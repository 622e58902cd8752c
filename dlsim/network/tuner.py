"""Tuner: a closed-form time for a collective on a topology, and the choice it implies.

``estimate_time_s`` prices a collective without running the engine: each phase costs a
latency plus the busiest link's bytes over that link's bandwidth (the alpha-beta model of
Hockney, with beta taken at the bottleneck link, as in ASTRA-sim's analytical backend).
That is exactly what the flow simulation gives wherever a phase's flows share their
bottleneck equally (rings, halving-doubling and trees on a switch, one parameter server);
where max-min sharing leaves a link idle part of the time it is an optimistic estimate
(flows that start at staggered latencies: K > 1 shards' queued messages, a tree on a ring;
2e-5 to 4e-4 of the time in ``tests/network/test_backend.py``). Run by
the engine, the same arithmetic is the analytical network (``dlsim.network.analytical``).
``plan_collective`` picks the algorithm and protocol with the lowest estimate, the way
NCCL's tuner does (``ncclTopoGetAlgoTime`` over every enabled algorithm x protocol, lowest
time wins; ties go to the earlier candidate).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.hardware.topology import Topology
from dlsim.network import protocol as proto
from dlsim.network.algorithms import Phase, algorithms_for, lower, needs_peers
from dlsim.network.algorithms import algorithms as registered_algorithms
from dlsim.network.analytical import batch_cost, batch_lines


@dataclass(frozen=True)
class CollectivePlan:
    """The chosen algorithm and protocol, the estimated time and the phases to run."""

    algorithm: str
    protocol: str
    time_s: float
    phases: list[Phase]


def phase_lines(phase: Phase, topology: Topology) -> tuple[np.ndarray, np.ndarray]:
    """``phase_time_s`` of the phase with its sizes scaled by x: max(a + b·x) (``batch_lines``):
    a lowering's structure never depends on the collective's size, only its bytes do."""
    return batch_lines(topology, phase.src, phase.dst, phase.size_bytes, phase.rounds,
                       phase.latency_rounds, phase.latency_s, phase.wire_factor)


def phase_time_s(phase: Phase, topology: Topology) -> float:
    """When the phase's last byte arrives, if every link works whenever it has bytes to
    carry: the later of (a) each link's first flow start + its bytes / bandwidth and (b)
    each flow's own start + its bytes / its narrowest link (``analytical.batch_cost``)."""
    return batch_cost(topology, topology.capacity_Bps, phase.src, phase.dst, phase.size_bytes,
                      phase.rounds, phase.latency_rounds, phase.latency_s,
                      phase.wire_factor).time_s


def estimate_time_s(op: str, algorithm: str, size_bytes: float, devices: np.ndarray,
                    topology: Topology, protocol: str = "ideal", servers: int = 1,
                    nodes: np.ndarray | None = None, hosts: np.ndarray | None = None
                    ) -> float:
    """Closed-form time of one collective: ``protocol`` is ``ideal``, ``LL``, ``LL128``,
    ``Simple`` or ``nccl`` (the fastest of the three, as NCCL chooses)."""
    return plan_collective(op, algorithm, devices, size_bytes, topology, protocol, servers,
                           nodes, hosts).time_s


def candidates(op: str, algorithm: str, protocol: str) -> list[str]:
    """What ``auto`` chooses among, in precedence order: the registered algorithms for
    ``op`` that allow it. Under NCCL's protocols NCCL's own (ring, tree, NVLS where the
    group sits on one NVSwitch of generation 3+, and multi-ring where its devices form rings
    over a mesh's direct lanes; CollNet/SHARP is not modelled); under the ideal model also
    the classic alternatives MPI libraries pick from by size (Thakur et al. 2005) and the
    per-dimension rings of a whole torus, but not deployment choices (parameter server,
    direct exchange), gossip, which does not compute the average, nor NVLS-Tree, which is
    asked for by name. Every algorithm for ``op`` where none allows it
    (all-to-all: direct)."""
    if algorithm != "auto":
        return [algorithm]
    every = algorithms_for(op)
    picked = [name for name, a in every.items() if (a.nccl if protocol != "ideal" else a.auto)]
    return picked or list(every)


def plan_collective(op: str, algorithm: str, devices: np.ndarray, size_bytes: float,
                    topology: Topology, protocol: str = "ideal", servers: int = 1,
                    nodes: np.ndarray | None = None, hosts: np.ndarray | None = None,
                    timed: bool = True) -> CollectivePlan:
    """The algorithm (``auto``: the fastest candidate) and protocol (``nccl``: the fastest of
    LL, LL128 and Simple) with their lowered phases and estimated time. ``nodes`` defaults
    to each device's node in the topology. With ``timed`` False a plan that has nothing to
    choose from is not estimated (time_s is NaN)."""
    algorithms = candidates(op, algorithm, protocol)
    protocols = list(proto.PROTOCOLS) if protocol == "nccl" else [protocol]
    choose = len(algorithms) * len(protocols) > 1
    best: CollectivePlan | None = None
    for alg, p, run in choices(op, algorithms, protocols, devices, size_bytes, topology,
                               servers, nodes, hosts):
        t = (sum(phase_time_s(ph, topology) for ph in run) if choose or timed
             else float("nan"))
        if best is None or t < best.time_s:
            best = CollectivePlan(alg, p, t, run)
    assert best is not None  # every op has an algorithm that lowers any group
    return best


def choices(op: str, algorithms: list[str], protocols: list[str], devices: np.ndarray,
            size_bytes: float, topology: Topology, servers: int = 1,
            nodes: np.ndarray | None = None, hosts: np.ndarray | None = None
            ) -> Iterator[tuple[str, str, list[Phase]]]:
    """Each (algorithm, protocol, its phases as the protocol runs them) the tuner chooses
    among, in precedence order: those that lower the group, run on the hardware and that
    NCCL enables. With nothing to choose from, the one asked for or a clear error."""
    devices = np.asarray(devices)
    if nodes is None:
        nodes = devices // topology.devices_per_node
    n_nodes = len(np.unique(nodes))
    choose = len(algorithms) * len(protocols) > 1
    for alg in algorithms:
        try:
            peers = topology.device_peers(devices) if needs_peers(alg) else None
            phases = lower(op, alg, devices, size_bytes, servers, nodes, hosts, peers,
                           nccl=protocols != ["ideal"], topology=topology)
        except ScenarioError:
            if len(algorithms) == 1:
                raise
            continue  # e.g. halving-doubling on a group that is not a power of two
        spec = registered_algorithms()[alg]
        if phases and spec.runs_on is not None and not spec.runs_on(topology, phases):
            if len(algorithms) > 1:
                continue
            across = " (across nodes: nvls-tree)" if alg == "nvls" else ""
            raise ScenarioError(
                f"'{alg}' needs {spec.needs}{across}, which {topology.description} does not "
                f"give this group; use ring, tree or auto.", field="algorithm")
        links = None if protocols == ["ideal"] else proto.flow_links(topology, phases)
        for p in protocols:
            if not proto.runs(p, alg):
                if len(protocols) > 1:
                    continue
                raise ScenarioError(f"'{alg}' runs with NCCL's Simple protocol only, not "
                                    f"{p}; use protocol: Simple or auto.", field="protocol")
            if choose and not proto.enabled(p, topology, phases, links):
                continue
            yield alg, p, proto.apply(phases, topology, p, alg, n_nodes, op, links)

