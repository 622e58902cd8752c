"""Shared helpers: small topologies built directly, without hardware profiles."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import settings

from dlsim.contract.program import Collective
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec
from dlsim.hardware.topology import Topology
from dlsim.network.backend import NetworkFactory
from dlsim.network.fluid import Network

# Property tests check values, not speed: a loaded CI machine must not fail them on time.
settings.register_profile("dlsim", deadline=None)
settings.load_profile("dlsim")


def topology_of(graph, n: int) -> Topology:
    return Topology(graph, n, None, n, "test")


def run_collective(topology: Topology, n: int, op: str, algorithm: str, size: float,
                   servers: int = 1, symmetric: bool = True, network: NetworkFactory = Network):
    group = tuple(range(n))
    coll = Collective(op, "k", group, op, size, algorithm, servers)
    ranks = [0] if symmetric else list(group)
    return Engine(topology, {r: [coll] for r in ranks}, np.arange(n), network=network).run()


def closed_form(bandwidth_s: float, latency_s: float, least: float = 0.05,
                least_bandwidth: float | None = None) -> float:
    """A closed-form time, ``bandwidth_s + latency_s``, after checking that each term is at
    least ``least`` of it (``least_bandwidth``, if given, for the bandwidth term): a test
    asserts the simulated time to rel=1e-9 where both terms carry weight, so that a wrong
    coefficient in either one fails it (issue 12)."""
    total = bandwidth_s + latency_s
    floor = least if least_bandwidth is None else least_bandwidth
    assert latency_s >= least * total, f"latency is {latency_s / total:.2%} of the time"
    assert bandwidth_s >= floor * total, f"bandwidth is {bandwidth_s / total:.2%} of the time"
    return total


def closed_form_of(time_s, alpha: float, least: float = 0.05,
                   least_bandwidth: float | None = None) -> float:
    """``time_s(alpha)`` for a closed form that is not a plain sum (a max of two regimes):
    its bandwidth term is ``time_s(0)``, its latency term what ``alpha`` adds to that."""
    bandwidth = time_s(0.0)
    return closed_form(bandwidth, time_s(alpha) - bandwidth, least, least_bandwidth)


@pytest.fixture
def link() -> LinkSpec:
    return LinkSpec("test", 50e9, 50e9, 2e-6)
