"""Multi-ring: NCCL's channels on a direct-link mesh, one ring per set of disjoint lanes.

On a mesh such as the DGX-1 hybrid cube mesh (8 V100s, 6 NVLink 2 lanes each, some pairs
joined by two bonded lanes) one ring uses two of a GPU's six lanes. NCCL's topology search
(``src/graph/search.cc``) instead builds several rings (channels) over disjoint lanes, each
run in both directions, so every lane carries traffic; NVIDIA's DGX-1 whitepaper describes
the mesh as interwoven rings ("NVIDIA DGX-1 With Tesla V100 System Architecture", 2017).
Here the rings are found from the mesh graph: the largest set of lane-disjoint Hamiltonian
cycles of the group's lane multigraph (networkx has no Hamiltonian-cycle search, so
``hamiltonian_cycles`` enumerates them; a node of NCCL's size, 8 GPUs, has at most 2,520).
A pair's lanes are its link's capacity over the group's narrowest direct link. With k
cycles the 2k directed rings carry G/2k each, so every lane carries 2(N-1)/N x G/2k of an
all-reduce and the bus bandwidth is 2k lanes' rate: 6 x 25 GB/s on a DGX-1 at line rate.
"""

from __future__ import annotations

from functools import partial

import networkx as nx
import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import register
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase

# NCCL builds rings within a node; 8 devices have at most 2,520 Hamiltonian cycles, 16 up to
# 6.5e11, more than a search per collective can afford
MAX_RING_DEVICES = 8
MAX_SEARCH_STEPS = 200_000  # cycles tried in the disjoint-set search before it keeps its best
STEPS = {"allreduce": lambda n: 2 * (n - 1), "reducescatter": lambda n: n - 1,
         "allgather": lambda n: n - 1}


def lane_graph(topology: Topology, devices: np.ndarray) -> nx.Graph:
    """The group's direct device-to-device links, each weighted by its lanes (its capacity
    over the narrowest such link of the group)."""
    g = topology.graph
    members = {int(d) for d in devices}
    mesh: nx.Graph = nx.Graph()
    mesh.add_nodes_from(members)
    for a in members:
        for b in g.successors(a):
            if b in members and a < b:
                mesh.add_edge(a, b, capacity=min(g.edges[a, b]["bandwidth_Bps"],
                                                 g.edges[b, a]["bandwidth_Bps"]))
    if mesh.number_of_edges():
        capacity: dict[tuple[int, int], float] = nx.get_edge_attributes(mesh, "capacity")
        narrowest = min(capacity.values())
        for (a, b), c in capacity.items():
            mesh.edges[a, b]["lanes"] = max(1, round(c / narrowest))
    return mesh


def hamiltonian_cycles(mesh: nx.Graph) -> list[tuple[int, ...]]:
    """Every Hamiltonian cycle of ``mesh`` once (from its smallest node, second node below
    the last so each undirected cycle appears in one orientation)."""
    nodes = sorted(mesh.nodes)
    n, start = len(nodes), nodes[0]
    found: list[tuple[int, ...]] = []
    path, seen = [start], {start}

    def extend() -> None:
        if len(path) == n:
            if mesh.has_edge(path[-1], start) and path[1] < path[-1]:
                found.append(tuple(path))
            return
        for nxt in sorted(mesh.neighbors(path[-1])):
            if nxt not in seen:
                path.append(nxt)
                seen.add(nxt)
                extend()
                seen.discard(nxt)
                path.pop()

    extend()
    return found


def _cycle_edges(cycle: tuple[int, ...]) -> list[tuple[int, int]]:
    return [tuple(sorted((cycle[i], cycle[(i + 1) % len(cycle)])))  # type: ignore[misc]
            for i in range(len(cycle))]


def disjoint_rings(mesh: nx.Graph) -> list[tuple[int, ...]]:
    """The most Hamiltonian cycles of ``mesh`` that together use no pair's link more times
    than it has lanes (a depth-first search over the cycles, stopped at the bound every
    node's lanes set, half its lane degree, or at the search budget)."""
    cycles = hamiltonian_cycles(mesh)
    if not cycles:
        return []
    bound = min(sum(mesh.edges[v, u]["lanes"] for u in mesh.neighbors(v)) // 2
                for v in mesh.nodes)
    free = {tuple(sorted(e)): mesh.edges[e]["lanes"] for e in mesh.edges}
    best: list[tuple[int, ...]] = []
    chosen: list[tuple[int, ...]] = []
    steps = 0

    def search(first: int) -> bool:
        nonlocal best, steps
        if len(chosen) > len(best):
            best = list(chosen)
        if len(best) == bound:
            return True
        for i in range(first, len(cycles)):
            steps += 1
            if steps > MAX_SEARCH_STEPS:
                return True
            edges = _cycle_edges(cycles[i])
            if all(free[e] > 0 for e in edges):
                for e in edges:
                    free[e] -= 1
                chosen.append(cycles[i])
                done = search(i)  # a cycle may be taken again where every link has 2 lanes
                chosen.pop()
                for e in edges:
                    free[e] += 1
                if done:
                    return True
        return False

    search(0)
    return best


def multi_ring(op: str, devices: np.ndarray, size_bytes: float,
               topology: Topology | None = None, **_: object) -> list[Phase]:
    """Each of the k lane-disjoint rings run both ways, each direction carrying G/2k with the
    ring's steps (2(N-1) chunks of G/2kN for all-reduce, N-1 for reduce-scatter and
    all-gather)."""
    n = len(devices)
    if n < 2:
        return []
    if topology is None or n > MAX_RING_DEVICES:
        raise ScenarioError(f"multi-ring finds rings over a mesh's direct links on 2 to "
                            f"{MAX_RING_DEVICES} devices, not {n}; use ring, tree or auto.",
                            field="algorithm")
    rings = disjoint_rings(lane_graph(topology, devices))
    if not rings:
        raise ScenarioError(f"multi-ring needs a ring over direct device links through all "
                            f"{n} devices of the group, which {topology.description} does "
                            f"not give; use ring, tree or auto.", field="algorithm")
    directed = [np.array(r) for r in rings] + [np.array(r[::-1]) for r in rings]
    src = np.concatenate(directed)
    dst = np.concatenate([np.roll(r, -1) for r in directed])
    return [Phase(f"{len(directed)} rings over disjoint lanes ({op})", src, dst,
                  np.full(len(src), size_bytes / len(directed) / n), STEPS[op](n))]


register(ALGORITHM, "multi-ring", Algorithm(
    {op: partial(multi_ring, op) for op in STEPS}, auto=False, nccl=True,
    precedence=8))
