"""Collective algorithms as small lowering functions: a collective becomes phases of flows.

Each function takes the participating devices in rank order and the collective's size in
bytes (nccl-tests' convention: the per-rank buffer for all-reduce and reduce-scatter input,
the gathered output for all-gather) and returns the phases the network runs one after
another. A phase's ``rounds`` are identical rounds sent back to back (a ring's 2(N-1) steps).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace

import numpy as np

from dlsim.contract.errors import ScenarioError


@dataclass(frozen=True)
class Phase:
    """Flows ``src[i] -> dst[i]`` of ``size_bytes[i]`` each, repeated ``rounds`` times.

    ``latency_rounds`` is how many message latencies the phase pays in sequence; it equals
    ``rounds`` unless the phase is a pipeline (a tree or chain streaming its data in chunks
    pays its depth in latencies but sends the bytes once); an array gives it per flow.
    A protocol (``dlsim.network.protocol``) may set ``latency_s``, each flow's whole latency
    instead of its path's latency times ``latency_rounds``, and ``wire_factor``, the bytes
    each flow puts on the wire per payload byte.
    """

    label: str
    src: np.ndarray
    dst: np.ndarray
    size_bytes: np.ndarray
    rounds: int = 1
    latency_rounds: int | np.ndarray | None = None
    latency_s: np.ndarray | None = None
    wire_factor: np.ndarray | None = None


def merge_phases(phases: tuple[Phase, ...]) -> Phase:
    """One phase carrying the flows of the same phase of several instances."""
    first = phases[0]
    if len(phases) == 1:
        return first
    lr = first.latency_rounds
    if isinstance(lr, np.ndarray):
        lr = np.concatenate([p.latency_rounds for p in phases])
    return replace(first, src=np.concatenate([p.src for p in phases]),
                   dst=np.concatenate([p.dst for p in phases]),
                   size_bytes=np.concatenate([p.size_bytes for p in phases]),
                   latency_rounds=lr,
                   latency_s=None if first.latency_s is None
                   else np.concatenate([p.latency_s for p in phases]),
                   wire_factor=None if first.wire_factor is None
                   else np.concatenate([p.wire_factor for p in phases]))


def _ring_phase(label: str, devices: np.ndarray, chunk_bytes: float, rounds: int) -> Phase:
    """Every rank sends ``chunk_bytes`` to its successor, ``rounds`` times."""
    n = len(devices)
    return Phase(label, devices, np.roll(devices, -1), np.full(n, chunk_bytes), rounds)


def ring_allreduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Reduce-scatter then all-gather around the ring (Patarasuk & Yuan 2009).

    Each rank sends 2(N-1) chunks of G/N: 2(N-1)/N*G per rank, 2(N-1)*G in total, and the
    time on an uncontended ring is 2(N-1)*(alpha + G/(N*B)).
    """
    n = len(devices)
    if n < 2:
        return []
    return [_ring_phase("ring reduce-scatter + all-gather", devices, size_bytes / n,
                        2 * (n - 1))]


def ring_reduce_scatter(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    n = len(devices)
    return [_ring_phase("ring reduce-scatter", devices, size_bytes / n, n - 1)] if n > 1 else []


def ring_allgather(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    n = len(devices)
    return [_ring_phase("ring all-gather", devices, size_bytes / n, n - 1)] if n > 1 else []


def rail_rings(op: str, devices: np.ndarray, size_bytes: float, nodes: np.ndarray
               ) -> list[Phase]:
    """NCCL's rings on a multi-node job: one ring per local rank (NCCL's channels), ring c
    visiting each node's ranks from local rank c, so it leaves node m from local rank c-1
    and enters node m+1 at local rank c. With a NIC per GPU the L rings cross the fabric
    through L different NICs (Jeaugey, "Massively Scale Your Deep Learning Training with
    NCCL 2.4", NVIDIA blog 2019) instead of one ring squeezing through a single NIC. Each
    ring carries G/L. Falls back to one ring when nodes are uneven or hold one rank."""
    order = np.argsort(nodes, kind="stable")
    _, counts = np.unique(nodes, return_counts=True)
    per_node = int(counts[0])
    if len(counts) < 2 or per_node < 2 or len(set(counts.tolist())) != 1:
        return ALGORITHMS[op]["ring"](devices, size_bytes)
    grid = devices[order].reshape(len(counts), per_node)
    rings = [np.roll(grid, -c, axis=1).ravel() for c in range(per_node)]
    n = len(devices)
    steps = 2 * (n - 1) if op == "allreduce" else n - 1
    src = np.concatenate(rings)
    dst = np.concatenate([np.roll(r, -1) for r in rings])
    return [Phase(f"{per_node} rings ({op})", src, dst,
                  np.full(len(src), size_bytes / per_node / n), steps)]


def server_ranks(n: int, servers: int) -> np.ndarray:
    """Ranks that host a parameter-server shard, spread evenly over the job."""
    return np.unique(np.linspace(0, n, servers, endpoint=False).astype(int))


def _queue_position(senders: np.ndarray) -> np.ndarray:
    """1 + how many earlier messages the same sender has queued: a sender posts its
    messages one after another, each paying a message latency (LogP's per-message
    overhead, Culler et al. 1993), so its k-th message starts after k latencies."""
    order = np.argsort(senders, kind="stable")
    position = np.empty(len(senders), dtype=int)
    _, starts, counts = np.unique(senders[order], return_index=True, return_counts=True)
    position[order] = np.arange(len(senders)) - np.repeat(starts, counts) + 1
    return position


def parameter_server(devices: np.ndarray, size_bytes: float, servers: int = 1,
                     hosts: np.ndarray | None = None, **_: object) -> list[Phase]:
    """Push gradients to K server shards, then pull the updated parameters (Li et al. 2014).

    Colocated (``hosts`` None): servers run on K of the N ranks and shard k owns G/K bytes;
    every rank pushes its G/K slice to each other server and pulls it back: 2(N-1)*G bytes
    in total as for the ring, but each server's link carries (N-1)*G/K of it in each
    direction. Dedicated: the K ``hosts`` are devices of their own and all N workers push
    and pull: 2*N*G bytes, N*G/K through each server's link each way. Each sender posts its
    messages in turn (K per worker on push, one per worker per server on pull), so many
    small shards pay many message latencies.
    """
    n = len(devices)
    if hosts is None:
        if servers < 1 or servers > n:
            raise ScenarioError(f"a parameter server needs 1..{n} servers for {n} devices, "
                                f"got {servers}.", field="communication.servers")
        if n < 2:
            return []
        hosts = devices[server_ranks(n, servers)]
    workers = np.repeat(devices, len(hosts))
    shards = np.tile(hosts, n)
    away = workers != shards  # a colocated worker's own shard needs no message
    workers, shards = workers[away], shards[away]
    shard = np.full(len(workers), size_bytes / len(hosts))
    return [Phase("push to servers", workers, shards, shard, 1, _queue_position(workers)),
            Phase("pull from servers", shards, workers, shard, 1, _queue_position(shards))]


def _pairs(devices: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every ordered pair (i, j), i != j: the O(N^2) messages of a direct exchange."""
    n = len(devices)
    src, dst = np.repeat(devices, n), np.tile(devices, n)
    keep = src != dst
    return src[keep], dst[keep]


def direct_allreduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Naive all-reduce: every rank sends its G/N slice to every owner, then every owner
    sends the reduced slice back: N(N-1) messages per phase, one latency each."""
    if len(devices) < 2:
        return []
    src, dst = _pairs(devices)
    chunk = np.full(len(src), size_bytes / len(devices))
    return [Phase("direct reduce-scatter", src, dst, chunk),
            Phase("direct all-gather", src, dst, chunk)]


def direct_half(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Direct reduce-scatter or all-gather: one exchange of G/N between every pair."""
    if len(devices) < 2:
        return []
    src, dst = _pairs(devices)
    return [Phase("direct exchange", src, dst, np.full(len(src), size_bytes / len(devices)))]


def alltoall(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """All-to-all: each rank sends a distinct G/N block to every other rank."""
    return direct_half(devices, size_bytes)


def halving_doubling(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Rabenseifner's all-reduce (Thakur et al. 2005): reduce-scatter by recursive halving,
    all-gather by recursive doubling. 2 log2(N) steps; each rank sends 2(N-1)/N*G."""
    n = len(devices)
    if n < 2:
        return []
    if n & (n - 1):
        raise ScenarioError(f"halving-doubling needs a power-of-two group, got {n} ranks; "
                            "use ring, tree or direct.", field="algorithm")
    ranks = np.arange(n)
    steps = int(np.log2(n))
    phases = []
    for k in range(steps):  # halving: partner at distance n/2^(k+1), half the data each time
        distance = n >> (k + 1)
        phases.append(Phase(f"halving step {k}", devices, devices[ranks ^ distance],
                            np.full(n, size_bytes / 2 ** (k + 1))))
    for k in range(steps):  # doubling: the mirror image
        distance = 1 << k
        phases.append(Phase(f"doubling step {k}", devices, devices[ranks ^ distance],
                            np.full(n, size_bytes * distance / n)))
    return phases


def _binary_tree_parents(n: int) -> np.ndarray:
    """Parent position of each position in a balanced in-order binary tree (-1: root)."""
    parent = np.full(n, -1)
    stack = [(0, n - 1, -1)]
    while stack:
        lo, hi, up = stack.pop()
        if lo > hi:
            continue
        mid = (lo + hi) // 2
        parent[mid] = up
        stack += [(lo, mid - 1, mid), (mid + 1, hi, mid)]
    return parent


def tree_depth(parent: np.ndarray) -> int:
    depth = np.zeros(len(parent), dtype=int)
    for v in range(len(parent)):
        u = v
        while parent[u] >= 0:
            depth[v] += 1
            u = parent[u]
    return int(depth.max())


def double_binary_tree(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """NCCL's double binary tree (Sanders, Speck & Traeff 2009): two trees, each reducing
    and broadcasting half the data, the second the first shifted by one rank so that most
    leaves of one are inner nodes of the other. Pipelined in chunks: every tree edge streams
    G/2 up and G/2 down at once, and the pipeline fills in 2 x depth latencies."""
    n = len(devices)
    if n < 2:
        return []
    parent = _binary_tree_parents(n)
    child = np.flatnonzero(parent >= 0)
    src, dst = [], []
    for order in (devices, np.roll(devices, -1)):
        up_from, up_to = order[child], order[parent[child]]
        src += [up_from, up_to]
        dst += [up_to, up_from]
    src_a, dst_a = np.concatenate(src), np.concatenate(dst)
    return [Phase("double binary tree reduce + broadcast", src_a, dst_a,
                  np.full(len(src_a), size_bytes / 2), 1, 2 * tree_depth(parent))]


def hierarchical_allreduce(devices: np.ndarray, size_bytes: float, nodes: np.ndarray,
                           **_: object) -> list[Phase]:
    """Intra-node ring reduce-scatter -> inter-node ring all-reduce of each G/L slice (one
    ring per local rank, L rings at once) -> intra-node ring all-gather (Horovod, NCCL
    CollNet-style two-level scheme). L ranks per node, M nodes."""
    order = np.argsort(nodes, kind="stable")
    local = devices[order]
    counts = np.unique(nodes, return_counts=True)[1]
    if len(set(counts.tolist())) != 1:
        raise ScenarioError("hierarchical all-reduce needs the same number of ranks on every "
                            f"node, got {counts.tolist()}.", field="algorithm")
    per_node, n_nodes = int(counts[0]), len(counts)
    grid = local.reshape(n_nodes, per_node)
    phases = []
    if per_node > 1:
        intra_src, intra_dst = grid.ravel(), np.roll(grid, -1, axis=1).ravel()
        chunk = np.full(grid.size, size_bytes / per_node)
        phases.append(Phase("intra-node reduce-scatter", intra_src, intra_dst, chunk,
                            per_node - 1))
    if n_nodes > 1:
        inter_src, inter_dst = grid.T.ravel(), np.roll(grid, -1, axis=0).T.ravel()
        phases.append(Phase("inter-node all-reduce", inter_src, inter_dst,
                            np.full(grid.size, size_bytes / per_node / n_nodes),
                            2 * (n_nodes - 1)))
    if per_node > 1:
        phases.append(Phase("intra-node all-gather", intra_src, intra_dst, chunk,
                            per_node - 1))
    return phases


def gossip(devices: np.ndarray, size_bytes: float, peers: list[np.ndarray] | None = None,
           **_: object) -> list[Phase]:
    """Decentralised gossip averaging (D-PSGD, Lian et al., NeurIPS 2017): instead of an
    all-reduce, each rank sends its whole G to each neighbour in the communication graph
    and averages what it receives; the replicas agree only in expectation (convergence is
    not modelled). ``peers[i]``: the group positions rank i exchanges with (default: the
    ring's two neighbours). A rank with d neighbours sends d*G per step."""
    n = len(devices)
    if n < 2:
        return []
    if peers is None:
        peers = [np.unique([(i - 1) % n, (i + 1) % n]) for i in range(n)]
    counts = [len(p) for p in peers]
    src = np.repeat(devices, counts)
    dst = devices[np.concatenate(peers).astype(int)]
    return [Phase("gossip exchange", src, dst, np.full(len(src), size_bytes))]


def chain_broadcast(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Pipelined chain from rank 0 (NCCL's ring broadcast): G crosses every hop once and the
    pipeline fills in N-1 latencies."""
    n = len(devices)
    if n < 2:
        return []
    return [Phase("chain broadcast", devices[:-1], devices[1:], np.full(n - 1, size_bytes),
                  1, n - 1)]


def chain_reduce(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Pipelined chain towards rank 0, the broadcast reversed."""
    n = len(devices)
    if n < 2:
        return []
    return [Phase("chain reduce", devices[1:], devices[:-1], np.full(n - 1, size_bytes),
                  1, n - 1)]


def send(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Point to point: the first half of the group sends G each to the second half, pairwise
    (one pair, or the same send of every data-parallel replica at once)."""
    half = len(devices) // 2
    return [Phase("send", devices[:half], devices[half:], np.full(half, size_bytes))]


def ring_sendrecv(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Point to point as nccl-tests' sendrecv runs it: every rank sends G to the next."""
    n = len(devices)
    if n < 2:
        return []
    return [Phase("send/recv", devices, np.roll(devices, -1), np.full(n, size_bytes))]


Lowering = Callable[..., list[Phase]]

ALGORITHMS: dict[str, dict[str, Lowering]] = {
    "allreduce": {"ring": ring_allreduce, "tree": double_binary_tree,
                  "halving-doubling": halving_doubling, "direct": direct_allreduce,
                  "hierarchical": hierarchical_allreduce, "ps": parameter_server,
                  "gossip": gossip},
    "reducescatter": {"ring": ring_reduce_scatter, "direct": direct_half},
    "allgather": {"ring": ring_allgather, "direct": direct_half},
    "broadcast": {"ring": chain_broadcast},
    "reduce": {"ring": chain_reduce},
    "alltoall": {"direct": alltoall},
    "sendrecv": {"ring": ring_sendrecv},
    "send": {"direct": send},
}


def lowering(op: str, algorithm: str, field: str = "algorithm") -> Lowering:
    """The lowering function of ``algorithm`` for ``op``, or an input error naming both."""
    by_algorithm = ALGORITHMS.get(op)
    if by_algorithm is None:
        raise ScenarioError(f"unknown collective '{op}'; allowed: {', '.join(ALGORITHMS)}.",
                            field="collective.op")
    fn = by_algorithm.get(algorithm)
    if fn is None:
        raise ScenarioError(f"no '{algorithm}' algorithm for {op}; allowed: "
                            f"{', '.join(by_algorithm)}.", field=field)
    return fn


def check_algorithm(op: str, algorithm: str, field: str) -> None:
    """An input error unless ``algorithm`` (or ``auto``) can run ``op``."""
    if algorithm == "auto" and op in ALGORITHMS:
        return
    lowering(op, algorithm, field)


def dedicated_hosts(n_devices: int, workers: np.ndarray, servers: int) -> np.ndarray:
    """Devices for ``servers`` dedicated parameter servers: the highest-numbered devices
    that run no worker (a separate rack of servers at the end of the cluster)."""
    free = np.setdiff1d(np.arange(n_devices), workers)
    if len(free) < servers:
        raise ScenarioError(f"{servers} dedicated parameter servers need {servers} devices "
                            f"besides the {len(workers)} workers, but the cluster has only "
                            f"{len(free)} more; lower the worker count (parallelism.data or "
                            "collective.devices) or use server_placement: colocated.",
                            field="communication.servers")
    return free[len(free) - servers:]


def lower(op: str, algorithm: str, devices: np.ndarray, size_bytes: float,
          servers: int = 1, nodes: np.ndarray | None = None,
          hosts: np.ndarray | None = None, peers: list[np.ndarray] | None = None
          ) -> list[Phase]:
    """The phases of collective ``op`` run by ``algorithm`` over ``devices``; ``nodes``
    gives each device's node (hierarchical algorithms need it), ``hosts`` the devices of
    dedicated parameter servers (None: colocated), ``peers`` each rank's gossip partners."""
    devices = np.asarray(devices)
    nodes = np.zeros(len(devices), dtype=int) if nodes is None else np.asarray(nodes)
    return lowering(op, algorithm)(devices, float(size_bytes), servers=servers, nodes=nodes,
                                   hosts=hosts, peers=peers)


def busbw_factor(op: str, n: int) -> float:
    """nccl-tests' bus-bandwidth factor (doc/PERFORMANCE.md): busbw = algbw * factor."""
    if op == "allreduce":
        return 2 * (n - 1) / n
    if op in ("reducescatter", "allgather", "alltoall"):
        return (n - 1) / n
    return 1.0
