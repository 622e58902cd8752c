"""The 3D rank grid of data x tensor x pipeline parallelism: which rank is which.

A parallelism layout, not cluster work: placement (dlsim.cluster.build) then maps these ranks to
devices, and the strategy, pipeline and planner read groups off it.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Grid:
    """The 3D rank layout of data x tensor x pipeline parallelism, Megatron-LM's order:
    rank = ((stage * data) + replica) * tensor + k. A tensor group is ``tensor`` consecutive
    ranks, so ``pack`` placement keeps it inside one node on its fast links; the replicas of
    a stage come next, and pipeline stages are outermost, across nodes."""

    data: int
    tensor: int
    pipeline: int

    @property
    def size(self) -> int:
        return self.data * self.tensor * self.pipeline

    def rank(self, stage: int, replica: int, k: int) -> int:
        return (stage * self.data + replica) * self.tensor + k

    def tensor_group(self, stage: int, replica: int) -> tuple[int, ...]:
        return tuple(self.rank(stage, replica, k) for k in range(self.tensor))

    def data_group(self, stage: int, k: int) -> tuple[int, ...]:
        return tuple(self.rank(stage, r, k) for r in range(self.data))
