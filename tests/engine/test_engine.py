"""Exact timelines of tiny programs: streams, dependencies, overlap, waiting for peers.

Nothing here is contended but the test that says so, so every timeline holds on both network
backends (``dlsim.network.backend``)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import topology_of

from dlsim.contract.program import Collective, Compute
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec, star
from dlsim.network.backend import NETWORKS
from dlsim.results.intervals import breakdown

B = 1e9
G = 1e8  # 2 ranks, ring all-reduce: 2*(1/2)*G/B = 0.1 s with zero latency


def _topo(n=2):
    return topology_of(star(n, LinkSpec("l", B, B, 0.0)), n)


@pytest.fixture(params=sorted(NETWORKS))
def network(request):
    return NETWORKS[request.param]


def _ar(deps=(), key="ar"):
    return Collective("ar", key, (0, 1), "allreduce", G, "ring", deps=deps)


def test_communication_overlaps_independent_compute(network):
    """comm starts after op 0 (at 1.0) and runs 0.1 s while op 2 computes 1.0 s."""
    program = [Compute("a", 1.0), _ar(deps=(0,)), Compute("b", 1.0)]
    run = Engine(_topo(), {0: program}, np.arange(2), network=network).run()
    assert run.end_s == pytest.approx(2.0)
    comm = [s for s in run.spans if s.category == "comm"][0]
    assert (comm.start_s, comm.end_s) == pytest.approx((1.0, 1.1))
    parts = breakdown(run.spans, 0, run.end_s)
    assert parts["compute"] == pytest.approx(2.0) and parts["exposed_comm"] == 0


def test_dependency_exposes_communication(network):
    program = [Compute("a", 1.0), _ar(deps=(0,)), Compute("b", 1.0, deps=(1,))]
    run = Engine(_topo(), {0: program}, np.arange(2), network=network).run()
    assert run.end_s == pytest.approx(2.1)
    parts = breakdown(run.spans, 0, run.end_s)
    assert parts["exposed_comm"] == pytest.approx(0.1)
    assert sum(parts.values()) == pytest.approx(run.end_s)


def test_fast_rank_waits_for_slow_rank_at_the_collective(network):
    """Rank 1 computes 3 s, rank 0 1 s: the all-reduce starts at 3 s; rank 0 waits 2 s."""
    programs = {0: [Compute("a", 1.0), _ar(deps=(0,))],
                1: [Compute("a", 3.0), _ar(deps=(0,))]}
    run = Engine(_topo(), programs, np.arange(2), network=network).run()
    assert run.end_s == pytest.approx(3.1)
    wait = [s for s in run.spans if s.category == "wait"]
    assert len(wait) == 1 and wait[0].device == 0
    assert (wait[0].start_s, wait[0].end_s) == pytest.approx((1.0, 3.0))
    parts = breakdown(run.spans, 0, run.end_s)
    assert parts == pytest.approx({"compute": 1.0, "exposed_comm": 0.1, "bubble": 0.0,
                                   "straggler_wait": 2.0, "idle": 0.0})


def test_collectives_on_one_stream_run_in_program_order(network):
    program = [_ar(key="x"), _ar(key="y")]
    run = Engine(_topo(), {0: program}, np.arange(2), network=network).run()
    assert run.end_s == pytest.approx(0.2)


def test_concurrent_collectives_share_links_on_the_fluid_network_only():
    """Two all-reduces on two comm streams at once: on the fluid network they halve each
    other's bandwidth (2 G/B); the analytical one gives each its time alone (G/B)."""
    program = [_ar(key="x"), Collective("ar2", "y", (0, 1), "allreduce", G, "ring",
                                         stream="comm2")]
    ends = {name: Engine(_topo(), {0: program}, np.arange(2), network=factory).run().end_s
            for name, factory in NETWORKS.items()}
    assert ends == pytest.approx({"fluid": 2 * G / B, "analytical": G / B}, rel=1e-12)


def test_deadlock_is_reported(network):
    program = {0: [_ar(key="x")], 1: [_ar(key="other")]}
    with pytest.raises(RuntimeError, match="deadlock"):
        Engine(_topo(), program, np.arange(2), network=network).run()


def test_repeat_runs_the_collective_back_to_back_paying_each_latency(network):
    """A 2-rank ring all-reduce on a star is 2 rounds of G/2, each over 2 hops of alpha:
    G/B + 4 alpha; ``repeat=3`` is three of them in a row."""
    alpha = 1e-6
    topo = topology_of(star(2, LinkSpec("l", B, B, alpha)), 2)
    op = Collective("ar", "k", (0, 1), "allreduce", G, "ring", repeat=3)
    run = Engine(topo, {0: [op]}, np.arange(2), network=network).run()
    assert run.end_s == pytest.approx(3 * (G / B + 4 * alpha), rel=1e-12)
    assert run.network.bytes_injected == pytest.approx(3 * 2 * G, rel=1e-12)  # 2 ranks x G


def test_instances_run_the_sub_groups_at_once(network):
    """``instances=2`` over ranks 0..3: rings {0, 1} and {2, 3} run together on disjoint
    links, in one ring's time (G/B) and with twice its bytes."""
    op = Collective("ar", "k", (0, 1, 2, 3), "allreduce", G, "ring", instances=2)
    run = Engine(_topo(4), {0: [op]}, np.arange(4), network=network).run()
    assert run.end_s == pytest.approx(G / B, rel=1e-12)
    assert run.network.bytes_injected == pytest.approx(2 * 2 * G, rel=1e-12)
