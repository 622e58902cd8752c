"""Copy sets (``dlsim.network.symmetry``): solving one instance of identical link-disjoint
instances gives exactly what simulating every flow gives, with intruders, slow links and
stragglers forcing the copies apart; and symmetric 3D jobs equal their full-fidelity runs."""

from __future__ import annotations

import numpy as np
import pytest
import simpy
from conftest import topology_of
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec
from dlsim.hardware.fabrics import LinkSpec, fat_tree
from dlsim.network.fluid import Network
from dlsim.network.symmetry import Footprint, compatible, copy_set, moved, same_routes
from dlsim.network.tuner import plan_collective

N = 16        # devices, 4 per leaf: the four leaves' devices are copies of each other
PER_LEAF = 4


@pytest.fixture(autouse=True)
def every_transfer_may_be_a_copy_set(monkeypatch):
    """These cases are small: copy sets for transfers of any size."""
    monkeypatch.setattr(Network, "MIN_COPY_FLOWS", 0)


def _topology():
    return topology_of(fat_tree(N, LinkSpec("l", 1e9, 1e9, 1e-6), PER_LEAF, 2.0), N)


@st.composite
def workloads(draw):
    """Transfers of ``k`` instances (one per leaf, or per pair of leaves: the same flows
    shifted by a leaf) and single transfers between any devices, at random times."""
    jobs = []
    for _ in range(draw(st.integers(1, 6))):
        start = draw(st.sampled_from([0.0, 0.0, 1e-4, 7e-4, 2e-3]))
        size = draw(st.sampled_from([1e5, 1e6, 3e6]))
        rounds = draw(st.integers(1, 2))
        if draw(st.booleans()):
            k = draw(st.sampled_from([2, 4]))
            span = N // k
            m = draw(st.integers(1, 4))
            src = np.array(draw(st.lists(st.integers(0, span - 1), min_size=m, max_size=m)))
            dst = np.array(draw(st.lists(st.integers(0, span - 1), min_size=m, max_size=m)))
            src = np.concatenate([src + c * span for c in range(k)])
            dst = np.concatenate([dst + c * span for c in range(k)])
        else:
            k = 1
            m = draw(st.integers(1, 4))
            src = np.array(draw(st.lists(st.integers(0, N - 1), min_size=m, max_size=m)))
            dst = np.array(draw(st.lists(st.integers(0, N - 1), min_size=m, max_size=m)))
        jobs.append((start, src, dst, size, rounds, k))
    return jobs + jobs[: draw(st.integers(0, 2))]


def _run(jobs, slow_at: float | None, symmetry: bool):
    env = simpy.Environment()
    net = Network(env, _topology())
    net.symmetry = symmetry
    finished: list[tuple[int, float]] = []

    def job(i, start, src, dst, size, rounds, k):
        yield env.timeout(start)
        yield net.transfer(src, dst, size, rounds=rounds, instances=k)
        finished.append((i, env.now))

    def slow_link():
        yield env.timeout(slow_at)
        net.scale_links(np.array([0, 3]), 0.25)

    for i, j in enumerate(jobs):
        env.process(job(i, *j))
    if slow_at is not None:
        env.process(slow_link())
    env.run()
    return sorted(finished), net


@settings(max_examples=400, deadline=None)
@given(workloads(), st.sampled_from([None, 5e-4]))
def test_copy_sets_equal_every_flow_simulated(jobs, slow_at):
    """The same completion times, bit for bit, and the same per-link records as the network
    that simulates every flow, whatever intrudes on the copies' links."""
    times, net = _run(jobs, slow_at, symmetry=True)
    ref_times, ref = _run(jobs, slow_at, symmetry=False)
    assert times == ref_times
    assert net.link_bytes == pytest.approx(ref.link_bytes, rel=1e-12, abs=1e-6)
    assert net.link_busy_s == pytest.approx(ref.link_busy_s, rel=1e-12, abs=1e-18)
    assert (net.bytes_injected, net.flows_started) == (ref.bytes_injected, ref.flows_started)


def test_a_symmetric_phase_is_solved_as_one_instance():
    """A ring inside each of the four leaves: one copy set of four, solved over one leaf's
    links, and every leaf's links get the bytes they carry (the ring's size over each)."""
    env = simpy.Environment()
    net = Network(env, _topology())
    ring = np.arange(PER_LEAF)
    src = np.concatenate([ring + c * PER_LEAF for c in range(4)])
    dst = np.concatenate([(ring + 1) % PER_LEAF + c * PER_LEAF for c in range(4)])
    net.transfer(src, dst, 1e6, instances=4)
    layout = next(iter(net._plans.values())).groups
    assert [g.k for g in layout] == [4] and all(len(g.members) == PER_LEAF for g in layout)
    env.run()
    routes, starts, _ = net.topology.flow_routes(src, dst)
    expected = np.bincount(routes, minlength=len(net.link_bytes)) * 1e6
    assert net.link_bytes == pytest.approx(expected, rel=1e-12)
    assert net.flows_started == 16


def test_copies_that_share_a_link_are_not_a_copy_set():
    """Two instances through the same link, or of different sizes, are simulated flow by
    flow."""
    topology = _topology()
    src, dst = np.array([0, 0]), np.array([1, 2])  # both leave device 0 by its one link
    routes = topology.flow_routes(src, dst)
    latency = np.add.reduceat(topology.latency_s[routes[0]], routes[1])
    assert copy_set(2, np.ones(2, dtype=bool), [latency], routes, topology.capacity_Bps) is None
    src, dst = np.array([0, 4]), np.array([1, 5])  # one within each of two leaves
    routes = topology.flow_routes(src, dst)
    latency = np.add.reduceat(topology.latency_s[routes[0]], routes[1])
    copies = copy_set(2, np.ones(2, dtype=bool), [latency], routes, topology.capacity_Bps)
    assert copies is not None and copies.k == 2 and copies.m == 1
    assert copy_set(2, np.ones(2, dtype=bool), [latency, np.array([1.0, 2.0])], routes,
                    topology.capacity_Bps) is None


def test_footprints_meet_only_where_they_agree():
    a = Footprint.of(np.array([0, 1]), np.array([[5, 6]]))
    same = Footprint.of(np.array([1]), np.array([[6]]))
    other = Footprint.of(np.array([6]), np.array([[1]]))   # the copies swapped
    single = Footprint.of(np.array([5]), np.zeros((0, 1), dtype=np.intp))
    apart = Footprint.of(np.array([2]), np.array([[7]]))
    elsewhere = Footprint.of(np.array([1]), np.array([[8]]))  # meets a in copy 0 only
    assert compatible(a, same) and compatible(a, apart) and compatible(single, single)
    assert not compatible(a, other) and not compatible(a, single)
    assert not compatible(a, elsewhere)
    assert compatible(a.expanded(), single) and not compatible(a.expanded(), a)


def _job(data: int, tensor: int, pipeline: int, micro: int, schedule: str, slow: bool,
         fidelity: str) -> dict:
    devices = data * tensor * pipeline
    parallelism: dict = {"data": data, "tensor": tensor, "pipeline": pipeline,
                         "schedule": schedule}
    if schedule == "interleaved":
        parallelism["virtual_stages"] = 2
    scenario = {"name": "sym", "model": {"preset": "gpt2-124m"},
                "cluster": {"preset": "dgx-a100", "nodes": max(1, devices // 8)},
                "precision": "bf16",
                "training": {"global_batch": micro * data, "microbatch": 1,
                             "optimizer": "adam"},
                "parallelism": parallelism, "placement": "pack",
                "simulation": {"fidelity": fidelity}}
    if slow:
        scenario["stragglers"] = {"fixed": {devices - 1: 1.2}}
    return scenario


@settings(max_examples=12, deadline=None)
@given(st.sampled_from([(2, 4, 1), (4, 2, 1), (2, 2, 2), (4, 1, 2), (2, 4, 2), (8, 1, 1),
                        (4, 2, 2)]),
       st.sampled_from(["1f1b", "interleaved"]), st.integers(2, 4))
def test_symmetric_3d_jobs_equal_full_fidelity(degrees, schedule, micro):
    """Random small 3D jobs: the symmetric run with copy sets gives the full-fidelity step
    time exactly and the same bytes on every axis."""
    data, tensor, pipeline = degrees
    if pipeline == 1:
        schedule = "1f1b"
    sym = dlsim.simulate(_job(data, tensor, pipeline, micro * pipeline, schedule, False,
                              "symmetric"))
    full = dlsim.simulate(_job(data, tensor, pipeline, micro * pipeline, schedule, False,
                               "full"))
    assert sym.summary["simulation"]["fidelity"] == "symmetric"
    assert sym.step_time_s == full.step_time_s
    assert sym.comm_bytes_total == pytest.approx(full.comm_bytes_total, rel=1e-12)


def test_a_straggler_keeps_full_fidelity():
    """A slow GPU: every rank simulated, and the result is that of the network without copy
    sets."""
    scenario = _job(4, 2, 1, 4, "1f1b", True, "auto")
    with_copies = dlsim.simulate(scenario)
    original = Network.__init__

    def without(self, env, topology):
        original(self, env, topology)
        self.symmetry = False

    Network.__init__ = without  # type: ignore[method-assign]
    try:
        reference = dlsim.simulate(scenario)
    finally:
        Network.__init__ = original  # type: ignore[method-assign]
    assert with_copies.summary["simulation"]["fidelity"] == "full"
    assert with_copies.step_time_s == reference.step_time_s
    assert with_copies.summary == reference.summary


@pytest.mark.parametrize("preset,op,algorithm,protocol", [
    ("dgx-a100", "allreduce", "ring", "nccl"), ("dgx-a100", "allgather", "ring", "Simple"),
    ("dgx-h100", "reducescatter", "ring", "nccl"), ("dgx1-v100", "allreduce", "multi-ring", "nccl"),
    ("pcie-8gpu-2socket", "allreduce", "ring", "nccl"),
])
def test_a_collective_moved_to_another_node_is_planned_as_there(preset, op, algorithm,
                                                                protocol):
    """A one-node collective planned on node 0 and moved to node 3 has the phases planning
    it on node 3 gives; a group split across nodes is not moved."""
    topology = build_topology(ClusterSpec(preset=preset, nodes=4))
    per_node = topology.devices_per_node
    first = np.arange(per_node)
    planned = plan_collective(op, algorithm, first, 1 << 24, topology, protocol,
                              timed=False).phases
    offset = 3 * per_node
    there = plan_collective(op, algorithm, first + offset, 1 << 24, topology, protocol,
                            timed=False).phases
    shifted = moved(topology, planned, offset)
    assert shifted is not None and len(shifted) == len(there)
    for a, b in zip(shifted, there):
        assert np.array_equal(a.src, b.src) and np.array_equal(a.dst, b.dst)
        assert np.array_equal(a.size_bytes, b.size_bytes) and a.rounds == b.rounds
        for field in ("latency_rounds", "latency_s", "wire_factor"):
            x, y = getattr(a, field), getattr(b, field)
            assert (x is None) == (y is None) and (x is None or np.array_equal(x, y))
    # an NVLink hop moved onto a node boundary crosses the fabric instead
    assert not same_routes(topology, np.array([0]), np.array([1]), per_node - 1)
