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

from dataclasses import dataclass

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.hardware.topology import Topology
from dlsim.network import protocol as proto
from dlsim.network.algorithms import ALGORITHMS, Phase, lower, rail_rings
from dlsim.network.analytical import batch_cost

# What `algorithm: auto` chooses among. Under NCCL's protocols: NCCL's own ring and tree
# (CollNet and NVLS need in-network reduction, not modelled). Under the ideal model: also
# the classic alternatives MPI libraries pick from by size (Thakur et al. 2005). The
# parameter server, the direct exchange and gossip (which does not compute the average) are
# deployment choices rather than library algorithms, so auto never picks them.
NCCL_ALGORITHMS = ("ring", "tree")
# Under NCCL's protocols a ring is NCCL's set of rings, one per local rank (rail_rings).
RAIL_RING_OPS = ("allreduce", "reducescatter", "allgather")
AUTO_EXCLUDED = ("ps", "direct", "gossip")


@dataclass(frozen=True)
class CollectivePlan:
    """The chosen algorithm and protocol, the estimated time and the phases to run."""

    algorithm: str
    protocol: str
    time_s: float
    phases: list[Phase]


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


def _candidates(op: str, algorithm: str, protocol: str) -> list[str]:
    if algorithm != "auto":
        return [algorithm]
    every = list(ALGORITHMS.get(op, {}))
    keep = (lambda a: a in NCCL_ALGORITHMS) if protocol != "ideal" else (
        lambda a: a not in AUTO_EXCLUDED)
    return [a for a in every if keep(a)] or every


def plan_collective(op: str, algorithm: str, devices: np.ndarray, size_bytes: float,
                    topology: Topology, protocol: str = "ideal", servers: int = 1,
                    nodes: np.ndarray | None = None, hosts: np.ndarray | None = None,
                    timed: bool = True) -> CollectivePlan:
    """The algorithm (``auto``: the fastest candidate) and protocol (``nccl``: the fastest of
    LL, LL128 and Simple) with their lowered phases and estimated time. ``nodes`` defaults
    to each device's node in the topology. With ``timed`` False a plan that has nothing to
    choose from is not estimated (time_s is NaN)."""
    devices = np.asarray(devices)
    if nodes is None:
        nodes = devices // topology.devices_per_node
    n_nodes = len(np.unique(nodes))
    algorithms = _candidates(op, algorithm, protocol)
    protocols = list(proto.PROTOCOLS) if protocol == "nccl" else [protocol]
    choose = len(algorithms) * len(protocols) > 1
    best: CollectivePlan | None = None
    for alg in algorithms:
        try:
            if protocol != "ideal" and alg == "ring" and op in RAIL_RING_OPS:
                phases = rail_rings(op, devices, size_bytes, np.asarray(nodes))
            else:
                peers = topology.device_peers(devices) if alg == "gossip" else None
                phases = lower(op, alg, devices, size_bytes, servers, nodes, hosts, peers)
        except ScenarioError:
            if not choose:
                raise
            continue  # e.g. halving-doubling on a group that is not a power of two
        for p in protocols:
            if choose and not proto.enabled(p, topology, phases):
                continue
            run = proto.apply(phases, topology, p, alg, n_nodes, op)
            t = (sum(phase_time_s(ph, topology) for ph in run) if choose or timed
                 else float("nan"))
            if best is None or t < best.time_s:
                best = CollectivePlan(alg, p, t, run)
    assert best is not None  # every op has an algorithm that lowers any group
    return best
