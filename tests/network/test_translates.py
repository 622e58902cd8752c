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


def test_translates_are_priced_once_and_shared_links_are_not():
    """Node-local tensor groups are one class (one lowering); the context rings' pairs inside
    each node are eight classes (the pair of positions i, i+1 and the wrap-around pair);
    node-to-node sends whose routes meet on the leaf-spine fabric are all lowered, and their
    time is the merged one."""
    topology = TOPOLOGIES["fat-tree"]
    fabric = Fabric(topology)
    tensor = groups_of(Grid(8, 8, 1)).tensor
    assert len(fabric._plans("allreduce", "ring", 1e6, tensor, 64, "pack")) == 1
    rings = groups_of(Grid(8, 1, 1, 8)).rings
    assert len(rings) == 64
    assert len(fabric._plans("send", "direct", 1e6, rings, 64, "pack")) == 8
    crossing = tuple((r, (r + 8) % 64) for r in range(64))  # node n to node n+1, GPU by GPU
    assert len(fabric._plans("send", "direct", 1e6, crossing, 64, "pack")) == 64
