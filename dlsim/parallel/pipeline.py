"""Pipeline parallelism: how a model is cut into pieces and in which order a stage runs them.

The model's layers are cut into ``stages * chunks`` contiguous pieces (transformer blocks
in equal runs, other layers at equal compute time); device ``s`` holds pieces ``s, s + p,
s + 2p, ...`` (its model chunks, Narayanan et al. SC'21, §2.2; one chunk unless the
schedule takes virtual stages). Each micro-batch's activations go point to point to the next
piece and its gradients come back (``dlsim.parallel.builder``); the bubble is not a formula
here, it is what the stages' dependencies leave idle. The schedules (GPipe, 1F1B,
interleaved 1F1B, and any other registered) are ``dlsim.parallel.schedules``.

With tensor parallelism every piece runs sharded (``dlsim.parallel.tensor``) and blocks on
its all-reduces (with sequence parallelism, all-gathers and reduce-scatters); a pass's
collectives of one kind run as one repeated collective after its compute, which takes the
same time as interleaving them because each blocks the next kernel.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import numpy as np

from dlsim.hardware.profiles import DeviceProfile
from dlsim.parallel.data_parallel import pass_times_s
from dlsim.parallel.expert import ExpertLayout, rank_expert_params, rank_params
from dlsim.parallel.memory import pipeline_stages
from dlsim.parallel.schedules import Pass, schedule_of
from dlsim.parallel.segments import LayerPass, layer_segments
from dlsim.parallel.tensor import Collectives, tensor_collectives
from dlsim.workload.model import Layer, Model


def partition(times: list[float], stages: int) -> list[list[int]]:
    """Contiguous layer ranges with near-equal total time: each cut goes after the layer
    whose running total is nearest the time quantile (ties to the earlier layer, so that
    rounding cannot unbalance equal layers)."""
    cumulative = np.cumsum(times)
    target = cumulative[-1] * np.arange(1, stages) / stages
    after = np.clip(np.searchsorted(cumulative, target), 1, len(times) - 1)
    before = after - 1
    nearer = np.abs(cumulative[before] - target) <= np.abs(cumulative[after] - target)
    cuts = np.where(nearer, before, after) + 1
    cuts = np.clip(cuts, np.arange(1, stages), len(times) - np.arange(stages - 1, 0, -1))
    bounds = [0, *np.maximum.accumulate(cuts).tolist(), len(times)]
    return [list(range(a, b)) for a, b in zip(bounds, bounds[1:])]


def warmup(kind: str, stage: int, stages: int, micro: int, chunks: int = 1) -> int:
    """Forward passes a stage runs before its first backward under schedule ``kind``."""
    return schedule_of(kind).warmup(stage, stages, micro, chunks)


def schedule(kind: str, stage: int, stages: int, micro: int,
             chunks: int = 1) -> list[Pass]:
    """The order of forward ('F', micro-batch, chunk) and backward ('B', ...) passes on one
    stage under schedule ``kind``."""
    return schedule_of(kind).order(stage, stages, micro, chunks)


def in_flight(kind: str, stage: int, stages: int, micro: int, chunks: int = 1) -> float:
    """Micro-batches of a whole stage whose activations it holds at once under schedule
    ``kind``: GPipe all m, 1F1B p - stage, interleaved its warm-up plus one chunk-passes
    of 1/v of a stage each."""
    return schedule_of(kind).in_flight(stage, stages, micro, chunks)


@dataclass(frozen=True)
class Piece:
    """One model chunk of one stage: its layers, pass times and tensor-parallel collectives
    of b·s·h, as (op, count) per pass; and per layer, the names, (forward, backward) times
    and parameters a pass run layer by layer needs (DDP buckets, ZeRO-3 gathers).

    Under context or expert parallelism ``passes`` holds each layer's (forward, backward)
    segments (``dlsim.parallel.segments``), which the builder runs instead of one kernel
    group, and ``expert_params`` the routed-expert parameters the rank holds, which sync
    over the expert-data group rather than data x context."""

    layers: list[int]
    forward_s: float
    backward_s: float  # including recomputation
    forward_collectives: Collectives
    backward_collectives: Collectives  # including the recomputed forward's
    params: float  # per tensor rank
    in_bytes: float
    out_bytes: float
    names: tuple[str, ...] = ()
    layer_times_s: tuple[tuple[float, float], ...] = ()
    layer_params: tuple[int, ...] = ()
    passes: tuple[tuple[LayerPass, LayerPass], ...] = ()
    expert_params: float = 0.0
    layer_expert_params: tuple[float, ...] = ()  # per layer, the part of layer_params above


def count_collectives(collectives: list[Collectives]) -> Collectives:
    """The collectives of several layers by op, in the order the ops first appear."""
    total: dict[str, int] = {}
    for layer in collectives:
        for op, count in layer:
            total[op] = total.get(op, 0) + count
    return tuple(total.items())


@dataclass(frozen=True)
class LayerCosts:
    """Per layer of one shard, what any cut of it sums: (forward, backward) times, segments
    (context or expert parallelism), parameters per rank, routed-expert parameters and
    tensor-parallel collectives. It does not depend on the piece count, so a planner that
    cuts one shard many ways prices its layers once."""

    times: tuple[tuple[float, float], ...]
    passes: tuple[tuple[LayerPass, LayerPass], ...]
    params: tuple[float, ...]
    expert_params: tuple[float, ...]
    counts: tuple[tuple[Collectives, Collectives], ...]


T = TypeVar("T")


def expanded(costs: LayerCosts, at: tuple[int, ...]) -> LayerCosts:
    """``costs`` of a model's distinct layers spread over all its layers (``at[i]``: layer
    i's distinct layer)."""
    def spread(values: tuple[T, ...]) -> tuple[T, ...]:
        return tuple(values[k] for k in at) if values else ()

    return LayerCosts(spread(costs.times), spread(costs.passes), spread(costs.params),
                      spread(costs.expert_params), spread(costs.counts))


def layer_costs(model: Model, shard: Model, device: DeviceProfile, dtype: str,
                recompute: str, sequence_parallel: bool = False, *, context: int = 1,
                kv_block_bytes: float = 0.0, experts: ExpertLayout | None = None,
                same: tuple[int, ...] | None = None,
                head_split: tuple[float, float] | None = None) -> LayerCosts:
    """What each layer of ``shard`` costs (see ``pieces`` for the arguments). Layers equal
    but for their names (a model's repeated blocks) are priced once; ``same`` (from
    ``repeats``) saves finding them again in each shard of one model."""
    layout = experts or ExpertLayout()
    segmented = context > 1 or layout.expert > 1
    if same is None:
        same = repeats(model)
    unique = [(model.layers[i], shard.layers[i]) for i in sorted(set(same))]
    at = {i: n for n, i in enumerate(sorted(set(same)))}

    def each(values: list[Any]) -> tuple[Any, ...]:
        return tuple(values[at[i]] for i in same)

    return LayerCosts(
        each([pass_times_s(layer, device, dtype, recompute) for _, layer in unique]),
        each([layer_segments(layer, device, dtype, recompute, context, kv_block_bytes,
                             layout, head_split) for _, layer in unique]) if segmented else (),
        each([rank_params(full, layout) if full.moe is not None else layer.params
              for full, layer in unique]),
        each([rank_expert_params(full, layout) for full, _ in unique]),
        each([tensor_collectives(layer, sequence_parallel) for _, layer in unique]))


def repeats(model: Model) -> tuple[int, ...]:
    """Per layer, the index of the first layer equal to it but for its name: tensor, context
    and expert sharding transform each layer alone, so every shard of ``model`` repeats its
    layers the same way (``layer_costs(same=...)``)."""
    first: dict[Layer, int] = {}
    return tuple(first.setdefault(replace(layer, name=""), i)
                 for i, layer in enumerate(model.layers))


def cut_layers(shard: Model, times: tuple[tuple[float, float], ...],
               parts: int, stage_blocks: Sequence[int] | None = None) -> list[list[int]]:
    """The layers of each of ``parts`` pieces (see ``pieces``)."""
    blocks = sum(layer.block is not None for layer in shard.layers)
    return (pipeline_stages(shard, parts, stage_blocks) if blocks >= parts
            else partition([f + b for f, b in times], parts))


def cut_shard(model: Model, shard: Model, costs: LayerCosts, parts: int,
        recompute: str, stage_blocks: Sequence[int] | None = None) -> list[Piece]:
    """``shard`` cut into ``parts`` pieces priced by its ``costs`` (see ``pieces``)."""
    times, passes, params = costs.times, costs.passes, costs.params
    expert_params, counts = costs.expert_params, costs.counts
    out = []
    for layers in cut_layers(shard, times, parts, stage_blocks):
        forward = [counts[i][0] for i in layers]
        backward = [counts[i][1] for i in layers]
        first = layers[0]
        out.append(Piece(
            layers, sum(times[i][0] for i in layers), sum(times[i][1] for i in layers),
            count_collectives(forward),
            count_collectives(backward + (forward if recompute == "full" else [])),
            sum(params[i] for i in layers),
            model.layers[first - 1].output_bytes if first else 0.0,
            model.layers[layers[-1]].output_bytes,
            tuple(shard.layers[i].name for i in layers), tuple(times[i] for i in layers),
            tuple(round(params[i]) for i in layers),
            tuple(passes[i] for i in layers) if passes else (),
            sum(expert_params[i] for i in layers), tuple(expert_params[i] for i in layers)))
    return out


def pieces(model: Model, shard: Model, device: DeviceProfile, dtype: str, parts: int,
           recompute: str, sequence_parallel: bool = False, *, context: int = 1,
           kv_block_bytes: float = 0.0, experts: ExpertLayout | None = None,
           head_split: tuple[float, float] | None = None,
           stage_blocks: Sequence[int] | None = None) -> list[Piece]:
    """Cut ``shard`` (one tensor rank's layers) into ``parts`` pieces as Megatron-LM does:
    transformer blocks in runs of equal count, the embedding with the first and the head
    with the last (``dlsim.parallel.memory.pipeline_stages``); other models into pieces of equal
    time; ``stage_blocks`` gives each piece's block count instead of equal runs.
    ``context`` > 1 or an ``experts`` layout gives the pieces their layers' segments
    (``kv_block_bytes``: one ring step's K/V block; ``head_split``: the all-to-alls of
    context_comm a2a instead) and per-rank expert parameters."""
    costs = layer_costs(model, shard, device, dtype, recompute, sequence_parallel,
                        context=context, kv_block_bytes=kv_block_bytes, experts=experts,
                        head_split=head_split)
    return cut_shard(model, shard, costs, parts, recompute, stage_blocks)
