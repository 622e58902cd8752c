"""Multi-ring on the DGX-1 mesh and per-dimension rings on the TPU v4 torus, against closed
forms written out here: the lane counts of the DGX-1V ``nvidia-smi topo -m`` matrix (the
system profile), NVLink 2's 25 GB/s per direction per lane (V100 datasheet) at NCCL's
20 GB/s payload rate (src/graph/topo.h), NCCL's Ring/Simple latencies (tuning.cc: base
8.4 us, 3.4 us per NVLink step), and TPU v4 ICI's 50 GB/s per link per direction."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec
from dlsim.network.algorithms import lower
from dlsim.network.algorithms.multi_ring import disjoint_rings, lane_graph
from dlsim.network.tuner import estimate_time_s

N = 8
LANE = 25e9                 # NVLink 2, per direction per lane
PAYLOAD = 20 / 25           # NCCL's NVLink payload rate over line rate
LAUNCH, BASE, STEP = 4e-6, 8.4e-6, 3.4e-6  # v100 kernel_launch_us; Ring/Simple latencies
DGX1_LANES = {(0, 1): 1, (0, 2): 1, (0, 3): 2, (0, 4): 2, (1, 2): 2, (1, 3): 1, (1, 5): 2,
              (2, 3): 2, (2, 6): 1, (3, 7): 1, (4, 5): 1, (4, 6): 1, (4, 7): 2, (5, 6): 2,
              (5, 7): 1, (6, 7): 2}
ICI = 50e9                  # TPU v4 ICI link, per direction
DIMS = (4, 4, 4)


def _topology(preset: str):
    return build_topology(ClusterSpec(preset=preset, nodes=1))


def _run(preset: str, size: float, algorithm: str, op: str = "allreduce", **extra) -> dict:
    return dlsim.simulate({"name": "mr", "kind": "collective",
                           "cluster": {"preset": preset, "nodes": extra.pop("nodes", 1)},
                           "collective": {"op": op, "algorithm": algorithm,
                                          "size_bytes": size, **extra}}).summary


def _link_bytes(topology, phases) -> Counter:
    """Payload bytes each directed link carries over the whole collective."""
    load: Counter = Counter()
    for p in phases:
        links, first, lengths = topology.flow_routes(p.src, p.dst)
        for i in range(len(p.src)):
            for e in links[first[i]:first[i] + lengths[i]]:
                load[int(e)] += p.size_bytes[i] * p.rounds
    return load


def test_dgx1_mesh_has_three_lane_disjoint_rings_that_use_every_lane():
    mesh = lane_graph(_topology("dgx1-v100"), np.arange(N))
    assert {tuple(sorted(e)): mesh.edges[e]["lanes"] for e in mesh.edges} == DGX1_LANES
    rings = disjoint_rings(mesh)
    assert len(rings) == 3  # 6 lanes per GPU / 2 lanes per ring through it
    used = Counter(tuple(sorted((r[i], r[(i + 1) % N]))) for r in rings for i in range(N))
    assert used == DGX1_LANES  # every lane carries exactly one ring


@pytest.mark.parametrize("op, steps", [("allreduce", 2 * (N - 1)), ("allgather", N - 1),
                                       ("reducescatter", N - 1)])
def test_each_lane_carries_its_share_of_the_ring_bytes(op, steps):
    """Six directed rings: every lane, each way, carries steps/N x G / 6."""
    topology = _topology("dgx1-v100")
    size = 2.0 ** 30
    load = _link_bytes(topology, lower(op, "multi-ring", np.arange(N), size, topology=topology))
    per_lane = steps / N * size / 6
    edge = {e: i for i, e in enumerate(topology.edges)}
    expected = {edge[(u, v)]: lanes * per_lane for (a, b), lanes in DGX1_LANES.items()
                for u, v in ((a, b), (b, a))}
    assert load == pytest.approx(expected, rel=1e-12)


def test_dgx1_all_reduce_busbw_is_six_lanes_at_nccl_payload_rate():
    """1 GiB: 2(N-1)/N x G / 6 over one lane's payload rate plus Simple's latencies; the
    closed form of all lanes in use is 6 x 20 = 120 GB/s bus bandwidth."""
    size = 2.0 ** 30
    s = _run("dgx1-v100", size, "multi-ring")
    closed = LAUNCH + BASE + 2 * (N - 1) * STEP + 2 * (N - 1) / N * size / 6 / (LANE * PAYLOAD)
    assert s["time_s"] == pytest.approx(closed, rel=1e-9)
    assert s["busbw_GBps"] == pytest.approx(120.0, rel=5e-3)  # reached 3.8e-3: latencies
    ring = _run("dgx1-v100", size, "ring")
    assert ring["busbw_GBps"] == pytest.approx(20.0, rel=5e-3)  # one lane of six


@pytest.mark.parametrize("size", [2.0 ** 12, 2.0 ** 18, 2.0 ** 24, 2.0 ** 30])
def test_auto_takes_the_fastest_of_ring_tree_and_multi_ring(size):
    topology = _topology("dgx1-v100")
    ranks = np.arange(N)
    times = {a: estimate_time_s("allreduce", a, size, ranks, topology, "nccl")
             for a in ("ring", "tree", "multi-ring")}
    s = _run("dgx1-v100", size, "auto")
    assert s["algorithm_chosen"] == min(times, key=times.__getitem__)
    if size >= 2.0 ** 24:
        assert s["algorithm_chosen"] == "multi-ring"


def test_multi_ring_on_a_switch_or_across_nodes_is_an_input_error():
    with pytest.raises(ScenarioError, match="multi-ring") as switch:
        _run("dgx-h100", 2.0 ** 20, "multi-ring")
    assert "field 'algorithm'" in str(switch.value)  # as NVLS's error names it
    with pytest.raises(ScenarioError, match="multi-ring"):
        _run("dgx1-v100", 2.0 ** 20, "multi-ring", nodes=2)
    # auto on two DGX-1 nodes falls back to NCCL's rail rings
    assert _run("dgx1-v100", 2.0 ** 30, "auto", nodes=2)["algorithm_chosen"] != "multi-ring"


def _torus_link_bytes(size: float, op: str) -> float:
    """Per directed link: in reduce-scatter stage s a dimension's lines carry one of three
    parts, now G/3/4^s, half each way, (d-1)/d of it."""
    rs = sum((DIMS[0] - 1) / DIMS[0] * size / 3 / 4 ** s / 2 for s in range(3))
    return 2 * rs if op == "allreduce" else rs


@pytest.mark.parametrize("op", ["allreduce", "allgather", "reducescatter"])
def test_torus_rings_load_every_link_alike(op):
    topology = _topology("tpu-v4-slice")
    size = 2.0 ** 30
    load = _link_bytes(topology, lower(op, "torus-rings", np.arange(64), size,
                                       topology=topology))
    assert len(load) == 64 * 6  # every chip's six links, each way
    assert list(load.values()) == pytest.approx([_torus_link_bytes(size, op)] * len(load),
                                                rel=1e-12)


def test_tpu_all_reduce_busbw_is_six_links():
    """Ideal model (a TPU has no NCCL): six stages, each 3 hops of 1 us and its bytes over a
    link; bus bandwidth 2(N-1)/N x G / t -> 6 x 50 GB/s as G grows."""
    size = 2.0 ** 30
    s = _run("tpu-v4-slice", size, "torus-rings")
    per_stage = [(DIMS[0] - 1) / DIMS[0] * size / 3 / 4 ** st / 2 / ICI for st in range(3)]
    closed = 2 * sum(3 * 1e-6 + t for t in per_stage)
    assert s["time_s"] == pytest.approx(closed, rel=1e-9)
    assert s["busbw_GBps"] == pytest.approx(300.0, rel=5e-3)  # reached 2.7e-3: latencies
    assert _run("tpu-v4-slice", size, "auto")["algorithm_chosen"] == "torus-rings"
    assert _run("tpu-v4-slice", size, "ring")["busbw_GBps"] == pytest.approx(50.0, rel=1e-2)


def test_torus_rings_on_part_of_a_torus_is_an_input_error():
    with pytest.raises(ScenarioError, match="whole torus"):
        _run("tpu-v4-slice", 2.0 ** 20, "torus-rings", devices=16)


def test_validate_rows_are_the_closed_forms_within_the_latencies():
    """``dlsim validate``'s multi_ring_closed_forms: auto finds the rings on both presets and
    lands within 0.4 % of all lanes in use (reached 0.38 % DGX-1, 0.25 % TPU: latencies)."""
    from dlsim.validation import DEFAULT_DIR, TABLES

    rows = TABLES["multi_ring_closed_forms"](DEFAULT_DIR)
    assert [r["case"].split(" (")[1].split(",")[0] for r in rows] == ["multi-ring",
                                                                       "torus-rings"]
    assert max(abs(r["error_pct"]) for r in rows) < 0.4


def test_a_fully_connected_group_gets_as_many_rings_as_its_degree_allows():
    """8 fully connected devices (2,520 Hamiltonian cycles): degree 7 bounds it at 3 rings,
    each link used at most once; 9 devices are beyond the search."""
    topology = build_topology(ClusterSpec(topology="fully-connected", devices=9,
                                          link={"bandwidth_GBps": 25, "latency_us": 1}))
    rings = disjoint_rings(lane_graph(topology, np.arange(N)))
    used = Counter(tuple(sorted((r[i], r[(i + 1) % N]))) for r in rings for i in range(N))
    assert len(rings) == 3 and max(used.values()) == 1
    with pytest.raises(ScenarioError, match="2 to 8 devices"):
        lower("allreduce", "multi-ring", np.arange(9), 1e6, topology=topology)
