"""A closed-form step-time estimate of one plan: cheap enough to rank thousands of plans.

The estimate computes exactly what the engine computes per micro-batch (the same pieces of
the same tensor-parallel shard:
``dlsim.parallel.pipeline.pieces``) and prices communication with the
tuner's closed form (each collective lowered
as the engine lowers it, each phase priced at its busiest link: ``Fabric``). What it leaves
out is the engine's dynamics: flows that start at different times, overlap that depends on
the schedule. It is a ranking tool: the planner confirms its best plans with the
discrete-event engine and says which figures came from which. The formulas:

- Tensor parallelism: what one rank computes is ``dlsim.parallel.tensor.shard_model`` (Megatron-LM's
  split, as the engine runs it), plus its all-reduces of the b·s·h activation (two in forward
  and two in backward per block), blocking compute; with sequence parallelism the
  layernorms and residuals split too and each all-reduce is an all-gather and a
  reduce-scatter (``dlsim.parallel.tensor.tensor_collectives``).
- Pipeline (Narayanan et al. SC'21, §2.2): the slowest stage runs all m micro-batches and
  the fill and drain pass once through every other stage, m·t_max + (Σ_s t_s − t_max)/v for
  v interleaved chunks: (m + p − 1)·t for GPipe and 1F1B on equal stages, (m + (p − 1)/v)·t
  interleaved. Stages are unequal because the head joins the last blocks (its logits GEMM
  is 0.56 of a block's FLOPs in LLaMA-2-7B, 0.96 in Megatron's 7.5B): charging every stage
  the slowest one's time overestimated LLaMA-2-7B on 16 pipeline stages by 10%.
  Activations cross a stage boundary on the fill and drain path 2(p·v − 1) times.
- Data-parallel gradients: without a pipeline they overlap the last micro-batch's backward
  except for the last bucket (PyTorch DDP); with a pipeline each stage syncs after its last
  backward, which ends earlier the later the stage (by the drain's backward passes of the
  stages before it), and the step ends with the stage whose sync and update end last.
  ZeRO-1/2 reduce-scatter instead and all-gather the updated parameters after the update,
  the all-reduce's volume; ZeRO-3 all-gathers before each pass and never after the step,
  1.5× (Rajbhandari et al. 2020, §7.2). With tensor or pipeline parallelism ZeRO-3 runs as
  the engine runs it (``dlsim.parallel.builder``): every micro-batch's forward and backward
  gather the stage's layers on a prefetch stream beside the compute, so a micro-batch
  pays the part of its two gathers its compute does not cover, and the reduce-scatter runs
  layer by layer in the last backward, exposing what the backward does not cover plus the
  last layer's (the stage's first).
- Optimizer offload (Ren et al. 2021, §4): the update is the gradients' trip to the host over
  PCIe, the CPU's update and the parameters' trip back, one after the other (the engine's
  ``optimizer_steps``).
- Recomputation: full recomputes each block's forward (and its all-reduces) in its
  backward, selective only the attention core (Korthikanti et al. 2022, §4).
- Context parallelism (``dlsim.parallel.context``): a rank computes 1/c of every sequence;
  an attention core runs as c ring steps, each on the K/V block in hand while that block
  travels to the next context rank, so a core of T seconds takes
  (c − 1)·max(T/c, send) + T/c: the ring is hidden while a step's compute outlasts one
  block's send. The tensor-parallel collectives carry 1/c of b·s·h; the dense gradients
  sync over data × context.
- Expert parallelism (``dlsim.parallel.expert``): the busiest rank's routed GEMMs
  (router_imbalance, capped by the capacity factor), and per MoE layer and micro-batch an
  all-to-all dispatch and combine in forward and again in backward (with full
  recomputation, the recomputed forward's two as well), each blocking the kernels after
  it; the routed experts' gradients are all-reduced over the expert-data group after the
  dense ones, on the same stream.
- Hybrid sharding (``dlsim.parallel.sharding``): ZeRO's gathers and reduce-scatters run in
  the shard groups of k, and each reduce-scatter is followed by an all-reduce of its 1/k
  shard across the replicas.

Under ZeRO-1/2/3 routed experts' state is sharded over the expert-data group: their
gradients reduce-scatter there, their gathers (after the update, or before each pass with
ZeRO-3) run there after the dense ones, and each rank updates its dense shard and its
experts' shard (``dlsim.parallel.builder``).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache

import numpy as np

from dlsim.cluster.build import placement
from dlsim.hardware.profiles import DTYPE_BYTES, DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import Phase, merge_phases
from dlsim.network.protocol import PROTOCOLS, resolve_mode
from dlsim.network.translates import classes, move_phase, moved_routes, split
from dlsim.network.tuner import candidates, choices, phase_lines, phase_time_s, plan_collective
from dlsim.parallel.context import context_shard, head_split_bytes, kv_bytes
from dlsim.parallel.data_parallel import optimizer_steps
from dlsim.parallel.expert import ExpertLayout, reprice_experts
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import (
    gradient_bytes_per_param,
    pipeline_stages,
    weight_bytes_per_param,
)
from dlsim.parallel.pipeline import (
    LayerCosts,
    Piece,
    count_collectives,
    cut_layers,
    cut_shard,
    expanded,
    layer_costs,
    repeats,
)
from dlsim.parallel.segments import EXPERT_TENSOR_OPS, LayerPass, Segment
from dlsim.parallel.sharding import sharding_groups
from dlsim.parallel.tensor import Collectives, shard_model
from dlsim.planner.space import Plan, context_comm_for
from dlsim.workload.costmodel import optimizer_time_s
from dlsim.workload.model import Model
from dlsim.workload.shapes import TransformerShape

BUCKET_BYTES = 25 * 1024 * 1024  # PyTorch DDP's default bucket_cap_mb


Lines = tuple[np.ndarray, np.ndarray]  # a phase's time at sizes scaled by x: max(a + b·x)


class Fabric:
    """Collective times on the cluster's built topology, in closed form and memoised.

    Each collective is lowered and priced the way the engine lowers it
    (``dlsim.network.tuner.plan_collective`` with the cluster's protocol); the groups that run
    at once (every tensor group of a stage, every tensor rank's data-parallel group) are
    priced together, so they share the links they share in the engine, and each phase
    costs its busiest link's bytes over that link's bandwidth plus its latency
    (``phase_time_s``). A lowering's structure does not depend on the collective's size,
    only its bytes do, so each group set is lowered and routed once, at one byte, and priced
    at any size from its phases' lines (``phase_lines``); under ``nccl`` (each group's
    fastest protocol) a size whose groups all choose one protocol costs that protocol's
    figure, any other is lowered at its size."""

    def __init__(self, topology: Topology, protocol: str = "auto",
                 siblings: dict[str, Fabric] | None = None) -> None:
        self.topology = topology
        self.protocol = resolve_mode(protocol, topology, False)
        self._placement: dict[tuple[int, str], np.ndarray] = {}
        self._memo: dict[tuple, float] = {}
        self._group_memo: dict[tuple, list[Phase]] = {}
        self._classes: dict[tuple, tuple[np.ndarray, ...]] = {}
        self._moves: dict[tuple, tuple[np.ndarray, bool]] = {}
        self._lines: dict[tuple, tuple[list[Lines], list[np.ndarray]]] = {}
        self._solo: dict[tuple, list[tuple[str, list[Lines]]]] = {}
        self.symmetric = True  # False lowers every group (the tests' reference)
        self._siblings = {protocol: self} if siblings is None else siblings

    def for_protocol(self, protocol: str) -> Fabric:
        """The same cluster with ``communication.protocol`` ``protocol`` (memoised)."""
        if protocol not in self._siblings:
            sibling = Fabric(self.topology, protocol, self._siblings)
            sibling._placement, sibling._classes = self._placement, self._classes
            sibling._moves, sibling._solo = self._moves, self._solo
            sibling.symmetric = self.symmetric
            self._siblings[protocol] = sibling
        return self._siblings[protocol]

    def devices(self, ranks: int, policy: str) -> np.ndarray:
        key = (ranks, policy)
        if key not in self._placement:
            self._placement[key] = placement(ranks, self.topology, policy)
        return self._placement[key]

    def time_s(self, op: str, algorithm: str, size_bytes: float,
               groups: tuple[tuple[int, ...], ...], ranks: int, policy: str) -> float:
        """Seconds for the rank ``groups`` to run ``op`` at once (0 for one-rank groups)."""
        if size_bytes <= 0 or len(groups[0]) < 2:
            return 0.0
        key = (op, algorithm, size_bytes, groups, ranks, policy)
        if key not in self._memo:
            self._memo[key] = self._priced(op, algorithm, size_bytes, groups, ranks, policy)
        return self._memo[key]

    def _priced(self, op: str, algorithm: str, size_bytes: float,
                groups: tuple[tuple[int, ...], ...], ranks: int, policy: str) -> float:
        if len(candidates(op, algorithm, self.protocol)) > 1:  # auto: chosen by size
            return sum(phase_time_s(phase, self.topology) for phase in
                       self._merged(op, algorithm, size_bytes, groups, ranks, policy)[0])
        if self.protocol == "nccl":
            simple = self.for_protocol("Simple")
            _, firsts = simple._lined(op, algorithm, groups, ranks, policy)
            chosen = {self._choice(op, algorithm, devices, size_bytes) for devices in firsts}
            if len(chosen) == 1:
                return self.for_protocol(chosen.pop()).time_s(op, algorithm, size_bytes,
                                                              groups, ranks, policy)
            return sum(phase_time_s(phase, self.topology) for phase in
                       self._merged(op, algorithm, size_bytes, groups, ranks, policy)[0])
        lines, _ = self._lined(op, algorithm, groups, ranks, policy)
        return sum(float((a + b * size_bytes).max()) for a, b in lines)

    def _lined(self, op: str, algorithm: str, groups: tuple[tuple[int, ...], ...],
               ranks: int, policy: str) -> tuple[list[Lines], list[np.ndarray]]:
        """The merged phases' lines of the collective at one byte, and the groups whose
        lowering built them (each class's first)."""
        key = (op, algorithm, groups, ranks, policy)
        if key not in self._lines:
            phases, firsts = self._merged(op, algorithm, 1.0, groups, ranks, policy)
            self._lines[key] = ([phase_lines(ph, self.topology) for ph in phases], firsts)
        return self._lines[key]

    def _choice(self, op: str, algorithm: str, devices: np.ndarray, size_bytes: float) -> str:
        """The protocol NCCL's tuner picks for one group alone (``plan_collective``)."""
        key = (op, algorithm, devices.tobytes())
        if key not in self._solo:
            self._solo[key] = [(p, [phase_lines(ph, self.topology) for ph in run])
                               for _, p, run in choices(op, [algorithm], list(PROTOCOLS),
                                                        devices, 1.0, self.topology)]
        best, best_s = "", math.inf
        for p, lines in self._solo[key]:
            t = sum(float((a + b * size_bytes).max()) for a, b in lines)
            if t < best_s:
                best, best_s = p, t
        return best

    def _merged(self, op: str, algorithm: str, size_bytes: float,
                groups: tuple[tuple[int, ...], ...], ranks: int, policy: str
                ) -> tuple[list[Phase], list[np.ndarray]]:
        """Each phase of every group's lowering merged, and the groups lowered: one lowering
        per class of translates that route alike (``dlsim.network.translates``), and only
        the classes' first groups' phases where no two groups share a link (the same
        figure)."""
        where = self.devices(ranks, policy)
        if (not self.symmetric or len(groups) < 2 or len({len(g) for g in groups}) > 1
                or len(candidates(op, algorithm, self.protocol)) > 1
                or self.topology.graph.graph.get("tori")):
            each = [where[list(g)] for g in groups]
            return self._every(op, algorithm, size_bytes, each), each
        key = (groups, ranks, policy)
        if key not in self._classes:
            every = np.array([where[list(g)] for g in groups])
            self._classes[key] = (every, *classes(every, self.topology.devices_per_node))
        every, first, cls, offset = self._classes[key]
        dpn = self.topology.devices_per_node
        while True:  # until every group is its class's first moved
            plans = [self._phases(op, algorithm, every[i], size_bytes) for i in first]
            flows = [(np.concatenate([ph.src[ph.src != ph.dst] for ph in phases] or [[]]),
                      np.concatenate([ph.dst[ph.src != ph.dst] for ph in phases] or [[]]))
                     for phases in plans]
            check = (key, cls.tobytes(), tuple((s.tobytes(), d.tobytes()) for s, d in flows))
            if check not in self._moves:
                self._moves[check] = moved_routes(self.topology, flows, cls, offset)
            alike, disjoint = self._moves[check]
            if alike.all():
                break
            first, cls, offset = split(cls, alike, every[:, 0] - every[:, 0] % dpn)
        firsts = [every[i] for i in first]
        if disjoint:
            return [merge_phases(phases) for phases in zip(*plans)], firsts
        return [move_phase(phases, cls, offset) for phases in zip(*plans)], firsts

    def _every(self, op: str, algorithm: str, size_bytes: float,
               every: list[np.ndarray]) -> list[Phase]:
        plans = [self._phases(op, algorithm, d, size_bytes) for d in every]
        return [merge_phases(phases) for phases in zip(*plans)]

    def _phases(self, op: str, algorithm: str, devices: np.ndarray,
                size_bytes: float) -> list[Phase]:
        """One group's lowering, memoised on its devices: plans of other degrees run many
        of the same groups (a replica's tensor group is the same devices whatever d is)."""
        key = (op, algorithm, size_bytes, devices.tobytes())
        if key not in self._group_memo:
            self._group_memo[key] = plan_collective(op, algorithm, devices, size_bytes,
                                                    self.topology, self.protocol,
                                                    timed=False).phases
        return self._group_memo[key]


class FastestProtocol:
    """The fabric with each collective at the least time any of ``protocols`` gives it:
    ``micro_part`` priced on it bounds that of every one of them from below, since a micro
    part never shrinks when one of its collectives takes longer (the planner's bounds).
    ``rounded`` prices each collective at its size rounded down to a power of two: no
    lowering's structure depends on the size (its bytes scale with it), so a collective
    never gets faster as it grows, and the rounded sizes bound a whole range of plans from
    below with a few dozen sizes priced per group instead of one per plan."""

    def __init__(self, fabric: Fabric, protocols: tuple[str, ...],
                 rounded: bool = False) -> None:
        self._fabrics = [fabric.for_protocol(p) for p in protocols]
        self._rounded = rounded
        self._memo: dict[tuple, float] = {}

    def for_protocol(self, protocol: str) -> FastestProtocol:
        return self

    def time_s(self, op: str, algorithm: str, size_bytes: float,
               groups: tuple[tuple[int, ...], ...], ranks: int, policy: str) -> float:
        if self._rounded and size_bytes > 0:
            size_bytes = 2.0 ** math.floor(math.log2(size_bytes))
        key = (op, algorithm, size_bytes, groups, ranks, policy)
        if key not in self._memo:
            self._memo[key] = min(f.time_s(op, algorithm, size_bytes, groups, ranks, policy)
                                  for f in self._fabrics)
        return self._memo[key]


class CostTable:
    """One model at one micro-batch on one device, cut the way the engine cuts it
    (``dlsim.kinds.training``: ``dlsim.parallel.pipeline.pieces`` of one context rank's
    share, sharded ``dlsim.parallel.tensor.shard_model`` and its routed experts repriced for
    the expert layout), memoised per tensor, context and expert degrees, piece count,
    recomputation and sequence parallelism: thousands of plans share a few hundred cuts.
    ``shape`` and ``microbatch`` size the ring's K/V blocks (context parallelism)."""

    def __init__(self, model: Model, device: DeviceProfile, dtype: str, tokens: float,
                 hidden: int, shape: TransformerShape | None = None,
                 microbatch: int = 1) -> None:
        self.model, self.device, self.dtype = model, device, dtype
        self.tokens, self.hidden = tokens, hidden
        self.shape, self.microbatch = shape, microbatch
        self.moe = any(layer.moe is not None for layer in model.layers)
        self._memo: dict[tuple, list[Piece]] = {}
        self._shards: dict[tuple, tuple[Model, Model, float, ExpertLayout | None]] = {}
        self._costs: dict[tuple, LayerCosts] = {}
        self._sums: dict[tuple, StageSums] = {}
        self._shapes: dict[tuple, tuple[tuple[tuple[tuple[float, float], int], ...], ...]] = {}
        self._compute: dict[tuple, tuple[float, ...]] = {}
        self._pieces: dict[tuple, list[float]] = {}
        self._stages: dict[int, list[list[int]]] = {}
        self._blocks = sum(layer.block is not None for layer in model.layers)
        # the model's distinct layers (repeated blocks once) and where each layer's is
        same = repeats(model)
        firsts = sorted(set(same))
        self._distinct = Model(model.name, tuple(model.layers[i] for i in firsts))
        self._at = tuple(firsts.index(i) for i in same)

    def _shard(self, t: int, sequence_parallel: bool, context: int, expert: int,
               expert_tensor: int) -> tuple[Model, Model, float, ExpertLayout | None]:
        """One rank's share of the model, its tensor shard, the ring's K/V block and the
        expert layout the pieces are priced with."""
        key = (t, sequence_parallel, context, expert, expert_tensor)
        if key not in self._shards:
            per_rank, shard = self._transform(replace(self.model, layers=self._distinct.layers),
                                              *key)
            self._shards[key] = (self._spread(per_rank), self._spread(shard),
                                 *self._ring_and_layout(t, context, expert, expert_tensor))
        return self._shards[key]

    def _spread(self, distinct: Model) -> Model:
        """``distinct``, a transform of the model's distinct layers, with each layer at every
        place of the model it holds, under that place's name: the transforms work layer by
        layer and read no name, so this is the transform of the whole model, built from a
        few layers' (a 96-block model's sharding once, not 96 times)."""
        layers = distinct.layers
        return replace(distinct, layers=tuple(
            layers[k] if layers[k].name == own.name else replace(layers[k], name=own.name)
            for k, own in zip(self._at, self.model.layers)))

    @staticmethod
    def _transform(model: Model, t: int, sequence_parallel: bool, context: int, expert: int,
                   expert_tensor: int) -> tuple[Model, Model]:
        per_rank = context_shard(model, context)
        layout = ExpertLayout(expert, expert_tensor, t)
        return per_rank, reprice_experts(shard_model(per_rank, t, sequence_parallel), layout)

    def _head_split(self, t: int, context: int) -> tuple[float, float] | None:
        """The a2a exchange's buffers where only it runs the attention (``context_comm_for``);
        None: the ring's."""
        if context == 1 or self.shape is None or context_comm_for(self.shape) == "p2p":
            return None
        return head_split_bytes(self.shape, self.microbatch, max(DTYPE_BYTES[self.dtype], 2),
                                t, context)

    def _ring_and_layout(self, t: int, context: int, expert: int,
                         expert_tensor: int) -> tuple[float, ExpertLayout | None]:
        kv_block = 0.0
        if context > 1 and self._head_split(t, context) is None:
            assert self.shape is not None  # context parallelism plans a transformer
            kv_block = kv_bytes(self.shape, self.microbatch, max(DTYPE_BYTES[self.dtype], 2),
                                t) / context
        layout = ExpertLayout(expert, expert_tensor, t)
        return kv_block, layout if expert > 1 or self.moe else None

    def pieces(self, t: int, parts: int, recompute: str, sequence_parallel: bool = False,
               context: int = 1, expert: int = 1, expert_tensor: int = 1) -> list[Piece]:
        key = (t, parts, recompute, sequence_parallel, context, expert, expert_tensor)
        if key not in self._memo:
            per_rank, shard, kv_block, layout = self._shard(t, sequence_parallel, context,
                                                            expert, expert_tensor)
            costs = self.layer_costs(t, recompute, sequence_parallel, context, expert,
                                     expert_tensor)
            self._memo[key] = cut_shard(per_rank, shard, costs, parts, recompute)
        return self._memo[key]

    def layer_costs(self, t: int, recompute: str, sequence_parallel: bool, context: int,
                    expert: int, expert_tensor: int) -> LayerCosts:
        """The layers' costs at one sharding, whatever the piece count."""
        key = (t, sequence_parallel, context, expert, expert_tensor, recompute)
        if key not in self._costs:  # priced on the distinct layers, then spread out
            per_rank, shard = self._transform(self._distinct, t, sequence_parallel, context,
                                              expert, expert_tensor)
            kv_block, layout = self._ring_and_layout(t, context, expert, expert_tensor)
            self._costs[key] = expanded(layer_costs(
                per_rank, shard, self.device, self.dtype, recompute, sequence_parallel,
                context=context, kv_block_bytes=kv_block, experts=layout,
                same=tuple(range(len(shard.layers))),
                head_split=self._head_split(t, context)), self._at)
        return self._costs[key]

    def stage_compute(self, t: int, parts: int, recompute: str, sequence_parallel: bool,
                      context: int, expert: int, expert_tensor: int,
                      stages: int) -> tuple[float, ...]:
        """``stage_sums(...).compute`` without cutting the pieces (what the planner's lower
        bounds read of every cut, most of which it never estimates)."""
        key = (t, parts, recompute, sequence_parallel, context, expert, expert_tensor, stages)
        if key in self._sums:
            return self._sums[key].compute
        if key not in self._compute:
            piece = self._piece_compute(t, parts, recompute, sequence_parallel, context,
                                        expert, expert_tensor)
            self._compute[key] = tuple(sum(piece[s::stages]) for s in range(stages))
        return self._compute[key]

    def _piece_compute(self, t: int, parts: int, recompute: str, sequence_parallel: bool,
                       context: int, expert: int, expert_tensor: int) -> list[float]:
        """Each piece's forward + backward seconds (whatever the stage count)."""
        key = (t, parts, recompute, sequence_parallel, context, expert, expert_tensor)
        if key not in self._pieces:
            times = self.layer_costs(t, recompute, sequence_parallel, context, expert,
                                     expert_tensor).times
            # sharding keeps the layers' roles: cut as the model
            cut = (self.stages(parts) if self._blocks >= parts
                   else cut_layers(self.model, times, parts))
            self._pieces[key] = [sum(times[i][0] for i in layers)
                                 + sum(times[i][1] for i in layers) for layers in cut]
        return self._pieces[key]

    def stages(self, pipeline: int) -> list[list[int]]:
        """``dlsim.parallel.memory.pipeline_stages`` of the model (memoised: it is the cut
        by blocks of every sharding, and the memory model's stages)."""
        if pipeline not in self._stages:
            self._stages[pipeline] = pipeline_stages(self.model, pipeline)
        return self._stages[pipeline]

    def stage_sums(self, t: int, parts: int, recompute: str, sequence_parallel: bool,
                   context: int, expert: int, expert_tensor: int, stages: int) -> StageSums:
        """What ``micro_part`` reads of a cut's stages, summed once per cut and stage
        count (plans of every placement, protocol and ZeRO stage share it)."""
        key = (t, parts, recompute, sequence_parallel, context, expert, expert_tensor, stages)
        if key not in self._sums:
            cut = self.pieces(t, parts, recompute, sequence_parallel, context, expert,
                              expert_tensor)
            runs = [cut[s::stages] for s in range(stages)]
            self._sums[key] = StageSums(
                tuple(sum(x.forward_s + x.backward_s for x in ps) for ps in runs),
                tuple(sum(x.params for x in ps) for ps in runs),
                tuple(sum(x.backward_s for x in ps) for ps in runs),
                tuple(sum(cut[k].backward_s for k in range(s)) for s in range(stages)),
                tuple(ps[0].layer_params[0] for ps in runs),
                tuple(sum(x.expert_params for x in ps) for ps in runs),
                tuple(count_collectives([c for x in ps for c in (x.forward_collectives,
                                                                 x.backward_collectives)])
                      for ps in runs),
                tuple(segment_counts(ps for x in run for pair in x.passes for ps in pair)
                      for run in runs),
                tuple(segment_counts(pair[1] for x in run for pair in x.passes)
                      for run in runs),
                max(x.out_bytes for x in cut),
                tuple(count_collectives([x.backward_collectives for x in ps]) for ps in runs))
        return self._sums[key]

    def layer_shapes(self, t: int, parts: int, recompute: str, sequence_parallel: bool,
                     context: int, expert: int, expert_tensor: int, stages: int
                     ) -> tuple[tuple[tuple[tuple[float, float], int], ...], ...]:
        """Per stage of a cut: its layers' (dense, routed-expert) parameters, counted (what
        layer-by-layer ZeRO-3 gathers; apart from ``stage_sums``, which most cuts the
        planner prices never need it for)."""
        key = (t, parts, recompute, sequence_parallel, context, expert, expert_tensor, stages)
        if key not in self._shapes:
            cut = self.pieces(t, parts, recompute, sequence_parallel, context, expert,
                              expert_tensor)
            self._shapes[key] = tuple(tuple(Counter(
                (float(params - (x.layer_expert_params[j] if x.layer_expert_params else 0)),
                 float(x.layer_expert_params[j] if x.layer_expert_params else 0))
                for x in cut[s::stages] for j, params in enumerate(x.layer_params)
                if params).items()) for s in range(stages))
        return self._shapes[key]


@dataclass(frozen=True)
class StageSums:
    """Per pipeline stage of one cut: compute (forward + backward) per micro-batch,
    parameters, backward, how much earlier than stage 0 its last backward ends, its first
    layer's parameters, its routed-expert parameters, its tensor-parallel
    collectives and its counted ring and all-to-all segments (and its backward's alone);
    the largest piece output (what a pipeline send carries); and its backward's tensor
    collectives alone (what tensor-parallel overlap prices per pass)."""

    compute: tuple[float, ...]
    params: tuple[float, ...]
    backward: tuple[float, ...]
    drained: tuple[float, ...]
    first_layer: tuple[float, ...]
    expert_params: tuple[float, ...]
    collectives: tuple[Collectives, ...]
    segments: tuple[SegmentCounts, ...]
    backward_segments: tuple[SegmentCounts, ...]
    out_bytes: float
    backward_collectives: tuple[Collectives, ...]


def update_s(params: float, optimizer: str, device: DeviceProfile, dtype: str, offload: str,
             sharing: int) -> float:
    """The optimizer step of ``params`` as the engine runs it
    (``dlsim.parallel.data_parallel.optimizer_steps``): on the device, or offloaded, the
    gradients down, the host's update and the parameters back over PCIe."""
    if offload == "none":
        return optimizer_time_s(params, optimizer, device)
    return sum(s for _, s, _ in optimizer_steps(params, optimizer, device, dtype, offload,
                                                sharing))


@dataclass(frozen=True)
class Estimate:
    step_time_s: float
    breakdown_s: dict[str, float]


@dataclass(frozen=True)
class MicroPart:
    """One micro-batch's share of a plan's step, and what its tail needs of each stage."""

    compute: float  # the slowest stage's compute per micro-batch
    micro: float  # ... with its tensor-parallel collectives and exposed ZeRO-3 gathers
    bubble: float
    p2p: float
    params: tuple[float, ...]  # per stage
    backward: tuple[float, ...]  # per stage, per micro-batch
    drained: tuple[float, ...]  # how much earlier than stage 0 each stage's last backward ends
    first_layer: tuple[float, ...]  # per stage: its first layer's parameters
    ring: float = 0.0  # the slowest stage's exposed ring attention per micro-batch
    alltoall: float = 0.0  # ... and its all-to-alls
    expert_params: tuple[float, ...] = ()  # per stage: its routed-expert parameters
    gathers: tuple[float, ...] = ()  # per stage: layer-by-layer ZeRO-3's gather of one pass


@dataclass(frozen=True)
class SyncPart:
    """Per stage: the gradient sync (what may overlap the backward), what follows the update
    (ZeRO-1/2's all-gather), the update, and the gradient bytes."""

    sync: tuple[float, ...]
    after: tuple[float, ...]
    update: tuple[float, ...]
    grads: tuple[float, ...]


def data_parallel_only(plan: Plan) -> bool:
    """No tensor, pipeline, context or expert parallelism: the engine's DDP buckets."""
    return plan.tensor == plan.pipeline == plan.context == plan.expert == 1


def shard_size(plan: Plan) -> int:
    """The ranks ZeRO shards model state over: the shard group, or all data x context."""
    dense = plan.data * plan.context
    return min(plan.shard_group or dense, dense)


def sharded(plan: Plan) -> bool:
    return plan.zero_stage > 0 and shard_size(plan) > 1


def layered(plan: Plan) -> bool:
    """ZeRO-3 with tensor, pipeline, context or expert parallelism: gathered layer by layer
    every micro-batch."""
    return plan.zero_stage == 3 and sharded(plan) and not data_parallel_only(plan)


def _grid(plan: Plan) -> Grid:
    return Grid(plan.data, plan.tensor, plan.pipeline, plan.context, plan.expert,
                plan.expert_tensor)


class RankGroups(tuple):
    """Rank groups that run a collective at once, hashed once: the fabric's memo keys hold
    groups of up to thousands of ranks and are looked up hundreds of thousands of times."""

    def __hash__(self) -> int:
        if "_hash" not in self.__dict__:
            self.__dict__["_hash"] = tuple.__hash__(self)
        return self.__dict__["_hash"]


def shard_groups(plan: Plan, across: bool = False) -> tuple[tuple[int, ...], ...]:
    """Stage 0's shard groups of every tensor rank (``across``: its replica groups), as the
    engine's symmetric run forms them (``dlsim.parallel.sharding``)."""
    return _shard_groups(_grid(plan), shard_size(plan), across)


@lru_cache(maxsize=4096)
def _shard_groups(grid: Grid, shard: int, across: bool) -> RankGroups:
    groups = sharding_groups(grid, 0, range(grid.tensor), shard, 0, True, across=across)
    return RankGroups(groups.ranks[i:i + groups.size]
                      for i in range(0, len(groups.ranks), groups.size))


SegmentCounts = tuple[tuple[Segment, int], ...]


def segment_counts(passes: Iterable[LayerPass]) -> SegmentCounts:
    """The ring and all-to-all segments of ``passes``, each distinct one with its count."""
    counts = Counter(seg for layer_pass in passes for seg in layer_pass
                     if seg.kind != "compute")
    return tuple(counts.items())


def pass_comm_s(segments: SegmentCounts, context: int, send_s: Callable[[float], float],
                alltoall_s: Callable[[float], float],
                expert_tensor_s: Callable[[str, float], float] | None = None,
                head_swap_s: Callable[[float], float] | None = None) -> tuple[float, float]:
    """(context, expert) seconds that counted layer-pass segments add to their compute: a
    core of T seconds in c steps beside c - 1 block sends takes (c - 1)·max(T/c, send) + T/c
    (``dlsim.parallel.builder._ring``), an all-to-all blocks its whole time (the context
    group's of context_comm a2a: ``head_swap_s(size)``), and so does an expert-tensor
    all-gather or reduce-scatter (``expert_tensor_s(op, size)``)."""
    ring = a2a = 0.0
    for segment, count in segments:
        if segment.kind == "ring":
            step = segment.seconds / context
            ring += count * (context - 1) * max(send_s(segment.size_bytes) - step, 0.0)
        elif segment.kind == "heads" and head_swap_s is not None:
            ring += count * head_swap_s(segment.size_bytes)
        elif segment.kind in ("counts", "dispatch", "combine"):
            a2a += count * alltoall_s(segment.size_bytes)
        elif segment.kind in EXPERT_TENSOR_OPS and expert_tensor_s is not None:
            a2a += count * expert_tensor_s(EXPERT_TENSOR_OPS[segment.kind], segment.size_bytes)
    return ring, a2a


@dataclass(frozen=True)
class Groups:
    """Stage 0's rank groups of one grid, as the engine's symmetric run forms them: tensor
    groups, context rings' (sender, receiver) pairs, all-to-all groups, expert-data groups,
    the pipeline's stage-0-to-1 pairs, the expert-tensor groups, the dense gradients'
    data x context groups and the context groups (context_comm a2a's all-to-alls)."""

    tensor: tuple[tuple[int, ...], ...]
    rings: tuple[tuple[int, ...], ...]
    alltoall: tuple[tuple[int, ...], ...]
    expert_data: tuple[tuple[int, ...], ...]
    pipeline: tuple[tuple[int, ...], ...]
    expert_tensor: tuple[tuple[int, ...], ...] = ()
    data: tuple[tuple[int, ...], ...] = ()
    context: tuple[tuple[int, ...], ...] = ()


@lru_cache(maxsize=4096)
def groups_of(grid: Grid) -> Groups:
    d, t, c = grid.data, grid.tensor, grid.context
    return Groups(
        RankGroups(grid.tensor_group(0, r, ci) for r in range(d) for ci in range(c)),
        RankGroups((ring[i], ring[(i + 1) % c]) for r in range(d) for k in range(t)
                   for ring in (grid.context_group(0, r, k),) for i in range(c))
        if c > 1 else (),
        RankGroups(grid.expert_group(0, j, k) for j in range(grid.expert_data)
                   for k in range(grid.expert_tensor)) if grid.expert > 1 else (),
        RankGroups(grid.expert_data_group(0, e, k) for e in range(grid.expert)
                   for k in range(grid.expert_tensor)),
        RankGroups((grid.rank(0, r, k, ci), grid.rank(1, r, k, ci)) for r in range(d)
                   for ci in range(c) for k in range(t)) if grid.pipeline > 1 else (),
        RankGroups(grid.expert_tensor_group(0, j, e) for j in range(grid.expert_data)
                   for e in range(grid.expert)) if grid.expert > 1 < grid.expert_tensor else (),
        RankGroups(grid.data_group(0, k, None) for k in range(t)),
        RankGroups(grid.context_group(0, r, k) for r in range(d) for k in range(t)) if c > 1
        else ())


def micro_part(plan: Plan, table: CostTable, fabric: Fabric | FastestProtocol) -> MicroPart:
    """The parts of ``plan``'s step that depend on (t, c, p, v, b, e, et, recompute,
    sequence parallelism, placement, protocol, and whether ZeRO-3 gathers layer by layer,
    in which shard groups)."""
    fabric = fabric.for_protocol(plan.protocol)
    t, p, v, c = plan.tensor, plan.pipeline, plan.virtual_stages, plan.context
    grid, place, n = _grid(plan), plan.placement, plan.gpus
    sums = table.stage_sums(t, p * v, plan.recompute, plan.sequence_parallel and t > 1, c,
                            plan.expert, plan.expert_tensor, p)
    act = max(DTYPE_BYTES[table.dtype], 2) * table.tokens * table.hidden / c
    groups = groups_of(grid)
    gathers = layered(plan)
    gather_groups = shard_groups(plan) if gathers else ()
    shapes = (table.layer_shapes(t, p * v, plan.recompute, plan.sequence_parallel and t > 1, c,
                                 plan.expert, plan.expert_tensor, p) if gathers else ())
    weight_bytes = weight_bytes_per_param(table.dtype)

    def send_s(size: float) -> float:
        return fabric.time_s("send", "direct", size, groups.rings, n, place)

    def alltoall_s(size: float) -> float:
        return fabric.time_s("alltoall", "direct", size, groups.alltoall, n, place)

    def tensor_comm_s(s: int, collectives: tuple[Collectives, ...] = sums.collectives
                      ) -> float:
        return sum(fabric.time_s(op, "ring", act, groups.tensor, n, place) * count
                   for op, count in collectives[s])

    def gather_s(s: int) -> float:
        """Layer-by-layer ZeRO-3: one pass's gathers of the stage's parameters."""
        if not gathers:
            return 0.0
        gather = 0.0
        for (dense, experts), count in shapes[s]:
            gather += count * fabric.time_s("allgather", "ring", dense * weight_bytes,
                                            gather_groups, n, place)
            if experts and grid.expert_data > 1:  # the experts' own, on the same stream
                gather += count * fabric.time_s("allgather", "ring", experts * weight_bytes,
                                                groups.expert_data, n, place)
        return gather

    def gathers_exposed_s(s: int) -> float:
        """A micro-batch's gathers less the pass they run beside (its compute and its
        exposed ring and all-to-all time): prefetched two layers ahead, a forward's gathers
        cannot hide in the backward."""
        if gather[s] <= min(sums.backward[s], sums.compute[s] - sums.backward[s]):
            return 0.0  # hidden behind the compute alone
        backward = backward_pass_s(s)
        forward = sums.compute[s] + sum(comm[s]) - backward
        return max(gather[s] - forward, 0.0) + max(gather[s] - backward, 0.0)

    def backward_pass_s(s: int) -> float:
        """A micro-batch's backward passes on stage ``s``: their compute and exposed ring
        and all-to-all time."""
        return sums.backward[s] + sum(pass_comm_s(sums.backward_segments[s], c, send_s,
                                                  alltoall_s, expert_tensor_s, head_swap_s))

    def expert_tensor_s(op: str, size: float) -> float:
        return fabric.time_s(op, "ring", size, groups.expert_tensor, n, place)

    def head_swap_s(size: float) -> float:
        return fabric.time_s("alltoall", "direct", size, groups.context, n, place)

    comm = [pass_comm_s(counts, c, send_s, alltoall_s, expert_tensor_s, head_swap_s)
            for counts in sums.segments]
    gather = [gather_s(s) for s in range(p)]
    overlap = plan.tp_comm_overlap and t > 1
    contention = table.device.comm_contention

    def overlapped(tensor: float, rest: float) -> float:
        return max(tensor, rest + contention * tensor)

    def stage_time_s(s: int) -> float:
        """A micro-batch's passes on stage ``s``; overlapped (``tp_comm_overlap``), a pass's
        tensor collectives T start with it and slow its compute by the device's contention
        u while they run (the engine's ``_tensor``): max(T, rest + u T), for the stage's
        forward passes together and its backward passes together (exact where the passes
        of each kind are alike)."""
        tensor = tensor_comm_s(s)
        if not (overlap and tensor):
            return sums.compute[s] + tensor + gathers_exposed_s(s) + sum(comm[s])
        rest = sums.compute[s] + gathers_exposed_s(s) + sum(comm[s])
        back_tensor, back = tensor_comm_s(s, sums.backward_collectives), backward_pass_s(s)
        return (overlapped(tensor - back_tensor, rest - back)
                + overlapped(back_tensor, back))

    stage_s = [stage_time_s(s) for s in range(p)]
    slowest = max(range(p), key=sums.compute.__getitem__)
    micro = stage_s[slowest]
    bubble = p2p = 0.0
    if p > 1:
        bubble = (sum(stage_s) - micro) / v
        p2p = 2 * (p * v - 1) * fabric.time_s("send", "direct", sums.out_bytes / t,
                                              groups.pipeline, n, place)
    return MicroPart(sums.compute[slowest], micro, bubble, p2p, sums.params, sums.backward,
                     sums.drained, sums.first_layer, *comm[slowest], sums.expert_params,
                     tuple(gather))


def sync_part(plan: Plan, params: tuple[float, ...], table: CostTable, optimizer: str,
              fabric: Fabric, expert_params: tuple[float, ...] = ()) -> SyncPart:
    """Each stage's gradient sync and update: what depends on (the stages' parameters and
    routed-expert parameters, ZeRO stage and shard group, algorithm, layout, placement,
    protocol, offload)."""
    fabric = fabric.for_protocol(plan.protocol)
    d, c = plan.data, plan.context
    grid, place, n = _grid(plan), plan.placement, plan.gpus
    groups = groups_of(grid)
    shard, hybrid = shard_size(plan), sharded(plan) and shard_size(plan) < d * c
    shards = shard_groups(plan) if sharded(plan) else ()
    across = shard_groups(plan, across=True) if hybrid else ()
    grad_bytes = gradient_bytes_per_param(table.dtype)
    sync, after, update, grads_ = [], [], [], []
    for s, stage_params in enumerate(params):
        routed = expert_params[s] if expert_params else 0.0
        # DDP buckets carry every parameter; ZeRO-3 and Megatron's per-chunk exchange the
        # dense ones, the routed experts' going over the expert-data group
        experts_apart = not data_parallel_only(plan) or plan.zero_stage == 3
        grads = (stage_params - routed if experts_apart else stage_params) * grad_bytes
        if d * c == 1:
            s_, a_ = 0.0, 0.0
        elif not sharded(plan):
            s_, a_ = fabric.time_s("allreduce", plan.algorithm, grads, groups.data, n,
                                   place), 0.0
        else:
            scatter = fabric.time_s("reducescatter", "ring", grads, shards, n, place)
            if hybrid:
                scatter += fabric.time_s("allreduce", "ring", grads / shard, across, n, place)
            gather = fabric.time_s("allgather", "ring",
                                   (stage_params - routed) * weight_bytes_per_param(
                                       table.dtype), shards, n, place)
            if routed and grid.expert_data > 1:
                if experts_apart:
                    scatter += fabric.time_s("reducescatter", "ring", routed * grad_bytes,
                                             groups.expert_data, n, place)
                gather += fabric.time_s("allgather", "ring",
                                        routed * weight_bytes_per_param(table.dtype),
                                        groups.expert_data, n, place)
            if layered(plan):  # the gathers ran beside each micro-batch (micro_part)
                s_, a_ = scatter, 0.0
            elif plan.zero_stage == 3:  # before each pass, never after the step
                s_, a_ = scatter + 2 * gather, 0.0
            else:
                s_, a_ = scatter, gather
        if routed and not sharded(plan) and experts_apart and grid.expert_data > 1:
            s_ += fabric.time_s("allreduce", "ring", routed * grad_bytes, groups.expert_data, n,
                                place)
        owned = ((stage_params - routed) / shard + routed / grid.expert_data
                 if sharded(plan) else stage_params)
        sync.append(s_)
        after.append(a_)
        update.append(update_s(owned, optimizer, table.device, table.dtype, plan.offload,
                               fabric.topology.devices_per_node))
        grads_.append(grads)
    return SyncPart(tuple(sync), tuple(after), tuple(update), tuple(grads_))


def combine(plan: Plan, part: MicroPart, syncs: SyncPart, global_batch: int) -> Estimate:
    """The step: m micro-batches of the micro part, the bubble and point-to-point, and the
    tail of the stage whose sync and update end last (it ends with that stage)."""
    p, d = plan.pipeline, plan.data
    m = plan.microbatches_for(global_batch)
    best = None
    for s in range(p):
        sync = syncs.sync[s]
        # plain data parallelism's DDP buckets overlap the backward, all but the last one;
        # a tensor, pipeline, context or expert plan syncs each chunk after its last backward
        if data_parallel_only(plan) and d > 1:
            sync = (max(sync - part.backward[s], 0.0)
                    + sync * min(1.0, BUCKET_BYTES / syncs.grads[s]))
        elif layered(plan) and part.params[s]:
            # one reduce-scatter a layer in the last backward, the first last, on the links
            # of that pass's gathers (micro_part priced the gathers' own excess)
            gather, backward = part.gathers[s], part.backward[s]
            sync = (max(gather + sync - backward, 0.0) - max(gather - backward, 0.0)
                    + sync * part.first_layer[s] / part.params[s])
        candidate = (sync + syncs.after[s], syncs.update[s], part.drained[s])
        if best is None or (candidate[0] + candidate[1] - candidate[2]
                            > best[0] + best[1] - best[2]):
            best = candidate
    assert best is not None  # p >= 1 stages
    sync, update, drained = best
    tail = sync + update - drained
    exposed = max(tail - update, 0.0)
    breakdown = {
        "compute": m * part.compute + tail - exposed,
        "tensor_comm": m * (part.micro - part.compute - part.ring - part.alltoall),
        "bubble": part.bubble,
        "pipeline_comm": part.p2p,
        "exposed_dp_comm": exposed,
    }
    if plan.context > 1:
        breakdown["context_comm"] = m * part.ring
    if plan.expert > 1:
        breakdown["expert_comm"] = m * part.alltoall
    return Estimate(m * part.micro + part.bubble + part.p2p + tail, breakdown)


def estimate(plan: Plan, table: CostTable, optimizer: str, global_batch: int,
             fabric: Fabric) -> Estimate:
    """Closed-form step time of ``plan``; ``table`` holds the model at ``plan.microbatch``;
    ``fabric`` prices collectives (at ``plan.protocol``). ``dlsim.planner.factored``
    memoises the same parts across a space."""
    part = micro_part(plan, table, fabric)
    return combine(plan, part, sync_part(plan, part.params, table, optimizer, fabric,
                                         part.expert_params), global_batch)
