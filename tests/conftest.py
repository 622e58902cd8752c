"""Shared helpers: small topologies built directly, without hardware profiles."""

from __future__ import annotations

import numpy as np
import pytest

from dlsim.contract.program import Collective
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec
from dlsim.hardware.topology import Topology
from dlsim.network.backend import NetworkFactory
from dlsim.network.fluid import Network


def topology_of(graph, n: int) -> Topology:
    return Topology(graph, n, None, n, "test")


def run_collective(topology: Topology, n: int, op: str, algorithm: str, size: float,
                   servers: int = 1, symmetric: bool = True, network: NetworkFactory = Network):
    group = tuple(range(n))
    coll = Collective(op, "k", group, op, size, algorithm, servers)
    ranks = [0] if symmetric else list(group)
    return Engine(topology, {r: [coll] for r in ranks}, np.arange(n), network=network).run()


@pytest.fixture
def link() -> LinkSpec:
    return LinkSpec("test", 50e9, 50e9, 2e-6)
