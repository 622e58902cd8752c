"""Which instances of a collective cost what another costs: lower one per class.

The planner prices a collective run by many groups at once (the tensor group of every node,
the context ring's pair of every rank), lowering each group and pricing the merged phases at
their busiest link (``dlsim.planner.estimate.Fabric``). Group classes are the groups equal up
to a move by whole nodes (``classes``). When a class's first group's lowered flows, moved to
another group of the class, cross links that match the first's position by position
(capacity, latency, hardware class, NVSwitch generation, and shared within the group where,
and only where, the first's are: ``dlsim.network.symmetry.same_routes``, for every instance
at once in ``moved_routes``), the moved group gets the same protocol and the same per-flow
figures: its lowering is the first's, moved. The groups whose moved routes differ (a pair
that crosses the spine where its class's first stays under one leaf) form classes of their
own (``split``), until every group is its class's first moved; then one lowering a class
gives every group's, and their merged phase is built from those (``move_phase``). If besides
no two groups' flows share a link, a merged phase's closed-form time
(``dlsim.network.analytical.batch_cost``: each link's bytes are its own flows', each flow's
bound its own route's) is the slowest group's, so the first groups' merged phases alone give
the figure of all, to the last bit. This holds for one algorithm; where ``auto`` chooses
among several, the other candidates' flows are not checked, so the caller prices every group.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import Phase, merge_phases

Classes = tuple[np.ndarray, np.ndarray, np.ndarray]  # (first, cls, offset)


def classes(devices: np.ndarray, per_node: int) -> Classes:
    """(first, cls, offset): the index of each class's first instance (ascending), each
    instance's class and its device offset from that first instance (whole nodes)."""
    base = devices[:, 0] // per_node * per_node
    _, cls = np.unique(devices - base[:, None], axis=0, return_inverse=True)
    return _numbered(np.ravel(cls), base)


def split(cls: np.ndarray, alike: np.ndarray, base: np.ndarray) -> Classes:
    """``classes`` after the instances that are not ``alike`` their class's first leave it,
    those of each class forming one new class (``base``: each instance's first node's first
    device)."""
    cls = cls.copy()
    unlike = np.flatnonzero(~alike)
    cls[unlike] = cls.max() + 1 + np.unique(cls[unlike], return_inverse=True)[1]
    return _numbered(cls, base)


def _numbered(labels: np.ndarray, base: np.ndarray) -> Classes:
    """Classes numbered by their first instance, with each instance's offset from it."""
    _, first, cls = np.unique(labels, return_index=True, return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cls = rank[np.ravel(cls)]
    first = first[order]
    return first, cls, base - base[first[cls]]


def moved_routes(topology: Topology, flows: list[tuple[np.ndarray, np.ndarray]],
                 cls: np.ndarray, offset: np.ndarray) -> tuple[np.ndarray, bool]:
    """(alike, disjoint): per instance, whether its class c's flows ``flows[c]`` (src, dst;
    no local flows), moved by its ``offset``, route like the originals; and whether no two
    instances share a link."""
    alike = np.ones(len(cls), dtype=bool)
    if not sum(len(s) for s, _ in flows):
        return alike, True  # no flow leaves its device: nothing to share or to price
    src, dst, owner = [], [], []
    for c, (s, d) in enumerate(flows):
        members = np.flatnonzero(cls == c)
        src.append((s[None, :] + offset[members, None]).ravel())
        dst.append((d[None, :] + offset[members, None]).ravel())
        owner.append(np.repeat(members, len(s)))
    links, starts, lengths = topology.flow_routes(np.concatenate(src), np.concatenate(dst))
    link_owner = np.repeat(np.concatenate(owner), lengths)
    edges = len(topology.edges)
    disjoint = len(np.unique(links)) == len(np.unique(link_owner * edges + links))
    at = 0
    for c, (s, _) in enumerate(flows):
        members = np.flatnonzero(cls == c)
        count, n = len(members), len(s)
        if n == 0:
            continue  # this class moves nothing between devices
        lens = lengths[at:at + count * n].reshape(count, n)
        same = (lens == lens[0]).all(axis=1)  # member 0 is the class's first
        width = int(lens[0].sum())
        rows = np.flatnonzero(same)
        mine = links[starts[at + rows * n][:, None] + np.arange(width)]
        at += count * n
        theirs = mine[0]
        same[rows] = np.logical_and.reduce([(attr[mine] == attr[theirs]).all(axis=1) for attr in (
            topology.capacity_Bps, topology.latency_s, topology.link_class,
            topology.nvswitch_generation)])
        # a member shares links where, and only where, its first does: its links and the
        # first's pair one to one
        _, code = np.unique(theirs, return_inverse=True)
        distinct = int(code.max()) + 1
        row = np.repeat(np.arange(len(rows)), width)
        pairs = np.unique((row * distinct + np.tile(np.ravel(code), len(rows))) * edges
                          + mine.ravel())
        own = np.unique(row * edges + mine.ravel())
        same[rows] &= ((np.bincount(pairs // (distinct * edges), minlength=len(rows))
                        == distinct)
                       & (np.bincount(own // edges, minlength=len(rows)) == distinct))
        alike[members] = same
    return alike, disjoint


def move_phase(phases: tuple[Phase, ...], cls: np.ndarray, offset: np.ndarray) -> Phase:
    """``merge_phases`` of every instance's phase, instance i's being its class's first's
    (``phases[cls[i]]``) moved by ``offset[i]`` devices, built without the copies."""
    alike = {(len(p.src), np.shape(p.size_bytes), p.latency_s is None, p.wire_factor is None,
              isinstance(p.latency_rounds, np.ndarray)) for p in phases}
    if len(alike) > 1:
        return merge_phases(tuple(replace(phases[c], src=phases[c].src + o,
                                          dst=phases[c].dst + o)
                                  for c, o in zip(cls, offset)))

    def each(arrays: list[Any]) -> np.ndarray:
        return np.stack(arrays)[cls].ravel()

    first = phases[cls[0]]
    return replace(
        first, src=(np.stack([p.src for p in phases])[cls] + offset[:, None]).ravel(),
        dst=(np.stack([p.dst for p in phases])[cls] + offset[:, None]).ravel(),
        size_bytes=each([p.size_bytes for p in phases]),
        latency_rounds=(each([p.latency_rounds for p in phases])
                        if isinstance(first.latency_rounds, np.ndarray)
                        else first.latency_rounds),
        latency_s=None if first.latency_s is None else each([p.latency_s for p in phases]),
        wire_factor=(None if first.wire_factor is None
                     else each([p.wire_factor for p in phases])))
