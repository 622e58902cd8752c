"""NVLS-Tree across Hopper/Blackwell nodes against closed forms written out here: NVLink 4's
450 GB/s per direction (H100 datasheet) at NCCL's payload rate (20/25, topo.h) times
nvlsEfficiency (Hopper 0.85, tuning.cc), NDR InfiniBand's 50 GB/s per NIC at NCCL's 12/12.5
NET payload rate, NVLS's fitted 71 us and NCCL's NVLSTree NET step latency (20.9 us)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import dlsim
from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec
from dlsim.network.algorithms import lower

L = 8                                  # GPUs (and NICs) per DGX H100
PORT = 450e9 * 20 / 25 * 0.85          # NVLS payload rate of one H100 switch port
NIC = 50e9 * 12 / 12.5                 # NDR payload rate
LAUNCH, NVLS_LAT, NET_STEP = 4e-6, 71e-6, 20.9e-6


def _run(preset: str, nodes: int, size: float, algorithm: str = "nvls-tree") -> dict:
    return dlsim.simulate({"name": "nvls-tree", "kind": "collective",
                           "cluster": {"preset": preset, "nodes": nodes},
                           "collective": {"op": "allreduce", "algorithm": algorithm,
                                          "size_bytes": size}}).summary


@pytest.mark.parametrize("nodes", [2, 4])
def test_port_and_nic_bytes(nodes):
    """Each switch port carries (L+1)/L x G each way; each NIC 2(M-1)/M x G/L each way."""
    topology = build_topology(ClusterSpec(preset="dgx-h100", nodes=nodes))
    size = 2.0 ** 30
    ranks = np.arange(nodes * L)
    (phase,) = lower("allreduce", "nvls-tree", ranks, size, nodes=ranks // L)
    links, first, lengths = topology.flow_routes(phase.src, phase.dst)
    load: Counter = Counter()
    for i in range(len(phase.src)):
        for e in links[first[i]:first[i] + lengths[i]]:
            load[topology.link_label(e).split(" ")[0] if False else int(e)] += phase.size_bytes[i]
    kinds = {int(e): topology.graph.edges[topology.edges[e]]["link"] for e in load}
    port = [v for e, v in load.items() if kinds[e] == "nvlink4"]
    nic = [v for e, v in load.items() if kinds[e] == "ib-ndr"]
    assert len(port) == len(nic) == 2 * nodes * L  # every port and NIC, both directions
    assert port == pytest.approx([size * (L + 1) / L] * len(port), rel=1e-12)
    assert nic == pytest.approx([2 * (nodes - 1) / nodes * size / L] * len(nic), rel=1e-12)


@pytest.mark.parametrize("nodes", [2, 4])
def test_time_is_the_slower_of_the_switch_and_the_nics(nodes):
    size = 2.0 ** 33
    s = _run("dgx-h100", nodes, size)
    intra = NVLS_LAT + size * (L + 1) / L / PORT
    inter = 2 * np.ceil(np.log2(nodes)) * NET_STEP + 2 * (nodes - 1) / nodes * size / L / NIC
    assert s["time_s"] == pytest.approx(LAUNCH + max(intra, inter), rel=1e-9)
    # 2 nodes: the switch bounds it (509 GB/s busbw); 4 nodes: the NICs (495 GB/s)
    assert (intra > inter) == (nodes == 2)
    ring = _run("dgx-h100", nodes, size, "ring")
    assert s["busbw_GBps"] > 1.25 * ring["busbw_GBps"]  # the ring is bound at 8 NICs: 384


@pytest.mark.parametrize("preset, nodes, why", [
    ("dgx-h100", 1, "two or more nodes"),          # one node: NVLS
    ("dgx-a100", 2, "NVSwitch of generation 3"),   # NVSwitch gen 2 cannot reduce
    ("pcie-8gpu-2socket", 2, "NVSwitch of generation 3")])
def test_where_nvls_tree_cannot_run_is_an_input_error(preset, nodes, why):
    with pytest.raises(ScenarioError, match=why) as err:
        _run(preset, nodes, 2.0 ** 26)
    assert "field 'algorithm'" in str(err.value) and "nvls-tree" in str(err.value)
