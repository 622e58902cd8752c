"""Lower bounds that let the planner skip plans that cannot reach the top of the ranking.

A plan's estimated step (``dlsim.planner.estimate.combine``) is m micro-batches of its
slowest stage, the bubble, the point-to-point transfers and a tail that is never negative
(stage 0 drains last, so the tail is at least its sync and update). Every stage's time per
micro-batch is its compute plus communication and exposed gathers, so, with C_s stage s's
compute per micro-batch and C its slowest stage's,

    step >= m·C + (sum_s C_s - C)/v = (m - 1/v)·C + sum_s C_s / v,

which reads only the cut's compute: one figure for every ZeRO stage, shard group, algorithm,
placement, offload and protocol of a layout at one recomputation and sequence-parallel
choice (a *block* of plans). Energy is bounded the same way: idle power over the step plus
dynamic power over the m micro-batches' compute (``dlsim.results.power``: the estimate's
compute part is at least m·C). ``dlsim.planner.search`` estimates blocks in the order of
their bounds and skips a block once its bound is worse than the plans it would have to beat;
at a block's first plan that fits it skips the block if its micro-batches, priced with their
communication at each collective's fastest protocol and without ZeRO-3's gathers, are
already worse, and within a block a layout whose micro-batches are (``search._beaten``).
"""

from __future__ import annotations

from dataclasses import dataclass

from dlsim.planner.space import Chosen, Tail
from dlsim.results.power import PowerModel

# a bound computed in another order of floating-point operations than the estimate may
# exceed an equal estimate by an ulp or two; the margin keeps such plans in the search
MARGIN = 1 - 1e-12


def step_lower_bound(compute: tuple[float, ...], microbatches: int, virtual: int) -> float:
    """Seconds no plan of a block beats: ``compute`` per stage per micro-batch, ``virtual``
    chunks per stage (1 without interleaving; the bound is m·C without a pipeline)."""
    slowest = max(compute)
    return MARGIN * ((microbatches - 1 / virtual) * slowest + sum(compute) / virtual)


def energy_lower_bound_J(power: PowerModel, step_s: float, compute_s: float) -> float:
    """Joules of one device over a step of at least ``step_s`` whose compute takes at least
    ``compute_s`` (m·C): idle power throughout, dynamic power while computing."""
    return MARGIN * (power.idle_W * step_s + power.dynamic_W * power.a_compute * compute_s)


@dataclass(frozen=True)
class Block:
    """Plans of the layouts that share a bound, at one choice of the free dimensions the
    bound reads (``choice``: those dimensions' values)."""

    prefix: Chosen  # its layouts' prefix (``PlanSpace.prefixes``: the degrees, micro-batch)
    order: tuple[int, ...]  # the prefix's value indices
    tails: tuple[Tail, ...]  # its layouts below the prefix, in enumeration order
    choice: tuple[tuple[str, object], ...]
    plans: int
    step_s: float  # no plan of the block is faster
    key: tuple[float, float]  # the ranking key no plan of the block beats
