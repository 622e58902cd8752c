"""Fabric builders: the networkx graphs of textbook topologies, of one node from a hardware
profile, and of the fabrics that join nodes.

Nodes: devices are the integers 0..N-1 (global device ids, node-major); everything else is a
string such as ``"n3/nvswitch"`` (``"n3/switch"`` when the node's links are not NVLink),
``"n3/nic0"``, ``"leaf2"`` or ``"spine0"``. Every physical full-duplex link is two directed
edges (``add_link``), each with its own ``bandwidth_Bps`` (so WiFi and LTE can be
asymmetric), ``latency_s`` and NCCL ``transport`` class. The graph-level flags a builder sets
(``device_nics``, ``device_transit``, ``pxn``, ``ecmp_by``) and the ``ecmp`` group of
interchangeable switches tell ``dlsim.hardware.topology.Topology`` how to route.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import networkx as nx
import numpy as np

from dlsim.hardware.profiles import LinkProfile, Transport


@dataclass(frozen=True)
class LinkSpec:
    """Bandwidth per direction (up: from the lower tier, down: towards it), latency and
    NCCL's hardware class; links built by hand rather than from a profile are NET."""

    name: str
    up_Bps: float
    down_Bps: float
    latency_s: float
    transport: Transport = "net"
    nvswitch_generation: int = 0  # of the NVSwitch it plugs into; 0: none (LinkProfile)

    @classmethod
    def of(cls, profile: LinkProfile, lanes: int = 1) -> LinkSpec:
        return cls(profile.name, profile.up_Bps * lanes, profile.down_Bps * lanes,
                   profile.latency_s, profile.transport, profile.nvswitch_generation or 0)


def add_link(g: nx.DiGraph, lower: object, upper: object, spec: LinkSpec) -> None:
    """Join ``lower`` (device side) and ``upper`` (network side) with a full-duplex link."""
    g.add_edge(lower, upper, bandwidth_Bps=spec.up_Bps, latency_s=spec.latency_s, link=spec.name,
               transport=spec.transport, nvswitch_generation=spec.nvswitch_generation)
    g.add_edge(upper, lower, bandwidth_Bps=spec.down_Bps, latency_s=spec.latency_s,
               link=spec.name, transport=spec.transport,
               nvswitch_generation=spec.nvswitch_generation)


def _devices(g: nx.DiGraph, first: int, count: int, node: int) -> list[int]:
    ids = list(range(first, first + count))
    g.add_nodes_from(ids, kind="device", node=node)
    return ids


# --- textbook topologies -------------------------------------------------------------------

def ring(n: int, spec: LinkSpec) -> nx.DiGraph:
    g: nx.DiGraph = nx.DiGraph()
    _devices(g, 0, n, 0)
    for i in range(n if n > 2 else n - 1):
        add_link(g, i, (i + 1) % n, spec)
    return g


def star(n: int, spec: LinkSpec) -> nx.DiGraph:
    """All devices on one non-blocking switch."""
    g: nx.DiGraph = nx.DiGraph()
    _devices(g, 0, n, 0)
    g.add_node("switch", kind="switch")
    for i in range(n):
        add_link(g, i, "switch", spec)
    return g


def fully_connected(n: int, spec: LinkSpec) -> nx.DiGraph:
    g: nx.DiGraph = nx.DiGraph()
    _devices(g, 0, n, 0)
    for i in range(n):
        for j in range(i + 1, n):
            add_link(g, i, j, spec)
    return g


def torus(dims: list[int], spec: LinkSpec, first: int = 0, g: nx.DiGraph | None = None,
          node: int = 0) -> nx.DiGraph:
    """A wrap-around torus; device ids are row-major over ``dims`` starting at ``first``."""
    g = nx.DiGraph() if g is None else g
    n = int(np.prod(dims))
    _devices(g, first, n, node)
    g.graph.setdefault("tori", []).append((first, tuple(dims)))  # for per-dimension rings
    coords = np.array(np.unravel_index(np.arange(n), dims)).T
    for idx, c in enumerate(coords):
        for axis, size in enumerate(dims):
            if size < 2 or (size == 2 and c[axis] == 1):
                continue  # a dimension of 2 has one link between its two members
            nb = c.copy()
            nb[axis] = (c[axis] + 1) % size
            add_link(g, first + idx, first + int(np.ravel_multi_index(nb, dims)), spec)
    return g


def leaf_spine(g: nx.DiGraph, endpoints: Sequence[object], spec: LinkSpec, per_leaf: int,
               oversubscription: float) -> None:
    """Join ``endpoints`` with a two-tier leaf/spine (folded Clos) fabric.

    Each leaf takes ``per_leaf`` endpoints; there are ceil(per_leaf / oversubscription)
    spines and every leaf has one ``spec`` link to every spine, so the oversubscription is
    downlinks : uplinks at each leaf. One leaf needs no spine.
    """
    leaves = -(-len(endpoints) // per_leaf)
    for i, ep in enumerate(endpoints):
        g.add_node(f"leaf{i // per_leaf}", kind="switch")
        add_link(g, ep, f"leaf{i // per_leaf}", spec)
    if leaves == 1:
        return
    spines = max(1, int(np.ceil(per_leaf / oversubscription)))
    for s in range(spines):
        g.add_node(f"spine{s}", kind="switch", ecmp="spine")
        for leaf in range(leaves):
            add_link(g, f"leaf{leaf}", f"spine{s}", spec)


def rail_fabric(g: nx.DiGraph, nics_by_node: list[list[str]], spec: LinkSpec,
                oversubscription: float, pxn: bool = True) -> None:
    """A rail-optimised fabric: NIC k of every node connects to rail switch k, and the rails
    are joined by ceil(nodes / oversubscription) spines, each with one ``spec`` link to
    every rail (NVIDIA DGX SuperPOD reference architecture: each GPU's NIC on its own rail
    leaf). Traffic between the k-th NICs of two nodes crosses one switch, its rail; traffic
    between rails goes rail -> spine -> rail, the spine picked by the destination node.
    GPUs forward nothing (``device_transit`` False) except under ``pxn``, where a GPU hands
    a cross-rail message over NVLink to its node's GPU on the destination's rail
    (``Topology._pxn_proxy``); without PXN it goes rail -> spine -> rail."""
    rails = len(nics_by_node[0])
    for k in range(rails):
        g.add_node(f"rail{k}", kind="switch")
        for nics in nics_by_node:
            add_link(g, nics[k], f"rail{k}", spec)
    g.graph["device_transit"] = False
    g.graph["pxn"] = pxn
    # D-mod-K on a rail: a rail switch's ports are the nodes, so the spine is picked by the
    # destination's node (by its device id every flow into GPU k would pick the same spine)
    g.graph["ecmp_by"] = "node"
    if rails == 1:
        return
    spines = max(1, int(np.ceil(len(nics_by_node) / oversubscription)))
    for s in range(spines):
        g.add_node(f"spine{s}", kind="switch", ecmp="spine")
        for k in range(rails):
            add_link(g, f"rail{k}", f"spine{s}", spec)


def fat_tree(n: int, spec: LinkSpec, per_leaf: int, oversubscription: float) -> nx.DiGraph:
    g: nx.DiGraph = nx.DiGraph()
    leaf_spine(g, _devices(g, 0, n, 0), spec, per_leaf, oversubscription)
    return g


# --- systems: one node from a profile, many nodes on a fabric ------------------------------

def add_node(g: nx.DiGraph, node: int, first: int, n: int, intra: str, device_link: LinkSpec,
             host_link: LinkSpec, *, mesh: Sequence[tuple[int, int, int]] = (),
             torus_dims: Sequence[int] = (), sockets: int = 1, socket_link: LinkSpec | None = None,
             per_pcie_switch: int = 1, nics: int = 0, domain: int | None = None) -> list[str]:
    """Add one node's devices and internal links; return its NIC node names.

    NIC j hangs off the PCIe switch that serves device group j (switch, mesh and torus
    nodes) or off socket j mod sockets (PCIe nodes), over ``host_link``. A switch node of
    NVLink ``domain`` k joins the domain's shared NVSwitch ``"d<k>/nvswitch"`` instead of
    its own, and its devices are marked with the domain (Topology keeps routes between
    nodes of one domain on NVLink).
    """
    p = f"n{node}/"
    if intra == "torus":
        torus(list(torus_dims), device_link, first=first, g=g, node=node)
        devs = list(range(first, first + n))
    else:
        devs = _devices(g, first, n, node)
    if intra == "switch":
        hub = p + ("nvswitch" if device_link.transport == "nvlink" else "switch")
        if domain is not None:
            hub = f"d{domain}/nvswitch"
            for d in devs:
                g.nodes[d]["domain"] = domain
        g.add_node(hub, kind="switch")  # an NVSwitch, or a Wi-Fi access point / LTE cell
        for d in devs:
            add_link(g, d, hub, device_link)
    elif intra == "mesh":
        for a, b, lanes in mesh:
            add_link(g, first + a, first + b, replace(device_link,
                                                      up_Bps=device_link.up_Bps * lanes,
                                                      down_Bps=device_link.down_Bps * lanes))
    nic_names = [p + f"nic{j}" for j in range(nics)]
    g.add_nodes_from(nic_names, kind="nic")
    if intra == "pcie":
        switches = n // per_pcie_switch
        for s in range(sockets):
            g.add_node(p + f"socket{s}", kind="socket")
            if s:
                assert socket_link is not None, "a node of several sockets needs socket_link"
                add_link(g, p + "socket0", p + f"socket{s}", socket_link)
        for k in range(switches):
            sw = p + f"pcie{k}"
            g.add_node(sw, kind="switch")
            add_link(g, sw, p + f"socket{k * sockets // switches}", host_link)
            for d in devs[k * per_pcie_switch:(k + 1) * per_pcie_switch]:
                g.nodes[d]["socket"] = k * sockets // switches
                add_link(g, d, sw, device_link)
        for j, nic in enumerate(nic_names):
            add_link(g, p + f"socket{j % sockets}", nic, host_link)
    elif nics:
        group = max(1, n // nics)
        for j, nic in enumerate(nic_names):
            sw = p + f"pcie{j}"
            g.add_node(sw, kind="switch")
            add_link(g, sw, nic, host_link)
            for d in devs[j * group:(j + 1) * group]:
                g.nodes[d]["nic"] = j
                add_link(g, d, sw, host_link)
        # each device has one NIC of its own, the nearest way out of the node whatever the
        # destination, so routes between nodes are three cached legs (Topology.route)
        g.graph["device_nics"] = True
    return nic_names
