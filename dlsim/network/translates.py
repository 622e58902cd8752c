"""Which instances of a collective cost what another costs: price one per class.

The planner prices a collective run by many groups at once (the tensor group of every node,
the context ring's pair of every rank), lowering each group and pricing the merged phases at
their busiest link (``dlsim.planner.estimate.Fabric``). Group classes are the groups equal up
to a move by whole nodes (``classes``). When a class's first group's lowered flows, moved to
each other group of the class, cross links that match the first's position by position
(capacity, latency, hardware class, NVSwitch generation, and shared where, and only where, the
first's are: ``dlsim.network.symmetry.same_routes`` for every instance at once), the moved
group gets the same protocol and the same per-flow figures; if besides no two groups' flows
share a link, a merged phase's closed-form time (``dlsim.network.analytical.batch_cost``: each
link's bytes are its own flows', each flow's bound its own route's) is the slowest group's. So
lowering one group of each class gives the figure of lowering all, to the last bit
(``moves_exactly``). This holds for one algorithm; where ``auto`` chooses among several, the
other candidates' flows are not checked, so the caller prices every group.
"""

from __future__ import annotations

import numpy as np

from dlsim.hardware.topology import Topology


def classes(devices: np.ndarray, per_node: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first, cls, offset): the index of each class's first instance (ascending), each
    instance's class and its device offset from that first instance (whole nodes)."""
    base = devices[:, 0] // per_node * per_node
    _, first, cls = np.unique(devices - base[:, None], axis=0, return_index=True,
                              return_inverse=True)
    order = np.argsort(first)
    rank = np.empty_like(order)
    rank[order] = np.arange(len(order))
    cls = rank[np.ravel(cls)]
    first = first[order]
    return first, cls, base - base[first[cls]]


def moves_exactly(topology: Topology, flows: list[tuple[np.ndarray, np.ndarray]],
                  cls: np.ndarray, offset: np.ndarray) -> bool:
    """Whether class c's flows ``flows[c]`` (src, dst; no local flows), moved by each
    instance's ``offset``, route like the originals and no two instances share a link."""
    if not sum(len(s) for s, _ in flows):
        return True  # no flow leaves its device: nothing to share or to price
    src, dst, owner = [], [], []
    for c, (s, d) in enumerate(flows):
        members = np.flatnonzero(cls == c)
        src.append((s[None, :] + offset[members, None]).ravel())
        dst.append((d[None, :] + offset[members, None]).ravel())
        owner.append(np.repeat(members, len(s)))
    links, starts, lengths = topology.flow_routes(np.concatenate(src), np.concatenate(dst))
    flow_owner = np.concatenate(owner)
    link_owner = np.repeat(flow_owner, lengths)
    edges = len(topology.edges)
    if len(np.unique(links)) != len(np.unique(link_owner * edges + links)):
        return False  # two instances share a link
    at = 0
    for c, (s, _) in enumerate(flows):
        count = int((cls == c).sum())
        n = len(s)
        if n == 0:
            continue  # this class moves nothing between devices
        lens = lengths[at:at + count * n].reshape(count, n)
        if not (lens == lens[0]).all():
            return False
        width = int(lens[0].sum())
        first = starts[at]
        mine = links[first:first + count * width].reshape(count, width)
        at += count * n
        theirs = mine[0]
        if not all((attr[mine] == attr[theirs]).all() for attr in (
                topology.capacity_Bps, topology.latency_s, topology.link_class,
                topology.nvswitch_generation)):
            return False
        _, code = np.unique(theirs, return_inverse=True)
        distinct = int(code.max()) + 1
        row = np.repeat(np.arange(count), width)
        matched = len(np.unique((row * distinct + np.tile(np.ravel(code), count)) * edges
                                + mine.ravel()))
        own = len(np.unique(row * edges + mine.ravel()))
        if not matched == own == distinct * count:
            return False  # a member shares links where its first does not
    return True
