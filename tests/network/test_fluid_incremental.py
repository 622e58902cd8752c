"""The fluid network's shortcuts (rates over the active links only, per component, remembered,
and the fast path for flows that share no link) against the full recomputation they replace:
progressive filling over every link of the topology whenever anything changes."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import topology_of
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.hardware.fabrics import LinkSpec, fat_tree, ring
from dlsim.network.fluid import Network, RateSolver, disjoint_rates, max_min_rates

REL = 1e-12


class FullRecomputation(Network):
    """The reference: every change solves every active flow over all links, nothing kept."""

    def _component(self, changed: list, freed: np.ndarray | None, alone: bool = False) -> list:
        return list(self._segments)

    def _solve(self, segments: list) -> None:
        offsets = np.cumsum([0] + [len(s.size) for s in segments])
        flow_of = np.concatenate([s.flow_of + o for s, o in zip(segments, offsets)])
        link_of = np.concatenate([s.link_of for s in segments])
        rates = max_min_rates(flow_of, link_of, self.capacity_Bps, int(offsets[-1]))
        for seg, a, b in zip(segments, offsets[:-1], offsets[1:]):
            seg.rate = rates[a:b]


@st.composite
def incidences(draw, disjoint: bool = False):
    """Flows over a few of 12 links (sorted flow index per incidence, as batches have)."""
    n_links = 12
    caps = np.array(draw(st.lists(st.sampled_from([1.0, 2.0, 3.5, 10.0, 25.0]),
                                  min_size=n_links, max_size=n_links)))
    n_flows = draw(st.integers(1, 6))
    free = list(range(n_links))
    flow_of, link_of = [], []
    for f in range(n_flows):
        pool = free if disjoint else list(range(n_links))
        if not pool:
            n_flows = f
            break
        links = sorted(draw(st.sets(st.sampled_from(pool), min_size=1, max_size=3)))
        if disjoint:
            free = [x for x in free if x not in links]
        flow_of += [f] * len(links)
        link_of += links
    return np.array(flow_of), np.array(link_of), caps, n_flows


@settings(max_examples=200, deadline=None)
@given(incidences(disjoint=True))
def test_disjoint_flows_run_at_their_narrowest_link(case):
    flow_of, link_of, caps, n = case
    fast = disjoint_rates(flow_of, link_of, caps, n)
    expected = [caps[link_of[flow_of == f]].min() for f in range(n)]
    assert fast == pytest.approx(expected, rel=REL)
    assert fast == pytest.approx(max_min_rates(flow_of, link_of, caps, n), rel=REL)


@settings(max_examples=300, deadline=None)
@given(incidences())
def test_solver_over_active_links_equals_full_progressive_filling(case):
    """Compacting to the used links, the fast path and the memo change no rate; a
    remembered solution is the one computed."""
    flow_of, link_of, caps, n = case
    full = max_min_rates(flow_of, link_of, caps, n)
    solver = RateSolver(caps)
    first = solver.rates(flow_of, link_of, n)
    again = solver.rates(flow_of.copy(), link_of.copy(), n)
    assert first == pytest.approx(full, rel=REL)
    assert np.array_equal(first, again) and solver.solved == 1
    load = np.bincount(link_of, weights=first[flow_of], minlength=len(caps))
    assert np.all(load <= caps * (1 + 1e-9))
    for f in range(n):  # every flow has a saturated link where nobody gets more
        assert any(load[x] >= caps[x] * (1 - 1e-9)
                   and first[f] >= first[flow_of[link_of == x]].max() * (1 - 1e-9)
                   for x in link_of[flow_of == f])


def test_solver_forgets_on_capacity_change():
    caps = np.array([2.0, 4.0])
    solver = RateSolver(caps)
    flow_of, link_of = np.array([0, 1]), np.array([0, 0])
    assert solver.rates(flow_of, link_of, 2) == pytest.approx([1.0, 1.0])
    caps[0] = 6.0
    solver.forget()
    assert solver.rates(flow_of, link_of, 2) == pytest.approx([3.0, 3.0])


TOPOLOGIES = {
    "fat-tree": lambda: topology_of(fat_tree(8, LinkSpec("l", 1e9, 1e9, 1e-6), 2, 2.0), 8),
    "ring": lambda: topology_of(ring(8, LinkSpec("l", 2e9, 2e9, 5e-7)), 8),
}


@st.composite
def workloads(draw):
    """Transfers started at random times between random devices, some repeated exactly."""
    jobs = []
    for _ in range(draw(st.integers(1, 7))):
        k = draw(st.integers(1, 4))
        src = draw(st.lists(st.integers(0, 7), min_size=k, max_size=k))
        dst = draw(st.lists(st.integers(0, 7), min_size=k, max_size=k))
        size = draw(st.sampled_from([1e5, 1e6, 3e6]))
        start = draw(st.sampled_from([0.0, 0.0, 1e-4, 7e-4, 2e-3]))
        jobs.append((start, np.array(src), np.array(dst), size, draw(st.integers(1, 2))))
    return draw(st.sampled_from(sorted(TOPOLOGIES))), jobs + jobs[: draw(st.integers(0, 2))]


def _run(network_class, topology, jobs, slow_at: float | None):
    env = simpy.Environment()
    net = network_class(env, topology)
    finished: list[float] = []

    def job(start, src, dst, size, rounds):
        yield env.timeout(start)
        yield net.transfer(src, dst, size, rounds=rounds)
        finished.append(env.now)

    def slow_link():
        yield env.timeout(slow_at)
        net.scale_links(np.array([0, 3]), 0.25)

    for j in jobs:
        env.process(job(*j))
    if slow_at is not None:
        env.process(slow_link())
    env.run()
    return sorted(finished), net


@settings(max_examples=150, deadline=None)
@given(workloads(), st.sampled_from([None, 5e-4]))
def test_incremental_network_equals_full_recomputation(workload, slow_at):
    """Solving only the component a change touches, remembering flow sets and the fast path
    give the same completion times and link records as solving everything every time."""
    name, jobs = workload
    topology = TOPOLOGIES[name]()
    times, net = _run(Network, topology, jobs, slow_at)
    ref_times, ref = _run(FullRecomputation, topology, jobs, slow_at)
    assert times == pytest.approx(ref_times, rel=REL)
    assert net.link_bytes == pytest.approx(ref.link_bytes, rel=REL, abs=1e-6)
    assert net.link_busy_s == pytest.approx(ref.link_busy_s, rel=REL, abs=1e-18)
    assert net.bytes_injected == ref.bytes_injected


def test_a_repeated_phase_is_solved_once():
    """The same transfer on an idle network ten times: the rate computations of the first
    (two: its flows within a leaf start before those across the spine) and no more."""
    env = simpy.Environment()
    net = Network(env, TOPOLOGIES["fat-tree"]())
    src, dst = np.arange(8), (np.arange(8) + 1) % 8
    solved = []

    def repeat():
        for _ in range(10):
            yield net.transfer(src, dst, 1e6)
            solved.append(net.rate_solutions)

    env.process(repeat())
    env.run()
    assert solved == [2] * 10
