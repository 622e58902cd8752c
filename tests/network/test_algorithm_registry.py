"""A collective algorithm is one registration: scenarios, ``auto``, the planner and the error
messages all read the registry (dlsim.contract.registry, dlsim.network.algorithms)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import ALGORITHM, register, registered, unregister
from dlsim.contract.scenario import ClusterSpec, ModelSpec, load_scenario
from dlsim.hardware import profiles as hardware
from dlsim.network.algorithms import Algorithm, Phase, algorithms_for, check_algorithm
from dlsim.network.tuner import candidates, plan_collective
from dlsim.planner.estimate import Fabric
from dlsim.planner.space import Target, enumerate_plans, searched_algorithms
from dlsim.workload.costmodel import layer_times_s, optimizer_time_s
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import gpt

B, ALPHA, N = 50e9, 2e-6, 8
SWITCH = {"topology": "switch", "devices": N,
          "link": {"bandwidth_GBps": B / 1e9, "latency_us": ALPHA * 1e6}}


def star_allreduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Every rank sends its G to rank 0, which sends the sum back to each."""
    if len(devices) < 2:
        return []
    others = devices[1:]
    root = np.full(len(others), devices[0])
    g = np.full(len(others), size_bytes)
    return [Phase("star gather", others, root, g), Phase("star broadcast", root, others, g)]


def star_time_s(n: int, size_bytes: float) -> float:
    """Through one switch: each phase pays a device->switch->device latency (2 alpha), and
    rank 0's link carries the N-1 messages of G at B (in on gather, out on broadcast)."""
    return 2 * (2 * ALPHA + (n - 1) * size_bytes / B)


@pytest.fixture
def star():
    register(ALGORITHM, "star", Algorithm({"allreduce": star_allreduce}, planner=True))
    yield
    unregister(ALGORITHM, "star")


def test_star_from_a_yaml_collective_scenario(star, tmp_path):
    g = 1 << 28
    path = tmp_path / "star.yaml"
    path.write_text("name: star\nkind: collective\n"
                    f"cluster: {{topology: switch, devices: {N}, "
                    f"link: {{bandwidth_GBps: {B / 1e9}, latency_us: {ALPHA * 1e6}}}}}\n"
                    f"collective: {{op: allreduce, algorithm: star, size_bytes: {g}}}\n")
    result = dlsim.simulate(path)
    assert result.summary["algorithm_chosen"] == "star"
    assert result.summary["time_s"] == pytest.approx(star_time_s(N, g), rel=1e-9)
    assert result.comm_bytes_total == pytest.approx(2 * (N - 1) * g, rel=1e-12)


def test_star_as_the_data_parallel_all_reduce_of_a_training_step(star):
    """Unbucketed: compute, then the star all-reduce of the bf16 gradients, then Adam."""
    widths = [1024, 4096, 4096, 1024]
    result = dlsim.simulate({
        "name": "t", "model": {"kind": "mlp", "widths": widths},
        "cluster": {**SWITCH, "device": "a100-sxm4-80gb"}, "precision": "bf16",
        "training": {"global_batch": 32 * N, "bucket_cap_mb": 0},
        "communication": {"data_parallel": "star"}})
    device = hardware.device("a100-sxm4-80gb")
    model = build_model(ModelSpec(kind="mlp", widths=widths), 32, 2)
    compute = sum(sum(layer_times_s(layer, device, "bf16")) for layer in model.layers)
    grads = model.parameters * 2
    expected = (compute + star_time_s(N, grads)
                + optimizer_time_s(model.parameters, "adam", device))
    assert result.step_time_s == pytest.approx(expected, rel=1e-9)
    assert result.breakdown_s["exposed_comm"] == pytest.approx(star_time_s(N, grads),
                                                               rel=1e-9)


def test_auto_picks_star_where_it_is_cheapest(star):
    """8 bytes: latency decides; star pays 2 steps of 2 alpha, the ring 2(N-1), the tree
    and halving-doubling 2 log2 N. 256 MiB: rank 0's link makes star (N-1)G/B per phase
    where halving-doubling moves 2(N-1)/N G per link in 2 log2 N steps, and wins."""
    topology = build_topology(ClusterSpec(**SWITCH))
    assert "star" in candidates("allreduce", "auto", "ideal")
    small = dlsim.simulate({"name": "s", "kind": "collective", "cluster": SWITCH,
                            "collective": {"algorithm": "auto", "size_bytes": 8}})
    assert small.summary["algorithm_chosen"] == "star"
    assert small.summary["time_s"] == pytest.approx(star_time_s(N, 8), rel=1e-9)
    g = 1 << 28
    large = plan_collective("allreduce", "auto", np.arange(N), g, topology)
    assert large.algorithm == "halving-doubling"
    assert large.time_s == pytest.approx(
        2 * np.log2(N) * 2 * ALPHA + 2 * (N - 1) / N * g / B, rel=1e-9)


def test_the_planner_searches_and_prices_star(star):
    assert searched_algorithms() == ("ring", "tree", "hierarchical", "nvls", "star")
    shape = gpt(4, 512, 8, 128, 1000)
    target = Target.on(build_topology(ClusterSpec(**SWITCH, device="a100-sxm4-80gb")), "fp32")
    plans = list(enumerate_plans(shape, 64, target, recompute=("none",),
                                 placements=("pack",), schedules=("1f1b",),
                                 offload=("none",), protocol=("auto",)))
    data_parallel = [p for p in plans if p.data == N and p.zero_stage == 0]
    # NVLS only where an NVSwitch of generation 3 reduces (not this textbook switch)
    assert [p.algorithm for p in data_parallel if p.microbatch == 1] == [
        a for a in searched_algorithms() if a != "nvls"]
    fabric = Fabric(build_topology(ClusterSpec(**SWITCH)))
    g = 1e8
    assert fabric.time_s("allreduce", "star", g, (tuple(range(N)),), N, "pack") == (
        pytest.approx(star_time_s(N, g), rel=1e-9))


def test_unregistered_afterwards():
    assert "star" not in registered(ALGORITHM)
    assert searched_algorithms() == ("ring", "tree", "hierarchical", "nvls")


def test_auto_tie_order_and_candidates_are_the_shipped_ones():
    """Ties go to the earlier candidate, so this order is part of every result."""
    assert list(algorithms_for("allreduce")) == [
        "ring", "tree", "halving-doubling", "direct", "hierarchical", "ps", "gossip", "nvls",
        "multi-ring", "torus-rings", "nvls-tree"]
    assert candidates("allreduce", "auto", "ideal") == [
        "ring", "tree", "halving-doubling", "hierarchical", "torus-rings"]
    assert candidates("allreduce", "auto", "nccl") == ["ring", "tree", "nvls", "multi-ring"]
    assert candidates("reducescatter", "auto", "ideal") == ["ring", "torus-rings"]
    assert candidates("alltoall", "auto", "nccl") == ["direct"]  # nothing else runs it


def test_auto_breaks_an_exact_tie_towards_the_ring():
    """On one node the hierarchical all-reduce is the ring's reduce-scatter and all-gather
    as two phases: the same time, and auto keeps the ring (6 ranks: no halving-doubling;
    at 100 MB the tree's 2G/B through its inner nodes loses)."""
    topology = build_topology(ClusterSpec(**{**SWITCH, "devices": 6}))
    ranks = np.arange(6)
    ring = plan_collective("allreduce", "ring", ranks, 1e8, topology)
    hier = plan_collective("allreduce", "hierarchical", ranks, 1e8, topology)
    tree = plan_collective("allreduce", "tree", ranks, 1e8, topology)
    assert hier.time_s == ring.time_s < tree.time_s
    assert plan_collective("allreduce", "auto", ranks, 1e8, topology).algorithm == "ring"


def _collective(algorithm: str) -> dict:
    return {"name": "x", "kind": "collective", "cluster": SWITCH,
            "collective": {"algorithm": algorithm, "size_bytes": 10}}


def test_a_misspelled_algorithm_gets_did_you_mean_and_the_registered_names(star):
    with pytest.raises(ScenarioError) as err:
        load_scenario(_collective("strar"))
    message = str(err.value)
    assert "field 'collective.algorithm'" in message
    assert "did you mean 'star'?" in message
    assert ("allowed: auto, direct, gossip, halving-doubling, hierarchical, multi-ring, nvls, "
            "nvls-tree, ps, ring, torus-rings, tree, star") in message


def test_a_name_nothing_resembles_lists_the_registered_names():
    with pytest.raises(ScenarioError) as err:
        load_scenario({"name": "x", "model": {"preset": "gpt2-124m"}, "cluster": SWITCH,
                       "training": {"global_batch": 8},
                       "communication": {"data_parallel": "magic"}})
    message = str(err.value)
    assert "field 'communication.data_parallel'" in message and "did you mean" not in message
    assert ("allowed: auto, direct, gossip, halving-doubling, hierarchical, multi-ring, nvls, "
            "nvls-tree, ps, ring, torus-rings, tree") in message


def test_an_algorithm_that_does_not_run_the_op_names_those_that_do():
    with pytest.raises(ScenarioError, match=r"no 'ring' algorithm for alltoall; allowed: "
                                            r"direct\.") as err:
        check_algorithm("alltoall", "ring", "collective.algorithm")
    assert err.value.field == "collective.algorithm"
    with pytest.raises(ScenarioError, match=r"'rnig'.*did you mean 'ring'"):
        check_algorithm("allreduce", "rnig", "communication.data_parallel")


def test_a_misspelled_protocol_gets_did_you_mean():
    spec = _collective("ring")
    spec["collective"]["protocol"] = "LL12"
    with pytest.raises(ScenarioError, match=r"did you mean 'LL128'\?\); allowed: auto, "
                                            r"ideal, nccl, LL, LL128, Simple"):
        load_scenario(spec)


def test_a_name_registered_twice_is_refused(star):
    with pytest.raises(ValueError, match="registered twice"):
        register(ALGORITHM, "star", Algorithm({"allreduce": star_allreduce}))


def test_register_is_also_a_decorator():
    @register("test family", "double")
    def double(x: int) -> int:
        return 2 * x

    try:
        assert registered("test family") == {"double": double} and double(2) == 4
    finally:
        unregister("test family", "double")


def test_a_fresh_interpreter_validates_against_full_registries():
    """Importing the contract runs dlsim/__init__ first, which imports every algorithm and
    the protocols, so a scenario validated straight away sees them all."""
    code = ("from dlsim.contract.scenario import load_scenario\n"
            "s = load_scenario({'name': 'x', 'kind': 'collective', 'cluster': "
            "{'preset': 'dgx-a100'}, 'collective': {'algorithm': 'halving-doubling', "
            "'protocol': 'LL128', 'size_bytes': 10}})\n"
            "print(s.collective.algorithm, s.collective.protocol)\n")
    env = {**os.environ, "PYTHONPATH": str(Path(dlsim.__file__).parents[1])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env=env, check=True)
    assert out.stdout.split() == ["halving-doubling", "LL128"]
