"""Expert parallelism for mixture-of-experts layers, as Megatron-Core runs it with the
all-to-all token dispatcher and MoE Parallel Folding (Liu et al. 2025, §3; Lepikhin et al.
2020, "GShard", §2.2).

The e ranks of an expert group (``Grid.expert_group``) each hold experts/e of a layer's
routed experts, split expert_tensor ways; attention, router and shared experts stay with
the dense layout. Per MoE layer and micro-batch a rank routes its tokens (top_k copies
each), sends each copy to the rank holding its expert (all-to-all dispatch), runs its
experts' grouped GEMMs, and sends the results back (all-to-all combine); backward runs the
same two all-to-alls on the gradients.

Work per rank follows from token conservation: the stage's data x context x tensor ranks
share the stage's tokens, so a rank's routed FLOPs are the layer's (one micro-batch of the
whole sequence, ``dlsim.workload.model.MoEBlock``) / (context·tensor), times the busiest
rank's load over the mean: ``router_imbalance``, capped by ``capacity_factor`` (tokens beyond
capacity are dropped; dropless, None, caps nothing). With every expert on every rank
(e = 1) routing cannot unbalance the ranks, only a capacity below 1 can drop tokens.

All-to-all bytes per rank and direction: a rank dispatches top_k copies of its tokens, 1/(c·t)
of the micro-batch's b·s (the dispatcher splits a tensor group's tokens among its ranks when
expert_tensor < tensor), of h·dtype bytes each, scaled by the same load factor; uniform
routing sends (e-1)/e of them off the rank (``alltoall`` lowering, ``dlsim.network``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dlsim.parallel.grid import Grid
from dlsim.workload.model import Kernel, Layer, Model, MoEBlock


@dataclass(frozen=True)
class ExpertLayout:
    """Expert degree ``expert`` (e) and ``expert_tensor`` (et) of a plan, and the dense
    tensor degree ``tensor`` the tokens arrive split by."""

    expert: int = 1
    expert_tensor: int = 1
    tensor: int = 1


def expert_coordinates(grid: Grid, rank: int) -> tuple[int, int, int]:
    """(expert-data replica, expert rank, expert-tensor rank) of grid rank ``rank``: its
    index within its stage re-read with expert tensor innermost (``Grid``'s folding)."""
    local, et = rank % grid.stage_size, grid.expert_tensor
    return local // (grid.expert * et), local // et % grid.expert, local % et


def load_factor(moe: MoEBlock, expert: int) -> float:
    """The busiest rank's routed tokens over the mean: min(router_imbalance, capacity)."""
    capacity = math.inf if moe.capacity_factor is None else moe.capacity_factor
    return min(moe.router_imbalance if expert > 1 else 1.0, capacity)


def routed_params(layer: Layer) -> int:
    """A MoE layer's routed-expert parameters (all experts); 0 for any other layer."""
    moe = layer.moe
    return 0 if moe is None else moe.experts * moe.expert_params


def rank_params(layer: Layer, layout: ExpertLayout) -> float:
    """Parameters one rank holds of ``layer`` (unsharded): the dense part split ``tensor``
    ways, the routed experts experts/e of them split et ways."""
    routed = routed_params(layer)
    return ((layer.params - routed) / layout.tensor
            + routed / (layout.expert * layout.expert_tensor))


def rank_expert_params(layer: Layer, layout: ExpertLayout) -> float:
    """The routed-expert parameters one rank holds: what syncs over the expert-data group."""
    return routed_params(layer) / (layout.expert * layout.expert_tensor)


def dispatch_bytes(moe: MoEBlock, layout: ExpertLayout) -> float:
    """The all-to-all buffer of one rank for one direction (``moe.tokens`` already the
    context rank's share): top_k·tokens/t·h·dtype·load factor."""
    return (moe.top_k * moe.tokens / layout.tensor * moe.token_bytes
            * load_factor(moe, layout.expert))


def reprice_experts(model: Model, layout: ExpertLayout) -> Model:
    """The routed-expert kernels of every MoE layer as the busiest rank runs them: 1/t of the
    (context rank's) FLOPs and bytes, times the load factor; tensor parallelism leaves them
    whole (``dlsim.parallel.tensor``), so this applies after ``shard_model``."""
    if not any(layer.moe is not None for layer in model.layers):
        return model
    return replace(model, layers=tuple(_repriced(layer, layout) for layer in model.layers))


def _repriced(layer: Layer, layout: ExpertLayout) -> Layer:
    moe = layer.moe
    if moe is None:
        return layer
    scale = load_factor(moe, layout.expert) / layout.tensor
    if scale == 1.0:
        return layer

    def price(kernels: tuple[Kernel, ...]) -> tuple[Kernel, ...]:
        return tuple(replace(k, flops=k.flops * scale, bytes=k.bytes * scale)
                     if k.name in moe.expert_kernels else k for k in kernels)

    return replace(layer, forward=price(layer.forward), backward=price(layer.backward))
