"""The rank grid of data x context x tensor x pipeline parallelism, with expert parallelism
folded into it: which rank is which.

A parallelism layout, not cluster work: placement (dlsim.cluster.build) then maps these ranks to
devices, and the builder, the pipeline and the planner read groups off it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    """Megatron-Core's rank order (tp-cp-dp-pp, tensor innermost):
    rank = ((stage * data + replica) * context + c) * tensor + k. A tensor group is
    ``tensor`` consecutive ranks, so ``pack`` placement keeps it inside one node on its fast
    links; the context ranks of a replica come next, then the replicas of a stage, and
    pipeline stages are outermost, across nodes.

    Expert parallelism is folded out of a stage's data x context x tensor ranks (Liu et al.
    2025, "MoE Parallel Folding", §3): the stage's ``data * context * tensor`` consecutive
    ranks are re-read as expert_data x expert x expert_tensor (expert tensor innermost), so
    the MoE layers have groups of their own while attention keeps its own."""

    data: int
    tensor: int
    pipeline: int
    context: int = 1
    expert: int = 1
    expert_tensor: int = 1

    def __post_init__(self) -> None:
        if self.stage_size % (self.expert * self.expert_tensor):
            raise ValueError(f"expert ({self.expert}) x expert_tensor ({self.expert_tensor}) "
                             f"must divide a stage's {self.stage_size} ranks")

    @property
    def size(self) -> int:
        return self.stage_size * self.pipeline

    @property
    def stage_size(self) -> int:
        """Ranks of one pipeline stage: data x context x tensor."""
        return self.data * self.context * self.tensor

    @property
    def expert_data(self) -> int:
        """Replicas of each expert within a stage: what the expert gradients sync over."""
        return self.stage_size // (self.expert * self.expert_tensor)

    def rank(self, stage: int, replica: int, k: int, c: int = 0) -> int:
        return ((stage * self.data + replica) * self.context + c) * self.tensor + k

    def tensor_group(self, stage: int, replica: int, c: int = 0) -> tuple[int, ...]:
        return tuple(self.rank(stage, replica, k, c) for k in range(self.tensor))

    def context_group(self, stage: int, replica: int, k: int) -> tuple[int, ...]:
        """The ranks that hold one sequence's parts: the ring K/V blocks circulate on."""
        return tuple(self.rank(stage, replica, k, c) for c in range(self.context))

    def data_group(self, stage: int, k: int, c: int | None = 0) -> tuple[int, ...]:
        """The replicas of tensor rank ``k`` at context rank ``c``; ``c=None``: of every
        context rank (data x context), what the dense gradients are all-reduced over, since
        context ranks hold the same weights (Megatron-Core's dp-cp group)."""
        cs = range(self.context) if c is None else (c,)
        return tuple(self.rank(stage, r, k, ci) for r in range(self.data) for ci in cs)

    def expert_group(self, stage: int, j: int, k: int) -> tuple[int, ...]:
        """The ``expert`` ranks of expert-data replica ``j`` and expert-tensor rank ``k``
        that exchange tokens in the all-to-all."""
        base = stage * self.stage_size
        return tuple(base + (j * self.expert + e) * self.expert_tensor + k
                     for e in range(self.expert))

    def expert_tensor_group(self, stage: int, j: int, e: int) -> tuple[int, ...]:
        """The ``expert_tensor`` ranks that split the experts of expert rank ``e`` of
        replica ``j``: what the dispatched tokens are all-gathered over."""
        base = stage * self.stage_size + (j * self.expert + e) * self.expert_tensor
        return tuple(base + k for k in range(self.expert_tensor))

    def expert_data_group(self, stage: int, e: int, k: int) -> tuple[int, ...]:
        """The replicas of expert rank ``e``, expert-tensor rank ``k``: what the expert
        gradients are all-reduced over."""
        base = stage * self.stage_size
        return tuple(base + (j * self.expert + e) * self.expert_tensor + k
                     for j in range(self.expert_data))
