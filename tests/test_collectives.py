"""Collectives against closed forms computed here, independently of the lowering code."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_collective, topology_of

from dlsim.metrics import link_table
from dlsim.topology import LinkSpec, ring, star

B, ALPHA, G = 50e9, 2e-6, 256e6


@pytest.mark.parametrize("n", [2, 3, 5, 8, 64, 257, 1024])
def test_ring_allreduce_on_a_ring_matches_closed_form(n):
    topo = topology_of(ring(n, LinkSpec("l", B, B, ALPHA)), n)
    run = run_collective(topo, n, "allreduce", "ring", G)
    expected = 2 * (n - 1) / n * G / B + 2 * (n - 1) * ALPHA
    assert run.end_s == pytest.approx(expected, rel=0.01)
    # bytes: 2(N-1)/N*G per rank, 2(N-1)*G in total
    assert run.network.bytes_injected == pytest.approx(2 * (n - 1) * G, rel=1e-9)
    per_rank = run.network.link_bytes.reshape(-1)  # every rank sends on exactly one link
    sent = np.sort(per_rank[per_rank > 0])
    assert len(sent) == n
    assert sent == pytest.approx(np.full(len(sent), 2 * (n - 1) / n * G), rel=1e-9)


@pytest.mark.parametrize("n", [2, 16, 1024])
def test_ring_allreduce_through_a_switch_pays_two_hops(n):
    topo = topology_of(star(n, LinkSpec("l", B, B, ALPHA)), n)
    run = run_collective(topo, n, "allreduce", "ring", G)
    assert run.end_s == pytest.approx(2 * (n - 1) / n * G / B + 2 * (n - 1) * 2 * ALPHA,
                                      rel=0.01)


@pytest.mark.parametrize("op", ["reducescatter", "allgather"])
def test_ring_half_collectives(op):
    n = 8
    topo = topology_of(star(n, LinkSpec("l", B, B, ALPHA)), n)
    run = run_collective(topo, n, op, "ring", G)
    assert run.end_s == pytest.approx((n - 1) / n * G / B + (n - 1) * 2 * ALPHA, rel=0.01)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_single_parameter_server_bottlenecks_on_its_own_link(n):
    """Push: N-1 workers share the server's downlink; pull: they share its uplink."""
    topo = topology_of(star(n, LinkSpec("l", B, B, ALPHA)), n)
    run = run_collective(topo, n, "allreduce", "ps", G)
    expected = 2 * (n - 1) * G / B + 2 * (2 * ALPHA)
    assert run.end_s == pytest.approx(expected, rel=0.01)
    assert run.network.bytes_injected == pytest.approx(2 * (n - 1) * G, rel=1e-9)
    links = link_table(topo, run.network.link_bytes, run.network.link_busy_s, run.end_s)
    into_server = links[(links.src == "switch") & (links.dst == "0")]["bytes"].item()
    out_of_server = links[(links.src == "0") & (links.dst == "switch")]["bytes"].item()
    assert into_server == pytest.approx((n - 1) * G, rel=1e-9)
    assert out_of_server == pytest.approx((n - 1) * G, rel=1e-9)
    # ...while under a ring every device link carries the same 2(N-1)/N*G
    ring_run = run_collective(topo, n, "allreduce", "ring", G)
    assert ring_run.network.link_bytes.max() == pytest.approx(2 * (n - 1) / n * G, rel=1e-9)


@pytest.mark.parametrize("k", [1, 2, 4, 8])
def test_k_server_shards_divide_the_bottleneck(k):
    n = 32
    topo = topology_of(star(n, LinkSpec("l", B, B, ALPHA)), n)
    run = run_collective(topo, n, "allreduce", "ps", G, servers=k)
    # each server's downlink receives G/K from N-1 peers; workers' uplinks (G) never bind
    assert run.end_s == pytest.approx(2 * (n - 1) * G / (k * B) + 4 * ALPHA, rel=0.01)
    assert run.network.bytes_injected == pytest.approx(2 * (n - 1) * G, rel=1e-9)


@pytest.mark.parametrize("algorithm", ["ring", "ps"])
def test_symmetric_and_full_fidelity_agree_exactly(algorithm):
    n = 12
    topo = topology_of(star(n, LinkSpec("l", B, B, ALPHA)), n)
    a = run_collective(topo, n, "allreduce", algorithm, G, servers=3)
    b = run_collective(topo, n, "allreduce", algorithm, G, servers=3, symmetric=False)
    assert a.end_s == b.end_s
    assert np.array_equal(a.network.link_bytes, b.network.link_bytes)
