"""Compute slowed by the collectives it overlaps (``Collective.contention``): closed forms of
one compute op of length a overlapped by one collective of length b taking a share u of the
rank's compute: the compute ends at a + u·b when b < a / (1 - u), else at a / (1 - u)."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
from conftest import topology_of

from dlsim.contract.program import Collective, Compute
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec, star
from dlsim.network.backend import NETWORKS

B = 1e9
G = 1e8  # 2 ranks, ring all-reduce: 2 * (1/2) * G / B = 0.1 s with zero latency
U = 0.15


@pytest.fixture(params=sorted(NETWORKS))
def network(request):
    return NETWORKS[request.param]


def _run(program, network):
    programs = {0: program, 1: program}
    return Engine(topology_of(star(2, LinkSpec("l", B, B, 0.0)), 2), programs,
                  np.arange(2), network=network).run()


def _compute_end(run) -> float:
    return max(s.end_s for s in run.spans if s.category == "compute")


def _allreduce(size: float = G, contention: float = U) -> Collective:
    return Collective("ar", "ar", (0, 1), "allreduce", size, "ring", contention=contention)


def test_short_collective_slows_compute_by_its_share_of_its_length(network):
    a, b = 1.0, 2 * 0.5 * G / B  # 0.1 s of all-reduce inside 1 s of compute
    run = _run([Compute("gemm", a), _allreduce()], network)
    assert _compute_end(run) == pytest.approx(a + U * b)


def test_compute_inside_a_long_collective_runs_at_the_reduced_speed(network):
    a = 1.0
    b = 2 * 0.5 * 20 * G / B  # 2 s of all-reduce, longer than a / (1 - u) = 1.18 s
    run = _run([Compute("gemm", a), _allreduce(20 * G)], network)
    assert _compute_end(run) == pytest.approx(a / (1 - U))
    assert run.end_s == pytest.approx(b)


def test_compute_after_the_collective_ends_runs_at_full_speed(network):
    """The second op starts at a + u·b (after the first) when the collective is over."""
    a, b = 1.0, 0.1
    run = _run([Compute("gemm1", a), _allreduce(), Compute("gemm2", a, deps=(0,))], network)
    assert _compute_end(run) == pytest.approx(2 * a + U * b)


def test_no_contention_leaves_compute_alone(network):
    run = _run([Compute("gemm", 1.0), replace(_allreduce(), contention=0.0)], network)
    assert _compute_end(run) == pytest.approx(1.0)
