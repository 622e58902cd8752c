"""Topology builders and routing: shapes, routes, ECMP, placement."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import closed_form
from hypothesis import given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.cluster.build import build_topology, placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec
from dlsim.hardware.fabrics import LinkSpec, fat_tree, ring, torus
from dlsim.hardware.topology import Topology

SPEC = LinkSpec("l", 1e9, 1e9, 1e-6)


def _path(topo: Topology, src: int, dst: int) -> list[object]:
    ids = topo.route(src, dst)
    return [topo.edges[ids[0]][0]] + [topo.edges[i][1] for i in ids]


def test_ring_routes_the_short_way_round():
    topo = Topology(ring(10, SPEC), 10, None, 10, "t")
    assert _path(topo, 0, 9) == [0, 9]
    assert len(topo.route(0, 5)) == 5


def test_torus_has_wraparound_neighbours():
    g = torus([4, 4, 4], SPEC)
    assert g.number_of_nodes() == 64
    assert all(g.out_degree(n) == 6 for n in g)  # 3 dimensions x 2 directions
    assert g.has_edge(0, 3) and g.has_edge(0, 48)  # wrap in the last and first dimension


def test_torus_of_size_two_has_one_link_per_pair():
    g = torus([2, 3], SPEC)
    assert g.number_of_edges() == 2 * (3 + 6)  # 3 pairs along dim 0, 6 ring links along dim 1


def test_fat_tree_oversubscription_sets_the_spines():
    g = fat_tree(32, SPEC, per_leaf=8, oversubscription=2.0)
    spines = [n for n, kind in g.nodes(data="kind") if kind == "switch" and "spine" in n]
    assert len(spines) == 4  # 8 down-links per leaf : 4 up-links
    assert g.out_degree("leaf0") == 8 + 4


def test_ecmp_spreads_leaf_to_leaf_routes_over_all_spines():
    topo = Topology(fat_tree(64, SPEC, per_leaf=8, oversubscription=1.0), 64, None, 64, "t")
    spines = {next(n for n in _path(topo, s, d) if str(n).startswith("spine"))
              for s in range(8) for d in range(8, 64)}
    assert len(spines) == 8
    assert topo.route(3, 40) is topo.route(3, 40)  # cached
    assert _path(topo, 0, 1) == [0, "leaf0", 1]


def test_dgx_a100_routes_intra_node_over_nvswitch_and_inter_node_over_nics():
    topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=2))
    assert topo.n_devices == 16
    assert _path(topo, 0, 7) == [0, "n0/nvswitch", 7]
    cross = _path(topo, 0, 8)
    assert "n0/nic0" in cross and "n1/nic0" in cross and "n0/nvswitch" not in cross
    nvlink = topo.capacity_Bps[topo.route(0, 7)].min()
    ib = topo.capacity_Bps[topo.route(0, 8)].min()
    assert nvlink == pytest.approx(300e9) and ib == pytest.approx(25e9)


def test_dgx1_hybrid_cube_mesh_has_no_link_between_0_and_5():
    topo = build_topology(ClusterSpec(preset="dgx1-v100"))
    assert len(topo.route(0, 3)) == 1
    assert topo.capacity_Bps[topo.route(0, 3)][0] == pytest.approx(50e9)  # NV2: two lanes
    assert len(topo.route(0, 5)) == 2  # no direct NVLink: one hop through a neighbour


def test_pcie_server_crosses_the_socket_link_between_halves():
    topo = build_topology(ClusterSpec(preset="pcie-8gpu-2socket"))
    same_switch = _path(topo, 0, 1)
    other_socket = _path(topo, 0, 7)
    assert not any("socket" in str(n) for n in same_switch)
    assert "n0/socket0" in other_socket and "n0/socket1" in other_socket


def test_explicit_cluster_form():
    topo = build_topology(ClusterSpec(device="h100-sxm5-80gb", devices_per_node=8, nodes=2,
                                      intra_node="nvswitch", inter_node="ib-ndr"))
    assert topo.n_devices == 16
    assert topo.capacity_Bps[topo.route(0, 1)].min() == pytest.approx(450e9)


def test_placement_pack_and_spread():
    topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=4))
    assert list(placement(8, topo, "pack")) == list(range(8))
    spread = placement(8, topo, "spread")
    assert sorted({int(d) // 8 for d in spread}) == [0, 1, 2, 3]
    assert len(set(spread.tolist())) == 8
    with pytest.raises(ScenarioError, match="33"):
        placement(33, topo, "pack")


def test_spread_placement_makes_a_node_local_ring_cross_the_fabric():
    """8 ranks packed in one DGX all-reduce over NVSwitch; spread over 4 nodes they cross
    InfiniBand, 12x slower per link."""
    import dlsim

    base = {"name": "p", "kind": "collective", "cluster": {"preset": "dgx-a100", "nodes": 4},
            "collective": {"op": "allreduce", "size_bytes": 1e9, "devices": 8,
                           "protocol": "ideal"}}  # one ring (NCCL's would use both rails)
    packed = dlsim.simulate(base)
    spread = dlsim.simulate({**base, "placement": "spread"})
    assert spread.time_s > 5 * packed.time_s
    assert np.isclose(packed.comm_bytes_total, spread.comm_bytes_total)


def test_pack_beats_spread_on_the_two_socket_pcie_server():
    """Ring all-reduce over all 8 GPUs. Packed, each PCIe-switch uplink carries one ring
    flow; spread (ranks alternate sockets), both GPUs of a switch send off it at once, so
    the uplink is shared by two flows: the bandwidth term doubles. 10 MB, so that the
    latencies are 36% (packed) and 22% (spread) of the time."""
    import dlsim

    topo = build_topology(ClusterSpec(preset="pcie-8gpu-2socket"))
    b = topo.capacity_Bps[topo.route(0, 1)].min()
    size, n = 1e7, 8
    times, hot = {}, {}
    for policy in ("pack", "spread"):
        ranks = placement(n, topo, policy)
        lat = max(topo.latency_s[topo.route(int(a), int(c))].sum()
                  for a, c in zip(ranks, np.roll(ranks, -1)))
        share = 1 if policy == "pack" else 2
        expected = closed_form(2 * (n - 1) * size / n / (b / share), 2 * (n - 1) * lat)
        r = dlsim.simulate({"name": policy, "kind": "collective", "placement": policy,
                            "cluster": {"preset": "pcie-8gpu-2socket"},
                            "collective": {"size_bytes": size, "protocol": "ideal"}})
        assert r.time_s == pytest.approx(expected, rel=1e-9)
        times[policy], hot[policy] = r.time_s, r.links.iloc[0]
    assert times["pack"] < times["spread"]
    assert "pcie" in hot["spread"]["src"] and "socket" in hot["spread"]["dst"]


@pytest.mark.parametrize("preset,link", [("edge-star-wifi", "wifi"), ("edge-star-lte", "lte")])
def test_edge_star_presets_are_asymmetric(preset, link):
    """Phones around one access point: each phone's uplink is its link profile's up rate,
    its downlink the down rate. A ring all-reduce step goes up one phone's link and down
    the next one's, so the slower uplink sets the pace: 2(N-1) x (G/N / up + 2 latencies)
    (ideal model: phones are not GPUs running NCCL)."""
    from dlsim.hardware import profiles as hardware

    topo = build_topology(ClusterSpec(preset=preset))
    profile = hardware.link(link)
    up = topo.capacity_Bps[topo.route(0, 1)][0]
    down = topo.capacity_Bps[topo.route(0, 1)][1]
    assert (up, down) == (profile.up_Bps, profile.down_Bps)
    assert _path(topo, 0, 1) == [0, "n0/switch", 1]
    n, size = 8, 4e6
    r = dlsim.simulate({"name": "e", "kind": "collective", "cluster": {"preset": preset},
                        "collective": {"size_bytes": size, "devices": n}})
    expected = closed_form(2 * (n - 1) * size / n / profile.up_Bps,
                           2 * (n - 1) * 2 * profile.latency_s)
    assert r.protocol == "ideal"
    assert r.time_s == pytest.approx(expected, rel=1e-9)


def test_explicit_placement_puts_each_rank_where_listed():
    """Ranks 0..3 on devices 0, 8, 16, 24 of four DGX nodes: every ring hop crosses the
    fabric, like spread placement, and the same ranks listed packed stay on NVSwitch."""
    base = {"name": "x", "kind": "collective", "cluster": {"preset": "dgx-a100", "nodes": 4},
            "collective": {"size_bytes": 1e8, "devices": 4, "protocol": "ideal"}}
    listed = dlsim.simulate({**base, "placement": [0, 8, 16, 24]})
    spread = dlsim.simulate({**base, "placement": "spread"})
    packed = dlsim.simulate({**base, "placement": [0, 1, 2, 3]})
    assert listed.time_s == spread.time_s
    assert packed.time_s == dlsim.simulate(base).time_s < listed.time_s


@pytest.mark.parametrize("bad", [[0, 0, 1, 2], [0, 1, 2, 99], [0, 1]])
def test_explicit_placement_is_checked(bad):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate({"name": "x", "kind": "collective",
                        "cluster": {"preset": "dgx-a100", "nodes": 4}, "placement": bad,
                        "collective": {"size_bytes": 1e8, "devices": 4}})
    assert err.value.field == "placement"


def _rail_sendrecv(pair: list[int], size: float, pxn: bool = True) -> dlsim.Result:
    """Two ranks placed on devices ``pair`` of four DGX A100 nodes on a rail fabric, each
    sending ``size`` to the other (nccl-tests' sendrecv), textbook link costs."""
    return dlsim.simulate({"name": "rail", "kind": "collective",
                           "cluster": {"preset": "dgx-a100", "nodes": 4, "fabric": "rail",
                                       "pxn": pxn},
                           "placement": pair,
                           "collective": {"op": "sendrecv", "size_bytes": size, "devices": 2,
                                          "protocol": "ideal"}})


def _hops(topo, src: int, dst: int) -> list[object]:
    """The nodes a route enters, in order."""
    return [topo.edges[e][1] for e in topo.route(src, dst)]


def test_rail_fabric_keeps_same_rank_traffic_on_its_rail():
    """NIC k of every node hangs off rail switch k: GPU k of one node reaches GPU k of
    another through one switch (its rail), with or without PXN."""
    for pxn in (True, False):
        topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=4, fabric="rail", pxn=pxn))
        for k in range(8):
            for other in (1, 2, 3):
                hops = _hops(topo, k, 8 * other + k)
                assert [h for h in hops if str(h).startswith(("rail", "spine"))] == [f"rail{k}"]


def test_rail_fabric_without_pxn_crosses_a_spine():
    """NCCL_PXN_DISABLE=1: GPU i reaches GPU j != i of another node through rail i, a spine
    and rail j, and no GPU forwards it; the spine is picked by the destination node
    (D-mod-K: 4 nodes, 4 spines, node m's traffic through spine m)."""
    topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=4, fabric="rail", pxn=False))
    for m in (1, 2, 3):
        hops = _hops(topo, 2, 8 * m + 5)
        assert hops == ["n0/pcie2", "n0/nic2", "rail2", f"spine{m}", "rail5", f"n{m}/nic5",
                        f"n{m}/pcie5", 8 * m + 5]


def test_rail_fabric_with_pxn_hands_cross_rail_traffic_over_nvlink():
    """PXN (NCCL's default): GPU 2 of node 0 sends to GPU 5 of node 1 by NVLink to GPU 5 of
    node 0, then out of that GPU's NIC on rail 5; no spine."""
    topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=4, fabric="rail"))
    assert _hops(topo, 2, 8 + 5) == [
        "n0/nvswitch", 5, "n0/pcie5", "n0/nic5", "rail5", "n1/nic5", "n1/pcie5", 13]


def test_rail_fabric_cross_rail_cost_with_and_without_pxn():
    """In closed form from the link profiles (textbook costs): a same-rail exchange pays
    GPU-PCIe-NIC-rail-NIC-PCIe-GPU latencies and the 25 GB/s HDR rate. Cross-rail without
    PXN pays two more HDR hops (rail -> spine -> rail) at the same rate, and only it puts
    bytes on spine links; with PXN it pays two NVLink hops (GPU -> NVSwitch -> GPU) instead
    and no spine carries a byte. 4 MB, so that the latencies are 24% of the time or more."""
    from dlsim.hardware.profiles import link

    size = 4e6
    hdr, pcie, nvl = link("ib-hdr"), link("pcie4-x16"), link("nvlink3")
    wire = size / (hdr.bandwidth_GBps * 1e9)
    hops = (4 * pcie.latency_us + 2 * hdr.latency_us) * 1e-6
    aligned = _rail_sendrecv([3, 11], size)
    spine_crossed, pxn = _rail_sendrecv([3, 12], size, pxn=False), _rail_sendrecv([3, 12], size)
    assert aligned.time_s == pytest.approx(closed_form(wire, hops), rel=1e-9)
    assert spine_crossed.time_s == pytest.approx(
        closed_form(wire, hops + 2 * hdr.latency_us * 1e-6), rel=1e-9)
    assert pxn.time_s == pytest.approx(closed_form(wire, hops + 2 * nvl.latency_us * 1e-6),
                                       rel=1e-9)
    spine = lambda r: r.links[r.links.src.str.startswith("spine")  # noqa: E731
                              | r.links.dst.str.startswith("spine")]["bytes"].sum()
    assert spine(aligned) == 0 and spine(pxn) == 0
    assert spine(spine_crossed) == pytest.approx(4 * size, rel=1e-9)  # 2 flows x 2 spine links


@settings(max_examples=8, deadline=None)
@given(nodes=st.integers(2, 6), over=st.sampled_from([1.0, 2.0, 4.0]),
       src=st.integers(0, 7), dst=st.integers(0, 7), pxn=st.booleans())
def test_rail_routes_cross_a_spine_only_across_rails_without_pxn(nodes, over, src, dst, pxn):
    topo = build_topology(ClusterSpec(preset="dgx-a100", nodes=nodes, fabric="rail",
                                      oversubscription=over, pxn=pxn))
    hops = [topo.link_label(e) for e in topo.route(src, 8 * (nodes - 1) + dst)]
    crossing = src != dst
    assert sum("spine" in h for h in hops) == (2 if crossing and not pxn else 0)
    assert len(hops) == 6 + (2 if crossing else 0)  # + spine up/down, or + NVLink out/in


def _sixteen_nodes(op: str, algorithm: str, fabric: str, pxn: bool = True,
                   protocol: str = "ideal") -> dlsim.Result:
    return dlsim.simulate({"name": "rails", "kind": "collective",
                           "cluster": {"preset": "dgx-a100", "nodes": 16, "fabric": fabric,
                                       "oversubscription": 2, "pxn": pxn},
                           "collective": {"op": op, "algorithm": algorithm,
                                          "size_bytes": 2**28, "protocol": protocol}})


def test_rails_with_pxn_carry_an_all_to_all_at_nic_rate_and_tie_on_rings():
    """16 DGX A100 nodes, 2:1 spines. All-to-all: every NIC sends 120/128 of a GPU's 256 MiB
    (under PXN NIC k carries its node's traffic for rail k: 8 GPUs x 15 nodes x G/128), so
    the exchange takes that over 25 GB/s plus at most 127 queued message latencies of the
    longest route; without PXN (or on the fat tree) cross-rail traffic meets the 2:1 spines
    and takes longer. NCCL's rings (one per local rank) cross between nodes as shifts that
    D-mod-K keeps off shared spine links, so for the all-reduce rails and fat tree tie."""
    from dlsim.hardware.profiles import link

    hdr, pcie, nvl = link("ib-hdr"), link("pcie4-x16"), link("nvlink3")
    bound = 120 / 128 * 2**28 / (hdr.bandwidth_GBps * 1e9)
    longest = (2 * nvl.latency_us + 4 * pcie.latency_us + 2 * hdr.latency_us) * 1e-6
    rail = _sixteen_nodes("alltoall", "direct", "rail").time_s
    assert bound <= rail <= bound + 127 * longest
    for slower in (_sixteen_nodes("alltoall", "direct", "rail", pxn=False),
                   _sixteen_nodes("alltoall", "direct", "fat-tree")):
        assert slower.time_s > 1.59 * rail  # reached: 1.60 (fat tree), 1.75 (no PXN)
    assert _sixteen_nodes("allreduce", "ring", "rail", protocol="nccl").time_s == pytest.approx(
        _sixteen_nodes("allreduce", "ring", "fat-tree", protocol="nccl").time_s, rel=1e-12)


@pytest.mark.parametrize("preset", ["dgx-a100", "dgx-h100", "dgx1-v100", "hgx-h200",
                                    "pcie-8gpu-2socket"])
@pytest.mark.parametrize("fabric,pxn", [("fat-tree", True), ("switch", True), ("rail", True),
                                        ("rail", False)])
def test_routes_between_nodes_from_cached_legs_equal_a_full_search(preset, fabric, pxn):
    """Routes between nodes are composed from cached legs (out to the NIC, across the
    fabric, in from the NIC) where each device has a NIC of its own; for every pair of
    devices on different nodes (and a PXN hand-over, where one applies) that must be the
    path a breadth-first search over the whole graph finds, with the same spine."""
    topo = build_topology(ClusterSpec(preset=preset, nodes=3, fabric=fabric, pxn=pxn,
                                      oversubscription=2, nics_per_leaf=8))

    def searched(s: int, d: int) -> np.ndarray:
        return topo._edge_ids(topo._ecmp_path(topo._path(s, d), d))

    composed = 0
    for s in range(topo.n_devices):
        for d in range(topo.n_devices):
            if s == d or not topo._between_nodes(s, d):
                continue
            proxy = topo._pxn_proxy(s, d)
            expected = (searched(s, d) if proxy is None else
                        np.concatenate((searched(s, proxy), searched(proxy, d))))
            assert topo.route(s, d).tolist() == expected.tolist(), (s, d)
            composed += 1
    assert composed > 0 or preset == "pcie-8gpu-2socket"  # its NICs hang off the sockets


@pytest.mark.parametrize("preset,fabric,pxn", [("dgx-a100", "fat-tree", True),
                                               ("dgx-a100", "rail", True),
                                               ("dgx-a100", "rail", False),
                                               ("dgx1-v100", "fat-tree", True),
                                               ("pcie-8gpu-2socket", "fat-tree", True)])
def test_flow_routes_are_each_flows_route_in_order(preset, fabric, pxn):
    """A phase's routes are assembled per flow from shared pieces (vectorised); each flow's
    slice must be exactly its own route, for flows inside and between nodes, repeated
    pairs included."""
    topo = build_topology(ClusterSpec(preset=preset, nodes=4, fabric=fabric, pxn=pxn,
                                      oversubscription=2, nics_per_leaf=8))
    rng = np.random.default_rng(7)
    src = rng.integers(0, topo.n_devices, 600)
    dst = (src + rng.integers(1, topo.n_devices, 600)) % topo.n_devices
    routes, starts, lengths = topo.flow_routes(src, dst)
    assert len(routes) == lengths.sum() and starts[0] == 0
    for s, d, a, n in zip(src, dst, starts, lengths):
        assert routes[a:a + n].tolist() == topo.route(int(s), int(d)).tolist()
