"""A closed-form step-time estimate of one plan: cheap enough to rank thousands of plans.

The estimate uses the same cost model as the engine for compute (``costmodel.kernel_time_s``
on the same kernels) and an α–β model for communication, with bandwidths and latencies read
off the cluster's built topology. It is a ranking tool: the planner confirms its best plans
with the discrete-event engine and says which figures came from which. The formulas:

- Tensor parallelism: what one rank computes is ``dlsim.tensor.shard_model`` (Megatron-LM's
  split, as the engine runs it), plus its all-reduces of the b·s·h activation (two in forward
  and two in backward per block), blocking compute.
- Ring all-reduce of S bytes over n ranks: 2(n−1)/n · S/B + 2(n−1)·α; a double binary tree
  has the same bandwidth term and 2·⌈log2 n⌉·α latency; hierarchical runs an intra-node
  reduce-scatter and all-gather around an inter-node ring on S/k bytes (k ranks per node).
- Pipeline (Narayanan et al. SC'21, §2.2): GPipe and 1F1B take (m + p − 1)·(t_f + t_b);
  interleaved 1F1B with v chunks (m + (p − 1)/v)·(t_f + t_b); activations cross a stage
  boundary on the fill and drain path 2(p·v − 1) times.
- Data-parallel gradients: without a pipeline they overlap the last micro-batch's backward
  except for the last bucket (PyTorch DDP); with a pipeline they follow the flush. ZeRO-1/2
  move the all-reduce's volume, ZeRO-3 1.5× (Rajbhandari et al. 2020, §7.2).
- Recomputation: full recomputes each block's forward in its backward, selective only the
  attention core (Korthikanti et al. 2022, §4).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from dlsim.costmodel import kernel_time_s, optimizer_time_s
from dlsim.hardware import DTYPE_BYTES, DeviceProfile
from dlsim.planner.space import Plan
from dlsim.strategy import gradient_bytes_per_param
from dlsim.tensor import ATTENTION_CORE, allreduces, shard_model
from dlsim.topology import Topology
from dlsim.workload import Kernel, Layer, Model

BUCKET_BYTES = 25 * 1024 * 1024  # PyTorch DDP's default bucket_cap_mb


@dataclass(frozen=True)
class Links:
    """α–β figures of the cluster: within a node, and per device across nodes."""

    intra_Bps: float
    intra_s: float
    inter_Bps: float
    inter_s: float
    devices_per_node: int
    nodes: int
    sockets: int

    @classmethod
    def of(cls, topology: Topology, nics_per_node: int, sockets: int) -> Links:
        def path(a: int, b: int) -> tuple[float, float]:
            route = topology.route(a, b)
            return (float(topology.capacity_Bps[route].min()),
                    float(topology.latency_s[route].sum()))

        dpn = topology.devices_per_node
        nodes = topology.n_devices // dpn
        intra = path(0, 1) if dpn > 1 else (math.inf, 0.0)
        inter = path(0, dpn) if nodes > 1 else intra
        share = min(1.0, nics_per_node / dpn) if nodes > 1 else 1.0
        return cls(intra[0], intra[1], inter[0] * share, inter[1], dpn, nodes, sockets)

    def node_of(self, rank: int, placement: str) -> int:
        """The node a rank lands on, following ``cluster.placement``'s two policies."""
        if placement == "pack":
            return rank // self.devices_per_node
        return (rank % (self.nodes * self.sockets)) % self.nodes

    def group(self, size: int, stride: int, placement: str) -> tuple[float, float, int]:
        """(bandwidth, latency, ranks per node) of rank 0's group of ``size`` at ``stride``."""
        nodes = {self.node_of(i * stride, placement) for i in range(size)}
        if len(nodes) == 1:
            return self.intra_Bps, self.intra_s, size
        return self.inter_Bps, self.inter_s, max(1, size // len(nodes))


def ring_allreduce_s(size: float, n: int, bandwidth: float, latency: float) -> float:
    if n <= 1:
        return 0.0
    return 2 * (n - 1) / n * size / bandwidth + 2 * (n - 1) * latency


def allreduce_s(size: float, n: int, algorithm: str, links: Links, stride: int,
                placement: str) -> float:
    bandwidth, latency, per_node = links.group(n, stride, placement)
    if n <= 1:
        return 0.0
    if algorithm == "tree":
        return 2 * (n - 1) / n * size / bandwidth + 2 * math.ceil(math.log2(n)) * latency
    if algorithm == "hierarchical" and 1 < per_node < n:
        k, across = per_node, n // per_node
        intra = ring_allreduce_s(size, k, links.intra_Bps, links.intra_s)
        return intra + ring_allreduce_s(size / k, across, bandwidth, latency)
    return ring_allreduce_s(size, n, bandwidth, latency)


@dataclass(frozen=True)
class LayerCosts:
    """Per micro-batch, per tensor rank: forward, backward (with recompute) and params."""

    forward_s: float
    backward_s: float
    params: float
    allreduces_forward: int  # tensor-parallel all-reduces of the b·s·h activation
    allreduces_backward: int


class CostTable:
    """Per-layer costs of one model at one micro-batch on one device, memoised per tensor
    degree: a model's blocks are identical, so thousands of plans need few kernel timings."""

    def __init__(self, model: Model, device: DeviceProfile, dtype: str, tokens: float,
                 hidden: int) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.tokens, self.hidden = tokens, hidden
        self._memo: dict[tuple[int, str], list[LayerCosts]] = {}

    def layers(self, t: int, recompute: str) -> list[LayerCosts]:
        key = (t, recompute)
        if key not in self._memo:
            self._memo[key] = [self._costs(layer, recompute)
                               for layer in shard_model(self.model, t).layers]
        return self._memo[key]

    def _time(self, kernels: tuple[Kernel, ...]) -> float:
        return sum(kernel_time_s(k, self.device, self.dtype) for k in kernels)

    def _costs(self, layer: Layer, recompute: str) -> LayerCosts:
        block = layer.name.startswith("block")
        f, b = self._time(layer.forward), self._time(layer.backward)
        if block and recompute == "full":
            b += f
        elif block and recompute == "selective":
            b += self._time(tuple(k for k in layer.forward if k.name in ATTENTION_CORE))
        return LayerCosts(f, b, layer.params, *allreduces(layer))


@dataclass(frozen=True)
class Estimate:
    step_time_s: float
    breakdown_s: dict[str, float]
    params_per_device: float


def _stage(costs: list[LayerCosts], p: int, names: list[str]) -> list[LayerCosts]:
    """The busiest pipeline stage: its share of the blocks plus the heavier of the ends."""
    if p == 1:
        return costs
    blocks = [c for c, n in zip(costs, names) if n.startswith("block")]
    ends = [c for c, n in zip(costs, names) if not n.startswith("block")]
    heaviest = max(ends, key=lambda c: c.forward_s + c.backward_s, default=None)
    return blocks[:len(blocks) // p] + ([heaviest] if heaviest else [])


def estimate(plan: Plan, table: CostTable, optimizer: str, global_batch: int,
             links: Links) -> Estimate:
    """Closed-form step time of ``plan``; ``table`` holds the model at ``plan.microbatch``."""
    t, p, d, v = plan.tensor, plan.pipeline, plan.data, plan.virtual_stages
    m = plan.microbatches_for(global_batch)
    dtype = table.dtype
    stage = _stage(table.layers(t, plan.recompute), p, [x.name for x in table.model.layers])
    act = max(DTYPE_BYTES[dtype], 2) * table.tokens * table.hidden
    tp_bw, tp_lat, _ = links.group(t, 1, plan.placement)
    tp_one = ring_allreduce_s(act, t, tp_bw, tp_lat)
    compute_micro = sum(c.forward_s + c.backward_s for c in stage)
    tp_micro = tp_one * sum(c.allreduces_forward + c.allreduces_backward for c in stage)
    micro = compute_micro + tp_micro
    bubble = p2p = 0.0
    if p > 1:
        pp_bw, pp_lat, _ = links.group(2, d * t, plan.placement)
        bubble = (p - 1) / v * micro
        p2p = 2 * (p * v - 1) * (act / t / pp_bw + pp_lat)  # each tensor rank sends 1/t
    params = sum(c.params for c in stage)
    grads = params * gradient_bytes_per_param(dtype) * (1.5 if plan.zero_stage == 3 else 1.0)
    sync = allreduce_s(grads, d, plan.algorithm, links, t, plan.placement)
    exposed = sync
    if p == 1 and d > 1:  # DDP buckets overlap the last backward but for the last bucket
        backward = sum(c.backward_s for c in stage)
        exposed = max(sync - backward, 0.0) + sync * min(1.0, BUCKET_BYTES / grads)
    owned = params / d if plan.zero_stage > 0 else params
    update = optimizer_time_s(owned, optimizer, table.device)
    return Estimate(m * micro + bubble + p2p + exposed + update, {
        "compute": m * compute_micro + update,
        "tensor_comm": m * tp_micro,
        "bubble": bubble,
        "pipeline_comm": p2p,
        "exposed_dp_comm": exposed,
    }, params)
