"""Pricing one group per class of link-disjoint translates (``dlsim.network.translates``)
gives the planner's collective times to the last bit of pricing every group."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec
from dlsim.parallel.grid import Grid
from dlsim.planner.estimate import Fabric, groups_of

CLUSTERS = {
    "fat-tree": ClusterSpec(preset="dgx-a100", nodes=8, nics_per_leaf=16, oversubscription=2),
    "rail": ClusterSpec(preset="dgx-a100", nodes=8, fabric="rail", oversubscription=2),
    "h100": ClusterSpec(preset="dgx-h100", nodes=8),
    "dgx-1 mesh": ClusterSpec(preset="dgx1-v100", nodes=4),
}
TOPOLOGIES = {name: build_topology(spec) for name, spec in CLUSTERS.items()}


@settings(max_examples=40, deadline=None)
@given(cluster=st.sampled_from(sorted(CLUSTERS)), tensor=st.sampled_from([1, 2, 4, 8]),
       context=st.sampled_from([1, 2, 4]), pipeline=st.sampled_from([1, 2, 4]),
       policy=st.sampled_from(["pack", "spread"]),
       size=st.floats(1e3, 1e9), protocol=st.sampled_from(["auto", "Simple", "LL"]))
def test_one_group_a_class_prices_every_group(cluster, tensor, context, pipeline, policy,
                                              size, protocol):
    topology = TOPOLOGIES[cluster]
    data = topology.n_devices // (tensor * context * pipeline)
    groups = groups_of(Grid(data, tensor, pipeline, context))
    fast, slow = Fabric(topology, protocol), Fabric(topology, protocol)
    slow.symmetric = False
    n = topology.n_devices
    for op, algorithm, members in (("allreduce", "ring", groups.tensor),
                                   ("send", "direct", groups.rings),
                                   ("send", "direct", groups.pipeline),
                                   ("allgather", "ring", groups.expert_data),
                                   ("allreduce", "auto", groups.expert_data)):
        if members:
            assert (fast.time_s(op, algorithm, size, members, n, policy)
                    == slow.time_s(op, algorithm, size, members, n, policy))


def _lowerings(groups: tuple[tuple[int, ...], ...], op: str = "send",
               algorithm: str = "direct") -> tuple[int, float, float]:
    """(groups lowered, time, time with every group lowered) on the fat-tree: under NCCL's
    protocols each lowered group's protocol choice is its own (``Fabric._solo``)."""
    topology = TOPOLOGIES["fat-tree"]
    fast, slow = Fabric(topology), Fabric(topology)
    slow.symmetric = False
    time_s = fast.time_s(op, algorithm, 1e6, groups, 64, "pack")
    return len(fast._solo), time_s, slow.time_s(op, algorithm, 1e6, groups, 64, "pack")


def test_translates_are_lowered_once_a_class_whether_or_not_they_share_links():
    """Node-local tensor groups are one class (one lowering); the context rings' pairs inside
    each node are eight classes (the pair of positions i, i+1 and the wrap-around pair);
    GPU i of node n sending to GPU i of node n + 2 (two nodes a leaf) is sixteen classes of
    translates (the last two nodes' wrap around to nodes 0 and 1) whose routes share
    leaf-spine links, priced merged; node n to node n + 1 stays under one leaf for even n
    and crosses the spine for odd n, and the last node's sends wrap around to node 0, so
    its pairs' 16 classes of translates split into 24 that route alike. Each is the time of
    lowering every group."""
    for groups, lowered in ((groups_of(Grid(8, 8, 1)).tensor, 1),
                            (groups_of(Grid(8, 1, 1, 8)).rings, 8),
                            (tuple((r, (r + 16) % 64) for r in range(64)), 16),
                            (tuple((r, (r + 8) % 64) for r in range(64)), 24)):
        op, algorithm = ("allreduce", "ring") if len(groups[0]) == 8 else ("send", "direct")
        count, fast, slow = _lowerings(groups, op, algorithm)
        assert (count, fast) == (lowered, slow)
