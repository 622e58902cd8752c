"""Cluster: a scenario's ``cluster`` block -> a Topology, and ranks -> devices (placement).

Three forms (DESIGN.md): a system preset on N nodes joined by a fabric; a device on
described nodes (``intra_node``: nvswitch, pcie or a link profile name; ``inter_node``: the
NIC link, one NIC per device); or a textbook topology with one link class.
"""

from __future__ import annotations

import networkx as nx
import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec
from dlsim.hardware import profiles as hardware
from dlsim.hardware.fabrics import (
    LinkSpec,
    add_link,
    add_node,
    fat_tree,
    fully_connected,
    leaf_spine,
    rail_fabric,
    ring,
    star,
    torus,
)
from dlsim.hardware.topology import Topology

FULLY_CONNECTED_MAX = 256  # N(N-1) directed links: past this a switch is what users mean


def _link(name: str, field: str, lanes: int = 1) -> LinkSpec:
    try:
        return LinkSpec.of(hardware.link(name), lanes)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, field=field) from None


def _device(name: str | None, field: str) -> hardware.DeviceProfile:
    if name is None:
        raise ScenarioError("name a device profile (see `dlsim list devices`).", field=field)
    try:
        return hardware.device(name)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, field=field) from None


def _fabric(g: nx.DiGraph, nics: list[str], spec: LinkSpec, cluster: ClusterSpec) -> None:
    if len(nics) < 2:
        return
    if cluster.fabric == "switch":
        g.add_node("fabric", kind="switch")
        for nic in nics:
            add_link(g, nic, "fabric", spec)
    elif cluster.fabric == "rail":
        per_node = len(nics) // cluster.nodes
        rail_fabric(g, [nics[i:i + per_node] for i in range(0, len(nics), per_node)], spec,
                    cluster.oversubscription, cluster.pxn)
    else:
        leaf_spine(g, nics, spec, cluster.nics_per_leaf, cluster.oversubscription)


def _textbook(c: ClusterSpec) -> Topology:
    # ClusterSpec's validator: a textbook topology has a link, a torus its dims, others devices
    topology, link, dims = c.topology, c.link, list(c.dims or ())
    n = c.devices if topology != "torus" else int(np.prod(dims))
    assert topology is not None and link is not None and n is not None
    # a textbook link is an abstract network link: NCCL charges it NET step latencies
    spec = LinkSpec("link", link.bandwidth_GBps * 1e9, link.bandwidth_GBps * 1e9,
                    link.latency_us * 1e-6, transport="net")
    if c.topology == "fully-connected" and n > FULLY_CONNECTED_MAX:
        raise ScenarioError(f"a fully-connected topology is limited to {FULLY_CONNECTED_MAX} "
                            f"devices (got {n}); use 'switch' for a non-blocking switch.",
                            field="cluster.devices")
    graph = {"ring": lambda: ring(n, spec), "switch": lambda: star(n, spec),
             "fully-connected": lambda: fully_connected(n, spec),
             "torus": lambda: torus(dims, spec),
             "fat-tree": lambda: fat_tree(n, spec, c.devices_per_switch, c.oversubscription),
             }[topology]()
    device = _device(c.device, "cluster.device") if c.device else None
    return Topology(graph, n, device, n, f"{topology} of {n} devices, "
                    f"{link.bandwidth_GBps:g} GB/s, {link.latency_us:g} us per link")


def _preset(c: ClusterSpec) -> Topology:
    assert c.preset is not None  # build_topology's branch
    try:
        s = hardware.system(c.preset)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, field="cluster.preset") from None
    device = hardware.device(s.device)
    dev_link = _link(s.device_link, "cluster.preset")
    host = _link(s.host_link, "cluster.preset")
    socket = _link(s.socket_link, "cluster.preset") if s.socket_link else None
    g: nx.DiGraph = nx.DiGraph()
    nics: list[str] = []
    n = s.devices_per_node
    shared = s.nvlink_domain_nodes > 1  # e.g. NVL72: trays of one rack share its NVSwitches
    for node in range(c.nodes):
        nics += add_node(g, node, node * n, n, s.intra_node, dev_link, host,
                         mesh=[(m.a, m.b, m.lanes) for m in s.mesh], torus_dims=s.torus_dims,
                         sockets=s.sockets, socket_link=socket,
                         per_pcie_switch=s.devices_per_pcie_switch, nics=s.nics_per_node,
                         domain=node // s.nvlink_domain_nodes if shared else None)
    if c.nodes > 1:
        if not s.nic_link:
            raise ScenarioError(f"system {s.name} has no NICs, so it cannot span "
                                f"{c.nodes} nodes; use nodes: 1.", field="cluster.nodes")
        fabric = _link(c.inter_node or s.nic_link, "cluster.inter_node")
        _fabric(g, nics, fabric, c)
    return Topology(g, c.nodes * n, device, n, f"{c.nodes} x {s.display_name}")


def _explicit(c: ClusterSpec) -> Topology:
    device = _device(c.device, "cluster.device")
    n = c.devices_per_node
    # ClusterSpec's validator: a described node has devices_per_node and intra_node
    assert n is not None and c.intra_node is not None
    host_name = device.pcie or "pcie4-x16"
    if c.intra_node in ("nvswitch", "nvlink"):
        if device.nvlink is None:
            raise ScenarioError(f"device {device.name} has no NVLink; use intra_node: pcie "
                                f"or a link profile name.", field="cluster.intra_node")
        dev_link, intra = _link(device.nvlink, "cluster.intra_node", device.nvlink_lanes), "switch"
    elif c.intra_node == "pcie":
        dev_link, intra = _link(host_name, "cluster.intra_node"), "pcie"
    else:
        dev_link, intra = _link(c.intra_node, "cluster.intra_node"), "switch"
    host = _link(host_name, "cluster.device")
    g: nx.DiGraph = nx.DiGraph()
    nics: list[str] = []
    multi = c.nodes > 1
    if multi and c.inter_node is None:
        raise ScenarioError("a cluster of several nodes needs 'inter_node', the NIC link "
                            "(e.g. ib-hdr).", field="cluster.inter_node")
    for node in range(c.nodes):
        nics += add_node(g, node, node * n, n, intra, dev_link, host,
                         per_pcie_switch=1, nics=n if multi else 0)
    if multi and c.inter_node is not None:  # checked above: several nodes need it
        _fabric(g, nics, _link(c.inter_node, "cluster.inter_node"), c)
    return Topology(g, c.nodes * n, device, n,
                    f"{c.nodes} node(s) x {n} {device.display_name} ({c.intra_node})")


def build_topology(cluster: ClusterSpec) -> Topology:
    if cluster.topology is not None:
        topology = _textbook(cluster)
    elif cluster.preset is not None:
        topology = _preset(cluster)
    else:
        topology = _explicit(cluster)
    if cluster.calibration is not None:
        topology.device = _calibrated(topology.device, cluster)
    return topology


def _calibrated(device: hardware.DeviceProfile | None,
                cluster: ClusterSpec) -> hardware.DeviceProfile:
    """The device profile overlaid with the scenario's calibration file (looked up, never
    re-measured)."""
    from dlsim.calibration import store  # torch-free; only scenarios that name one load it

    if device is None:
        raise ScenarioError("a calibration overlays a device profile; name the device.",
                            field="cluster.device")
    field = "cluster.calibration"
    assert cluster.calibration is not None  # build_topology calls this only with one
    try:
        calibration = store.load(cluster.calibration)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, field=field) from None
    return store.overlay(device, calibration, cluster.force_calibration, field=field)


def placement(n_ranks: int, topology: Topology, policy: str | list[int]) -> np.ndarray:
    """Device of each rank: ``pack`` fills socket by socket and node by node; ``spread``
    deals ranks round-robin over the (node, socket) domains, so consecutive ranks land on
    different nodes, or on different sockets of one node; a list gives rank i's device."""
    if n_ranks > topology.n_devices:
        raise ScenarioError(f"the plan needs {n_ranks} devices but the cluster has "
                            f"{topology.n_devices}.", field="parallelism.data")
    if not isinstance(policy, str):
        return _explicit_placement(n_ranks, topology.n_devices, policy)
    if policy == "pack":
        return np.arange(n_ranks)
    graph = topology.graph
    domains: dict[tuple[int, int], list[int]] = {}
    for d in range(topology.n_devices):
        key = (graph.nodes[d].get("socket", 0), graph.nodes[d].get("node", 0))
        domains.setdefault(key, []).append(d)
    # socket-major keys: one device from each node's socket 0, then each node's socket 1...
    dealt = [d for column in zip(*(domains[k] for k in sorted(domains))) for d in column]
    return np.array(dealt[:n_ranks])


def _explicit_placement(n_ranks: int, n_devices: int, devices: list[int]) -> np.ndarray:
    """``placement: [3, 1, ...]``: rank i runs on device devices[i] (global device ids,
    node-major), each device at most once."""
    chosen = np.asarray(devices[:n_ranks], dtype=int)
    if len(chosen) < n_ranks:
        raise ScenarioError(f"the plan has {n_ranks} ranks but placement lists "
                            f"{len(devices)} devices.", field="placement")
    if len(np.unique(chosen)) < len(chosen) or chosen.min() < 0 or chosen.max() >= n_devices:
        raise ScenarioError(f"placement must list distinct device ids in 0..{n_devices - 1}; "
                            f"got {devices[:n_ranks]}.", field="placement")
    return chosen
