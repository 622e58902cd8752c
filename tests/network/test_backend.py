"""The two network backends behind the engine's one interface: where they agree, and where
the analytical one is optimistic (contention, staggered flows, a link slowed mid-flight)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import simpy
from conftest import run_collective, topology_of

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.program import Collective
from dlsim.contract.scenario import read_yaml
from dlsim.engine.core import Engine
from dlsim.hardware.fabrics import LinkSpec, fat_tree, fully_connected, ring, star, torus
from dlsim.network.analytical import AnalyticalNetwork
from dlsim.network.backend import NETWORKS, NetworkBackend
from dlsim.network.fluid import Network
from dlsim.network.tuner import plan_collective

B, ALPHA, G = 50e9, 2e-6, 256e6
LINK = LinkSpec("l", B, B, ALPHA)
SCENARIOS = Path(__file__).parents[2] / "scenarios"


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_backend_has_the_calls_and_records_of_the_interface(name):
    topo = topology_of(star(2, LINK), 2)
    assert isinstance(NETWORKS[name](simpy.Environment(), topo), NetworkBackend)


def _both(topo, n, op, algorithm, servers=1):
    return (run_collective(topo, n, op, algorithm, G, servers, network=Network),
            run_collective(topo, n, op, algorithm, G, servers, network=AnalyticalNetwork))


RING_CASES = [  # (fabric, devices, hops between ring neighbours)
    (lambda n: ring(n, LINK), 2, 1), (lambda n: ring(n, LINK), 5, 1),
    (lambda n: ring(n, LINK), 8, 1), (lambda n: star(n, LINK), 4, 2),
    (lambda n: star(n, LINK), 16, 2), (lambda n: fully_connected(n, LINK), 5, 1),
    (lambda n: torus([4, 4], LINK), 16, None), (lambda n: fat_tree(n, LINK, 4, 2.0), 16, None)]


@pytest.mark.parametrize("fabric,n,hops", RING_CASES)
def test_uncontended_ring_allreduce_is_the_same_on_both_backends(fabric, n, hops):
    """Every flow of a ring phase has its bottleneck to itself, so max-min sharing gives
    the alpha-beta time: 2(N-1)/N G/B + 2(N-1) hops alpha on a textbook ring or switch;
    the records agree too (every link carries the same bytes, busy for bytes / B)."""
    fluid, analytical = _both(topology_of(fabric(n), n), n, "allreduce", "ring")
    if hops is not None:
        closed = 2 * (n - 1) / n * G / B + 2 * (n - 1) * hops * ALPHA
        assert analytical.end_s == pytest.approx(closed, rel=1e-12)
    assert analytical.end_s == pytest.approx(fluid.end_s, rel=1e-9)
    assert analytical.network.bytes_injected == pytest.approx(2 * (n - 1) * G, rel=1e-12)
    assert fluid.network.bytes_injected == pytest.approx(2 * (n - 1) * G, rel=1e-12)
    assert np.allclose(analytical.network.link_bytes, fluid.network.link_bytes,
                       rtol=1e-12, atol=1e-6)
    assert np.allclose(analytical.network.link_busy_s, fluid.network.link_busy_s,
                       rtol=1e-9, atol=1e-15)
    assert analytical.network.flows_started == fluid.network.flows_started


@pytest.mark.parametrize("op,algorithm,servers", [
    ("allreduce", "tree", 1), ("allreduce", "halving-doubling", 1), ("allreduce", "ps", 1),
    ("allreduce", "direct", 1), ("reducescatter", "ring", 1), ("allgather", "ring", 1),
    ("alltoall", "direct", 1), ("broadcast", "ring", 1)])
def test_uncontended_collectives_on_a_switch_are_the_same_on_both_backends(op, algorithm,
                                                                            servers):
    """The tuner's exact cases (its docstring): each phase's flows share their bottleneck
    equally, so the fluid time is the closed form (reached: 2e-16)."""
    n = 16
    fluid, analytical = _both(topology_of(star(n, LINK), n), n, op, algorithm, servers)
    assert analytical.end_s == pytest.approx(fluid.end_s, rel=1e-9)
    assert analytical.network.bytes_injected == pytest.approx(fluid.network.bytes_injected,
                                                              rel=1e-12)


@pytest.mark.parametrize("fabric,n,algorithm,servers", [
    (lambda n: ring(n, LINK), 8, "tree", 1), (lambda n: star(n, LINK), 16, "ps", 4),
    (lambda n: star(n, LINK), 8, "ps", 2)])
def test_the_analytical_time_is_the_tuners_and_a_lower_bound_of_the_fluid_one(
        fabric, n, algorithm, servers):
    """Each phase takes the tuner's closed-form time, and no link can do better than its
    bytes over its bandwidth: where flows start at staggered latencies (a sharded
    parameter server's queued messages, a tree's depths on a ring) max-min sharing leaves
    links idle and the fluid network is slower (by 2e-5 to 4e-4 here)."""
    topo = topology_of(fabric(n), n)
    fluid, analytical = _both(topo, n, "allreduce", algorithm, servers)
    plan = plan_collective("allreduce", algorithm, np.arange(n), G, topo, "ideal", servers)
    assert analytical.end_s == pytest.approx(plan.time_s, rel=1e-12)
    assert 1e-5 < (fluid.end_s - analytical.end_s) / fluid.end_s < 1e-3


def test_concurrent_collectives_on_a_shared_link_are_slower_on_the_fluid_network_only():
    """All-reduces over ranks {0, 1} and {0, 2} on one switch at once: both cross device 0's
    two links. Each ring phase sends G/2 each way after 2 alpha; on the fluid network the
    two collectives share device 0's links at B/2 each (4 alpha + 2 G/B), on the analytical
    one each takes its time alone (4 alpha + G/B): the documented difference. Device 0's
    uplink carries 2 G in both; the analytical record has it busy G/B, less than those
    bytes need at its bandwidth (the oversubscription this model ignores)."""
    topo = topology_of(star(3, LINK), 3)
    a = Collective("a", "a", (0, 1), "allreduce", G, "ring")
    b = Collective("b", "b", (0, 2), "allreduce", G, "ring", stream="comm2")
    programs = {0: [a, b], 1: [a], 2: [b]}
    runs = {name: Engine(topo, programs, np.arange(3), network=factory).run()
            for name, factory in NETWORKS.items()}
    assert runs["fluid"].end_s == pytest.approx(4 * ALPHA + 2 * G / B, rel=1e-12)
    assert runs["analytical"].end_s == pytest.approx(4 * ALPHA + G / B, rel=1e-12)
    uplink = topo.edges.index((0, "switch"))
    for run in runs.values():
        assert run.network.link_bytes[uplink] == pytest.approx(2 * G, rel=1e-12)
    assert runs["fluid"].network.link_busy_s[uplink] == pytest.approx(2 * G / B, rel=1e-9)
    assert runs["analytical"].network.link_busy_s[uplink] == pytest.approx(G / B, rel=1e-12)


def test_a_link_slowed_mid_transfer_slows_the_fluid_flow_but_only_later_analytical_ones():
    """1 GB over a 1 GB/s link, halved at 0.5 s: the fluid flow sends its second half at
    0.5 GB/s (1.5 s); the analytical transfer keeps its 1 s, and one started after the
    change takes 2 s."""
    topo = topology_of(star(2, LinkSpec("l", 1e9, 1e9, 0.0)), 2)
    ends = {}
    for name, factory in NETWORKS.items():
        env = simpy.Environment()
        net = factory(env, topo)

        def job(env=env, net=net, name=name):
            first = net.transfer(np.array([0]), np.array([1]), np.array([1e9]))
            yield env.timeout(0.5)
            net.scale_links(np.arange(len(topo.edges)), 0.5)
            yield first
            ends[name] = [env.now]
            yield net.transfer(np.array([0]), np.array([1]), np.array([1e9]))
            ends[name].append(env.now)
        env.process(job())
        env.run()
    assert ends["fluid"] == pytest.approx([1.5, 1.5 + 2.0], rel=1e-12)
    assert ends["analytical"] == pytest.approx([1.0, 1.0 + 2.0], rel=1e-12)


def _collective(network: str, devices: int = 8) -> dict:
    return {"name": "c", "kind": "collective",
            "cluster": {"topology": "switch", "devices": devices,
                        "link": {"bandwidth_GBps": B / 1e9, "latency_us": ALPHA * 1e6}},
            "collective": {"op": "allreduce", "algorithm": "ring", "size_bytes": G},
            "simulation": {"network": network}}


def test_a_scenario_picks_the_network_and_its_summary_names_a_non_default_one():
    """simulation.network end to end: a ring all-reduce on a switch takes the closed form
    on either network; only the analytical summary names its model."""
    n = 8
    fluid, analytical = (dlsim.simulate(_collective(m)).summary for m in ("fluid", "analytical"))
    closed = 2 * (n - 1) / n * G / B + 2 * (n - 1) * 2 * ALPHA
    assert analytical["time_s"] == pytest.approx(closed, rel=1e-12)
    assert fluid["time_s"] == pytest.approx(closed, rel=1e-9)
    assert analytical["comm_bytes_total"] == fluid["comm_bytes_total"]
    assert analytical["simulation"]["network"] == "analytical"
    assert "network" not in fluid["simulation"]


def test_a_data_parallel_step_is_the_same_on_both_networks():
    """One comm stream, so no two collectives are ever in flight at once: the step time and
    the bytes agree to rounding."""
    def step(network):
        return dlsim.simulate({
            "name": "t", "model": {"kind": "mlp", "widths": [1024, 1024, 1024, 1024]},
            "cluster": {"topology": "switch", "devices": 4, "device": "a100-sxm4-80gb",
                        "link": {"bandwidth_GBps": 10, "latency_us": 5}},
            "training": {"global_batch": 64, "optimizer": "sgd", "bucket_cap_mb": 4},
            "simulation": {"network": network}}).summary
    fluid, analytical = step("fluid"), step("analytical")
    assert analytical["step_time_s"] == pytest.approx(fluid["step_time_s"], rel=1e-9)
    assert analytical["comm_bytes_total"] == pytest.approx(fluid["comm_bytes_total"],
                                                           rel=1e-12)


def test_parameter_server_training_runs_on_either_network():
    """ASP on 8 workers with 2 shards on ranks 0 and 4: each worker-step pushes and pulls
    G/2 to and from each shard but its own, 2 G (G on a shard's own rank). Workers push
    into the same shards at once, which only the fluid network makes them share, so the
    analytical steps are shorter and the fast workers' share of the 128-step budget
    differs; the bytes follow each run's steps per worker."""
    data = read_yaml(SCENARIOS / "ssp-vs-asp.yaml")
    data.pop("sweep", None)
    data["sync"] = {"mode": "asp"}
    runs = {}
    for network in NETWORKS:
        data["simulation"] = {"network": network}
        runs[network] = dlsim.simulate(data).summary
    for s in runs.values():
        g = s["parameters"] * 2  # bf16 gradients
        steps = s["steps_per_worker"]
        assert sum(steps) == s["updates_applied"] == 16 * 8
        moved = sum(k * (g if w in (0, 4) else 2 * g) for w, k in enumerate(steps))
        assert s["comm_bytes_total"] == pytest.approx(moved / 16, rel=1e-12)
    assert runs["analytical"]["step_time_s"] < runs["fluid"]["step_time_s"]
    assert runs["analytical"]["simulation"]["network"] == "analytical"


@pytest.mark.parametrize("bundled", ["federated-phones", "edge-split-resnet50"])
def test_the_network_model_of_a_kind_with_its_own_links_is_an_input_error(bundled):
    """Federated and edge-inference scenarios model their links themselves: their schema has
    no simulation section, so naming a network model there is refused, not ignored."""
    data = read_yaml(SCENARIOS / f"{bundled}.yaml")
    data["simulation"] = {"network": "analytical"}
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(data)
    assert err.value.field == "simulation"
    assert "has no 'simulation' section" in err.value.message
