"""Topology: a built networkx graph of devices, switches, NICs and sockets, and routing on it.

The graphs come from ``dlsim.hardware.fabrics`` (their node names and flags are described
there). Edge ids index the numpy arrays the network model uses.

Routing is shortest-hop (breadth first, deterministic). Switches that are interchangeable
(the spines of a leaf/spine fabric) carry an ``ecmp`` group name; a route through one of them
takes member ``dst mod k`` of the group: the D-mod-K routing of InfiniBand fat trees (Zahavi
et al., "D-Mod-K Routing Providing Non-Blocking Traffic for Shift Permutations on Real Life
Fat Trees", 2010), under which ring-like shift patterns never share a spine link.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import get_args

import networkx as nx
import numpy as np

from dlsim.hardware.profiles import DeviceProfile, Transport

# NCCL's hardware classes, in the order of Topology.link_class indices
LINK_CLASSES: tuple[Transport, ...] = get_args(Transport)


@dataclass
class Topology:
    """A built graph plus the arrays and route cache the network model needs."""

    graph: nx.DiGraph
    n_devices: int
    device: DeviceProfile | None
    devices_per_node: int
    description: str
    edges: list[tuple[object, object]] = field(init=False)
    capacity_Bps: np.ndarray = field(init=False)
    latency_s: np.ndarray = field(init=False)
    link_class: np.ndarray = field(init=False)
    # per edge: the NVSwitch generation it plugs into, 0 for none (NVLS needs 3 or later)
    nvswitch_generation: np.ndarray = field(init=False)
    _edge_id: dict[tuple[object, object], int] = field(init=False, repr=False)
    _routes: dict[tuple[int, int], np.ndarray] = field(init=False, repr=False)
    _flow_routes: dict[tuple[bytes, bytes], tuple[np.ndarray, np.ndarray, np.ndarray]] = field(
        init=False, repr=False)
    _ecmp: dict[str, list[object]] = field(init=False, repr=False)
    _rail_gpu: dict[tuple[int, int], int] = field(init=False, repr=False)
    _legs: dict[tuple[int, bool], tuple[np.ndarray, object]] = field(init=False, repr=False)
    _fabric_paths: dict[tuple[object, object], list[object]] = field(init=False, repr=False)
    _fabric_ids: dict[tuple[object, ...], np.ndarray] = field(init=False, repr=False)
    _node_of: np.ndarray = field(init=False, repr=False)
    _nic_of: np.ndarray = field(init=False, repr=False)
    _domain_of: np.ndarray = field(init=False, repr=False)
    _ecmp_of: dict[object, str] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.edges = list(self.graph.edges)
        self._edge_id = {e: i for i, e in enumerate(self.edges)}
        self.capacity_Bps = np.array([self.graph.edges[e]["bandwidth_Bps"] for e in self.edges])
        self.latency_s = np.array([self.graph.edges[e]["latency_s"] for e in self.edges])
        self.link_class = np.array([LINK_CLASSES.index(self.graph.edges[e]["transport"])
                                    for e in self.edges], dtype=int)
        self.nvswitch_generation = np.array(
            [self.graph.edges[e].get("nvswitch_generation", 0) for e in self.edges], dtype=int)
        self._routes = {}
        self._flow_routes = {}
        self._legs = {}
        self._fabric_paths = {}
        self._fabric_ids = {}
        self._ecmp = {}
        self._ecmp_of = {}
        for node, attrs in self.graph.nodes(data=True):
            group = attrs.get("ecmp")
            if group is not None:
                self._ecmp.setdefault(group, []).append(node)
                self._ecmp_of[node] = group
        # each device's node and own NIC (-1: none), read per route (the graph's node views
        # are slow); under PXN, the first GPU of each node on each rail
        devices = [self.graph.nodes[d] if d in self.graph else {}
                   for d in range(self.n_devices)]
        self._node_of = np.array([data.get("node", d) for d, data in enumerate(devices)])
        self._nic_of = np.array([data.get("nic", -1) for data in devices])
        # each device's NVLink domain: its node, unless nodes share NVSwitches (NVL72)
        self._domain_of = np.array([data.get("domain", node)
                                    for data, node in zip(devices, self._node_of)])
        self._rail_gpu = {}
        if self.graph.graph.get("pxn"):
            for d in np.flatnonzero(self._nic_of >= 0):
                self._rail_gpu.setdefault((self._node_of[d], self._nic_of[d]), int(d))

    def route(self, src: int, dst: int) -> np.ndarray:
        """Edge ids of the path from device ``src`` to device ``dst`` (cached)."""
        key = (src, dst)
        cached = self._routes.get(key)
        if cached is not None:
            return cached
        proxy = self._pxn_proxy(src, dst)
        if proxy is not None:
            ids = np.concatenate((self.route(src, proxy), self.route(proxy, dst)))
        elif self._between_nodes(src, dst):
            ids = self._node_to_node(src, dst)
        else:
            ids = self._edge_ids(self._ecmp_path(self._path(src, dst), dst))
        self._routes[key] = ids
        return ids

    def _edge_ids(self, path: list[object]) -> np.ndarray:
        return np.fromiter((self._edge_id[(a, b)] for a, b in zip(path, path[1:])),
                           dtype=np.int64, count=len(path) - 1)

    def _ecmp_path(self, path: list[object], dst: int) -> list[object]:
        """``path`` with each interchangeable switch replaced by member ``pick mod k`` of
        its group, ``pick`` the destination device (or its node: ``ecmp_by`` node)."""
        if not self._ecmp:
            return path
        pick = self._node_of[dst] if self.graph.graph.get("ecmp_by") == "node" else dst
        out = list(path)
        for i, node in enumerate(path):
            group = self._ecmp_of.get(node)
            if group is not None:
                members = self._ecmp[group]
                out[i] = members[pick % len(members)]
        return out

    def _path(self, src: object, dst: object) -> list[object]:
        """Shortest-hop node path; where devices do not forward (``device_transit`` False),
        one that passes through no device."""
        g = self.graph
        path = _short_path(g, src, dst) or nx.bidirectional_shortest_path(g, src, dst)
        if not g.graph.get("device_transit", True) and any(
                g.nodes[v].get("kind") == "device" for v in path[1:-1]):
            path = nx.bidirectional_shortest_path(nx.subgraph_view(
                g, filter_node=lambda v: v in (src, dst) or g.nodes[v].get("kind") != "device"),
                src, dst)
        return path

    def _between_nodes(self, src: int, dst: int) -> bool:
        return (self.graph.graph.get("device_nics", False)
                and self._domain_of[src] != self._domain_of[dst])

    def _node_to_node(self, src: int, dst: int) -> np.ndarray:
        """A route between nodes from cached legs: the source's path out through its NIC to
        the fabric switch, the fabric between the two switches (spines resolved for this
        destination), the destination's path in from its switch. Every route between nodes
        passes NICs and shortest paths are made of shortest legs, so this is the route a
        search over the whole graph finds (the tests check it on every system preset), in
        a few lookups instead of a search per device pair: a 1,024-GPU all-to-all routes a
        million pairs."""
        up, out_switch = self._leg(src, outward=True)
        down, in_switch = self._leg(dst, outward=False)
        return np.concatenate((up, self._middle(out_switch, in_switch, dst), down))

    def _middle(self, out_switch: object, in_switch: object, dst: int) -> np.ndarray:
        """Edge ids across the fabric between two switches, spines picked for ``dst``."""
        base = self._fabric_paths.get((out_switch, in_switch))
        if base is None:
            base = self._fabric_paths[(out_switch, in_switch)] = (
                [out_switch] if out_switch == in_switch else self._path(out_switch, in_switch))
        middle = self._ecmp_path(base, dst)
        key = tuple(middle)
        ids = self._fabric_ids.get(key)
        if ids is None:
            ids = self._fabric_ids[key] = self._edge_ids(middle)
        return ids

    def _leg(self, device: int, outward: bool) -> tuple[np.ndarray, object]:
        """Edge ids from ``device`` through its own NIC to the fabric switch beyond it
        (outward) or back, and that switch."""
        key = (device, outward)
        cached = self._legs.get(key)
        if cached is None:
            node = self._node_of[device]
            nic = f"n{node}/nic{self._nic_of[device]}"
            switch = next(v for v in self.graph.succ[nic] if not str(v).startswith(f"n{node}/"))
            leg = self._path(device, nic) + [switch]
            cached = self._legs[key] = (self._edge_ids(leg if outward else leg[::-1]), switch)
        return cached

    def _pxn_proxy(self, src: int, dst: int) -> int | None:
        """PXN (NCCL 2.12+, on unless NCCL_PXN_DISABLE=1): a message for a GPU of another
        node whose NIC sits on another rail first crosses NVLink to the GPU of its own node
        that shares the destination's rail, and leaves through that GPU's NIC, so it never
        crosses a spine (NVIDIA, "Doubling all2all Performance with NCCL 2.12", 2022).
        None where the route is direct."""
        if (not self._rail_gpu or self._domain_of[src] == self._domain_of[dst]
                or self._nic_of[src] == self._nic_of[dst]):
            return None
        return self._rail_gpu.get((self._node_of[src], self._nic_of[dst]))

    def flow_routes(self, src: np.ndarray, dst: np.ndarray
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Routes of flows ``src[i] -> dst[i]`` (src != dst) as one array of edge ids, with
        each flow's first index into it and its length (for numpy ``reduceat``); cached per
        pattern, since a step's buckets and a ring's rounds send the same one again."""
        key = (np.asarray(src).tobytes(), np.asarray(dst).tobytes())
        cached = self._flow_routes.get(key)
        if cached is not None:
            return cached
        src, dst = np.asarray(src, dtype=np.int64), np.asarray(dst, dtype=np.int64)
        composed = self._composable(src, dst)
        parts = []
        if composed.any():  # between nodes: out-leg, fabric, in-leg, each built once
            s_c, d_c = src[composed], dst[composed]
            ups, up_at = np.unique(s_c, return_inverse=True)
            downs, down_at = np.unique(d_c, return_inverse=True)
            out_legs = [self._leg(int(u), outward=True) for u in ups]
            in_legs = [self._leg(int(u), outward=False) for u in downs]
            switches = {sw: i for i, sw in enumerate(dict.fromkeys(
                [sw for _, sw in out_legs] + [sw for _, sw in in_legs]))}
            out_code = np.array([switches[sw] for _, sw in out_legs])[up_at]
            in_code = np.array([switches[sw] for _, sw in in_legs])[down_at]
            node = self.graph.graph.get("ecmp_by") == "node"
            pick = self._node_of[d_c] if node else d_c
            triples, first, mid_at = np.unique(
                np.stack((out_code, in_code, pick), axis=1), axis=0, return_index=True,
                return_inverse=True)
            by_code = list(switches)
            middles = [self._middle(by_code[a], by_code[b], int(d_c[f]))
                       for (a, b, _), f in zip(triples, first)]
            for pieces, at in (([leg for leg, _ in out_legs], up_at), (middles, mid_at),
                               ([leg for leg, _ in in_legs], down_at)):
                parts.append((pieces, np.flatnonzero(composed), np.ravel(at)))
        rest = np.flatnonzero(~composed)
        if len(rest):
            parts.insert(0, ([self.route(int(a), int(b)) for a, b in zip(src[rest], dst[rest])],
                             rest, np.arange(len(rest))))
        self._flow_routes[key] = _concatenate_per_flow(parts, len(src))
        return self._flow_routes[key]

    def _composable(self, src: np.ndarray, dst: np.ndarray) -> np.ndarray:
        """Flows whose route is three cached legs: between nodes, and (under PXN) on the
        same rail, where no GPU hands the message over."""
        if not self.graph.graph.get("device_nics", False):
            return np.zeros(len(src), dtype=bool)
        between = self._domain_of[src] != self._domain_of[dst]
        if self._rail_gpu:
            between &= self._nic_of[src] == self._nic_of[dst]
        return between

    def device_peers(self, devices: np.ndarray) -> list[np.ndarray] | None:
        """For each of ``devices``, the positions in ``devices`` of those it has a direct
        link to (a ring's, torus' or mesh's neighbours); None when the devices only meet
        through switches, where every pair is equally close."""
        position = {int(d): i for i, d in enumerate(devices)}
        peers = [np.array(sorted(position[v] for v in self.graph.successors(int(d))
                                 if v in position), dtype=int) for d in devices]
        return peers if any(len(p) for p in peers) else None

    def link_label(self, edge_id: int | np.integer) -> str:
        a, b = self.edges[edge_id]
        return f"{a}->{b}"


def _concatenate_per_flow(parts: list[tuple[list[np.ndarray], np.ndarray, np.ndarray]],
                          flows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per flow, the concatenation of its pieces, in the order ``parts`` lists them, as
    (edge ids, each flow's start, each flow's length). A part is (pieces, the flows it
    covers, the piece each of those flows takes)."""
    lengths = np.zeros(flows, dtype=np.int64)
    sizes = []
    for pieces, flows_in, at in parts:
        size = np.fromiter(map(len, pieces), dtype=np.int64, count=len(pieces))[at]
        lengths[flows_in] += size
        sizes.append(size)
    starts = np.concatenate(([0], np.cumsum(lengths)[:-1])).astype(np.int64)
    out = np.empty(int(lengths.sum()), dtype=np.int64)
    filled = starts.copy()
    for (pieces, flows_in, at), size in zip(parts, sizes):
        if not size.sum():
            continue
        flat = np.concatenate(pieces)
        offset = np.concatenate(([0], np.cumsum([len(x) for x in pieces])[:-1])).astype(np.int64)
        k = np.arange(size.sum()) - np.repeat(np.cumsum(size) - size, size)
        out[np.repeat(filled[flows_in], size) + k] = flat[np.repeat(offset[at], size) + k]
        filled[flows_in] += size
    return out, starts, lengths


def _short_path(g: nx.DiGraph, src: object, dst: object) -> list[object] | None:
    """A one- or two-hop path found by lookup, or None.

    Breadth-first search through a switch scans all of the switch's ports, which makes
    routing quadratic on large star-like graphs; most routes are one or two hops.
    """
    succ = g.succ
    if dst in succ[src]:
        return [src, dst]
    for mid in succ[src]:
        if dst in succ[mid]:
            return [src, mid, dst]
    return None
