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
(e = 1) routing cannot unbalance the ranks, only a capacity below 1 can drop tokens. The
kernels are Megatron-Core's (``dlsim.workload.moe``): the rank permutes its own tokens' copies
before the dispatch and un-permutes them after the combine; between the two its experts/e
local experts regroup the copies received, run as grouped GEMMs of experts/e groups (each
split expert_tensor ways: f/et wide, on the copies of et ranks) and regroup them back.

All-to-all bytes per rank and direction: a rank dispatches top_k copies of its tokens, 1/(c·t)
of the micro-batch's b·s (the dispatcher splits a tensor group's tokens among its ranks when
expert_tensor < tensor), of h·dtype bytes each, scaled by the same load factor; uniform
routing sends (e-1)/e of them off the rank (``alltoall`` lowering, ``dlsim.network``). With
expert_tensor et > 1 each expert is split et ways, so the copies a rank received are then
all-gathered over its expert-tensor group (each of the et ranks computes f/et of every copy)
and the experts' partial outputs reduce-scattered back before the combine: et times the
all-to-all buffer each (``gather_bytes``).

Before every forward dispatch the ranks exchange their per-expert token counts
(``counts_bytes``, Megatron-Core's ``MoEAlltoAllTokenDispatcher.preprocess``): the dispatch
sizes its variable splits from them. They are tiny; what they cost is a collective's latency
per MoE layer and micro-batch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

from dlsim.parallel.grid import Grid
from dlsim.workload.model import Kernel, Layer, Model, MoEBlock
from dlsim.workload.moe import D2H_COPIES, MOE_KERNELS, moe_backward, moe_kernels

# One expert's token count, ``routing_map.sum(dim=0).long()``: an int64
COUNT_BYTES = 8


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


def rank_kernels(moe: MoEBlock, layout: ExpertLayout) -> tuple[Kernel, ...]:
    """The routed path of a MoE layer (``dlsim.workload.moe``, after the router GEMM) as the
    busiest rank runs it: it routes 1/t of the (context rank's) tokens, its experts/e local
    experts compute on the copies it receives, load factor times its own top_k·tokens/t,
    gathered from the et ranks that split each expert (each computing f/et of them)."""
    tokens = moe.tokens / layout.tensor
    received = moe.top_k * tokens * load_factor(moe, layout.expert) * layout.expert_tensor
    return moe_kernels(moe.hidden, moe.expert_ffn_hidden, moe.experts, moe.top_k,
                       moe.dtype_bytes, tokens, received, moe.experts // layout.expert,
                       layout.expert_tensor, d2h_copies(moe, layout))


def d2h_copies(moe: MoEBlock, layout: ExpertLayout) -> int:
    """The device-to-host copies a token-dropping dispatcher waits for before its permute
    (``dlsim.workload.moe``): all five with expert or expert-tensor ranks, otherwise
    tokens_per_expert and num_out_tokens (the splits are None); none dropless, where the
    copies run beside the permute."""
    if moe.capacity_factor is None:
        return 0
    return D2H_COPIES if layout.expert * layout.expert_tensor > 1 else 2


def counts_bytes(moe: MoEBlock, layout: ExpertLayout) -> float:
    """The token-count exchange before every forward dispatch, nccl-tests' buffer over the e
    ranks of the expert group: each rank's E int64 counts, e of them. Megatron-Core's
    ``MoEAlltoAllTokenDispatcher.preprocess`` all-gathers them over the expert x
    expert-tensor group (``gather_from_sequence_parallel_region(..., tp_ep_group)``) to size
    the all-to-all splits; with et > 1 the expert-tensor all-gather of et times this buffer
    (``counts_gather_bytes``) completes it. None without expert ranks (no dispatch). The
    engine and the planner run it as the dispatch's collective (an all-to-all of this
    buffer over the expert group), not as an all-gather: at E·e int64s both are a few
    launch and link latencies, and which of the two it is has not been measured apart."""
    return 0.0 if layout.expert == 1 else layout.expert * moe.experts * COUNT_BYTES


def counts_gather_bytes(moe: MoEBlock, layout: ExpertLayout) -> float:
    """The expert-tensor half of the token-count all-gather: et·e·E int64s; none at et = 1."""
    et = layout.expert_tensor
    return 0.0 if et == 1 else et * counts_bytes(moe, layout)


def gather_bytes(moe: MoEBlock, layout: ExpertLayout) -> float:
    """The expert-tensor all-gather of the dispatched copies (after the dispatch; the
    reduce-scatter of the experts' outputs before the combine is its mirror), nccl-tests'
    buffer: the et ranks' received copies together, et times ``dispatch_bytes``; none
    without expert tensor parallelism (Megatron-Core's ``MoEAlltoAllTokenDispatcher``
    ``dispatch_postprocess`` / ``combine_preprocess``)."""
    et = layout.expert_tensor
    return 0.0 if et == 1 else et * dispatch_bytes(moe, layout)


def reprice_experts(model: Model, layout: ExpertLayout) -> Model:
    """Every MoE layer's routed path as the busiest rank runs it (``rank_kernels``); tensor
    parallelism leaves it whole (``dlsim.parallel.tensor``), so this applies after
    ``shard_model``."""
    if not any(layer.moe is not None for layer in model.layers):
        return model
    return replace(model, layers=tuple(_repriced(layer, layout) for layer in model.layers))


def _repriced(layer: Layer, layout: ExpertLayout) -> Layer:
    moe = layer.moe
    if moe is None:
        return layer
    forward = rank_kernels(moe, layout)
    backward = moe_backward(forward, moe.hidden, moe.tokens / layout.tensor, moe.top_k,
                            moe.dtype_bytes)
    return replace(layer, forward=_swapped(layer.forward, forward),
                   backward=_swapped(layer.backward, backward))


def _swapped(kernels: tuple[Kernel, ...], path: tuple[Kernel, ...]) -> tuple[Kernel, ...]:
    """``kernels`` with their routed path (one run of ``MOE_KERNELS``) replaced by ``path``."""
    at = [i for i, k in enumerate(kernels) if k.name in MOE_KERNELS]
    return kernels[:at[0]] + path + kernels[at[-1] + 1:]
