"""NCCL's protocols and the tuner, against closed forms written out here from NCCL's
published constants (src/graph/tuning.cc, src/graph/topo.h), not from dlsim's tables."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import topology_of
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.contract.program import Collective
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec, star
from dlsim.network.tuner import estimate_time_s

N = 8                 # one DGX A100
NVLINK_BPS = 300e9    # per direction per GPU (A100 datasheet)
PAYLOAD = 20 / 25     # NCCL assumes 20 GB/s of each 25 GB/s NVLink 3 link
LAUNCH = 4e-6         # a100 profile kernel_launch_us
# NCCL ring constants: base latency and NVLink per-step latency (us), bus-bandwidth factor
RING = {"LL": (6.6, 0.6, 0.5), "LL128": (14.0, 1.9, 0.92), "Simple": (8.4, 3.4, 1.0)}
LL_MAX_BUSBW = 87.7e9  # tuning.cc llMaxBws, Ampere, one node: LL's bus bandwidth at most


def _ring_time(protocol: str, size: float) -> float:
    base, step, factor = RING[protocol]
    steps = 2 * (N - 1)
    busbw = NVLINK_BPS * PAYLOAD * factor
    if protocol == "LL":
        busbw = min(busbw, LL_MAX_BUSBW)
    return LAUNCH + (base + steps * step) * 1e-6 + steps / N * size / busbw


def _dgx(size: float, protocol: str, algorithm: str = "ring") -> dlsim.Result:
    return dlsim.simulate({"name": "p", "kind": "collective", "cluster": {"preset": "dgx-a100"},
                           "collective": {"size_bytes": size, "algorithm": algorithm,
                                          "protocol": protocol}})


@pytest.mark.parametrize("protocol", ["LL", "LL128", "Simple"])
@pytest.mark.parametrize("size", [4096.0, 64 * 2.0**20])
def test_ring_allreduce_per_protocol_on_a_dgx_a100(protocol, size):
    """One latency per ring step (not per NVSwitch hop), the protocol's fraction of the
    NVLink payload rate (LL at most 87.7 GB/s on an A100), plus its base latency and one
    kernel launch."""
    r = _dgx(size, protocol)
    assert r.time_s == pytest.approx(_ring_time(protocol, size), rel=1e-9)
    assert r.comm_bytes_total == pytest.approx(2 * (N - 1) * size, rel=1e-9)  # payload only


@pytest.mark.parametrize("size", [1024.0, 8 * 2.0**20, 2.0**30])
def test_nccl_mode_picks_the_fastest_protocol(size):
    """LL for small messages, LL128 in the middle, Simple for large, as NCCL's tuner picks
    them (by the closed forms above)."""
    times = {p: _ring_time(p, size) for p in RING}
    best = min(times, key=times.get)
    r = _dgx(size, "nccl")
    assert r.protocol == best
    assert r.time_s == pytest.approx(times[best], rel=1e-9)
    assert {1024.0: "LL", 8 * 2.0**20: "LL128", 2.0**30: "Simple"}[size] == best


@settings(max_examples=10, deadline=None)
@given(size=st.floats(1e3, 2e9))
def test_the_ll_cap_never_speeds_a_collective_up(size):
    """Capping LL only removes bandwidth: the preset's LL time is at least the uncapped
    closed form, and equals it where 0.5 x the NVLink payload rate is below the cap."""
    base, step, factor = RING["LL"]
    steps = 2 * (N - 1)
    uncapped = (LAUNCH + (base + steps * step) * 1e-6
                + steps / N * size / (NVLINK_BPS * PAYLOAD * factor))
    t = _dgx(size, "LL").time_s
    assert t >= uncapped * (1 - 1e-9)
    assert t == pytest.approx(_ring_time("LL", size), rel=1e-9)


def test_auto_protocol_is_nccl_on_presets_and_ideal_on_textbook_topologies():
    assert _dgx(2.0**20, "auto").protocol == _dgx(2.0**20, "nccl").protocol
    r = dlsim.simulate({"name": "t", "kind": "collective",
                        "cluster": {"topology": "switch", "devices": 4,
                                    "link": {"bandwidth_GBps": 10, "latency_us": 1}},
                        "collective": {"size_bytes": 1e6}})
    assert r.protocol == "ideal"
    assert r.time_s == pytest.approx(6 * (1e6 / 4 / 10e9 + 2e-6), rel=1e-9)


def test_auto_algorithm_takes_the_tree_for_small_messages_and_the_ring_for_large():
    """NCCL's choice on one node: the tree's 2 x depth latencies win when latency
    dominates; the ring's full bus bandwidth wins when bytes dominate."""
    small, large = _dgx(1024, "nccl", "auto"), _dgx(2.0**30, "nccl", "auto")
    assert small.algorithm_chosen == "tree" and large.algorithm_chosen == "ring"
    for r, size in ((small, 1024.0), (large, 2.0**30)):
        others = [_dgx(size, "nccl", a).time_s for a in ("ring", "tree")]
        assert r.time_s == pytest.approx(min(others), rel=1e-9)


def _engine_time(bandwidth: float, n: int, size: float, algorithm: str, protocol: str) -> float:
    topo = topology_of(star(n, LinkSpec("l", bandwidth, bandwidth, 1e-6)), n)
    op = Collective("allreduce", "k", tuple(range(n)), "allreduce", size, algorithm)
    return Engine(topo, {0: [op]}, np.arange(n), protocol).run().end_s


@settings(max_examples=12, deadline=None)
@given(n=st.sampled_from([2, 4, 8, 16]), size=st.floats(1e3, 1e9),
       bandwidth=st.floats(1e9, 100e9), more=st.floats(1.0, 10.0),
       algorithm=st.sampled_from(["auto", "ring", "tree", "halving-doubling"]),
       protocol=st.sampled_from(["ideal", "nccl", "LL", "Simple"]))
def test_more_bandwidth_is_never_slower(n, size, bandwidth, more, algorithm, protocol):
    slow = _engine_time(bandwidth, n, size, algorithm, protocol)
    fast = _engine_time(bandwidth * more, n, size, algorithm, protocol)
    assert fast <= slow * (1 + 1e-9)


@pytest.mark.parametrize("algorithm", ["ring", "halving-doubling", "tree", "ps"])
def test_estimate_is_the_simulated_time_on_a_switch(algorithm):
    """The tuner's closed form (latency + busiest link / bandwidth per phase) is exact
    wherever a phase's flows share their bottleneck equally, as on a non-blocking switch."""
    n, size = 16, 64e6
    topo = topology_of(star(n, LinkSpec("l", 25e9, 25e9, 2e-6)), n)
    est = estimate_time_s("allreduce", algorithm, size, np.arange(n), topo, "Simple")
    op = Collective("allreduce", "k", tuple(range(n)), "allreduce", size, algorithm)
    sim = Engine(topo, {0: [op]}, np.arange(n), "Simple").run().end_s
    assert est == pytest.approx(sim, rel=1e-9)


def test_multi_node_rings_use_every_nic():
    """Two DGX A100 nodes (16 ranks, 8 NICs each): NCCL's 8 rings each carry G/8 and leave
    a node through a different NIC, so each step moves G/(8*16) through every NIC at the
    HDR payload rate (12 of 12.5 GB/s per 100 Gb/s, NCCL's NET_BW). A ring step costs the
    ring's mean hop latency: 16 of the 128 ring hops cross the fabric (14 us, Simple), 112
    stay on NVLink (3.4 us)."""
    g, n, rings = 2.0**30, 16, 8
    r = dlsim.simulate({"name": "m", "kind": "collective",
                        "cluster": {"preset": "dgx-a100", "nodes": 2},
                        "collective": {"size_bytes": g, "protocol": "Simple"}})
    steps = 2 * (n - 1)
    mean_hop_us = (16 * 14.0 + 112 * 3.4) / 128
    expected = (LAUNCH + (8.4 + steps * mean_hop_us) * 1e-6
                + steps * g / (rings * n) / (25e9 * 12 / 12.5))
    assert r.time_s == pytest.approx(expected, rel=1e-9)
    nic_up = r.links[r.links.src.str.contains("nic") & (r.links.dst == "fabric")
                     | r.links.src.str.contains("nic") & r.links.dst.str.startswith("leaf")]
    assert len(nic_up) == 16
    assert nic_up["bytes"].to_numpy() == pytest.approx(
        np.full(16, steps * g / (rings * n) * 12.5 / 12), rel=1e-9)


@pytest.mark.parametrize("algorithm", ["ring", "tree", "auto"])
@pytest.mark.parametrize("size", [4096.0, 2.0**20, 2.0**30])
def test_estimate_matches_the_simulation_on_two_dgx_nodes(algorithm, size):
    """What a planner gets from estimate_time_s is what the engine then simulates, on the
    preset (NCCL protocols, rails, a fat tree) as on a switch."""
    from dlsim.cluster.build import build_topology
    from dlsim.contract.scenario import ClusterSpec

    topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=2))
    est = estimate_time_s("allreduce", algorithm, size, np.arange(16), topo, "nccl")
    r = dlsim.simulate({"name": "x", "kind": "collective",
                        "cluster": {"preset": "dgx-a100", "nodes": 2},
                        "collective": {"size_bytes": size, "algorithm": algorithm}})
    assert est == pytest.approx(r.time_s, rel=1e-9)
