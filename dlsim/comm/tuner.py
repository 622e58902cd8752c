"""Tuner: a closed-form time for a collective on a topology, and the choice it implies.

``estimate_time_s`` prices a collective without running the engine: each phase costs its
longest flow latency plus the busiest link's bytes over that link's bandwidth (the
alpha-beta model of Hockney, with beta taken at the bottleneck link, as in ASTRA-sim's
analytical backend). That is exactly what the flow simulation gives for a phase whose flows
all get the same rate (rings, halving-doubling and trees on uniform links, PS shards), and
a lower bound otherwise. ``plan_collective`` picks the algorithm and protocol with the
lowest estimate, the way NCCL's tuner does (``ncclTopoGetAlgoTime`` over every enabled
algorithm x protocol, lowest time wins; ties go to the earlier candidate).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlsim.comm import protocol as proto
from dlsim.comm.algorithms import ALGORITHMS, Phase, lower
from dlsim.errors import ScenarioError
from dlsim.topology import Topology

# What `algorithm: auto` chooses among: NCCL's ring and tree, plus the classic alternatives
# MPI libraries pick from by size (Thakur et al. 2005). The parameter server and the direct
# exchange are deployment choices rather than library algorithms, so auto never picks them.
AUTO_EXCLUDED = ("ps", "direct")


@dataclass(frozen=True)
class CollectivePlan:
    algorithm: str
    protocol: str
    time_s: float
    phases: list[Phase]


def phase_time_s(phase: Phase, topology: Topology) -> float:
    """Longest flow latency + the busiest link's bytes / its bandwidth."""
    src, dst = np.asarray(phase.src), np.asarray(phase.dst)
    size = np.broadcast_to(np.asarray(phase.size_bytes, dtype=float), src.shape) * phase.rounds
    if phase.wire_factor is not None:
        size = size * phase.wire_factor
    keep = (src != dst) & (size > 0)
    if not keep.any():
        return 0.0
    routes = [topology.route(int(s), int(d)) for s, d in zip(src[keep], dst[keep])]
    if phase.latency_s is None:
        steps = phase.rounds if phase.latency_rounds is None else phase.latency_rounds
        per_step = np.array([topology.latency_s[r].sum() for r in routes])
        latency = float((per_step * np.broadcast_to(steps, src.shape)[keep]).max())
    else:
        latency = float(np.broadcast_to(phase.latency_s, src.shape)[keep].max())
    lengths = [len(r) for r in routes]
    load = np.bincount(np.concatenate(routes), weights=np.repeat(size[keep], lengths),
                       minlength=len(topology.capacity_Bps))
    return latency + float((load / topology.capacity_Bps).max())


def estimate_time_s(op: str, algorithm: str, size_bytes: float, devices: np.ndarray,
                    topology: Topology, protocol: str = "ideal", servers: int = 1,
                    nodes: np.ndarray | None = None, hosts: np.ndarray | None = None
                    ) -> float:
    """Closed-form time of one collective: ``protocol`` is ``ideal``, ``LL``, ``LL128``,
    ``Simple`` or ``nccl`` (the fastest of the three, as NCCL chooses)."""
    return plan_collective(op, algorithm, np.asarray(devices), size_bytes, topology,
                           protocol, servers, nodes, hosts).time_s


def _candidates(op: str, algorithm: str) -> list[str]:
    if algorithm != "auto":
        return [algorithm]
    every = list(ALGORITHMS.get(op, {}))
    return [a for a in every if a not in AUTO_EXCLUDED] or every


def plan_collective(op: str, algorithm: str, devices: np.ndarray, size_bytes: float,
                    topology: Topology, protocol: str = "ideal", servers: int = 1,
                    nodes: np.ndarray | None = None, hosts: np.ndarray | None = None,
                    timed: bool = True) -> CollectivePlan:
    """The algorithm (``auto``: the fastest candidate) and protocol (``nccl``: the fastest of
    LL, LL128 and Simple) with their lowered phases and estimated time. With ``timed``
    False a plan that has nothing to choose from is not estimated (time_s is NaN)."""
    algorithms = _candidates(op, algorithm)
    protocols = list(proto.PROTOCOLS) if protocol == "nccl" else [protocol]
    choose = len(algorithms) * len(protocols) > 1
    best: CollectivePlan | None = None
    for alg in algorithms:
        try:
            phases = lower(op, alg, devices, size_bytes, servers, nodes, hosts)
        except ScenarioError:
            if not choose:
                raise
            continue  # e.g. halving-doubling on a group that is not a power of two
        for p in protocols:
            if choose and not proto.enabled(p, topology, phases):
                continue
            run = proto.apply(phases, topology, p, alg)
            t = (sum(phase_time_s(ph, topology) for ph in run) if choose or timed
                 else float("nan"))
            if best is None or t < best.time_s:
                best = CollectivePlan(alg, p, t, run)
    assert best is not None  # every op has an algorithm that lowers any group
    return best
