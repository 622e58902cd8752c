"""Which ranks share model state under ZeRO / FSDP, and how a sharded exchange runs.

The dense gradient group of a stage's tensor rank is its data x context replicas
(``Grid.data_group(s, k, c=None)``: context ranks hold the same weights). ZeRO shards model
state over the whole group; hybrid sharding (``parallelism.shard_group: k``: PyTorch FSDP's
HYBRID_SHARD, DeepSpeed ZeRO++ hpZ, Megatron-Core's ``num_distributed_optimizer_instances``)
shards within runs of k consecutive members, which ``pack`` places on one node when k fits,
and replicates across the D/k runs. A parameter all-gather then stays inside its shard
group; a gradient exchange is a reduce-scatter inside the shard group followed by an
all-reduce of the 1/k shard across the replica group, the members holding the same shard
(Zhao et al. 2023, "PyTorch FSDP", §3.2.2 hybrid sharding; Megatron-Core
``DistributedDataParallel``: one reduce-scatter per instance, then an all-reduce across
``intra_dp_cp`` instances).

A collective here carries, in a symmetric run, the identical ones of every simulated tensor
rank and of every shard (or replica) group, as ``instances`` equal sub-groups; in a full run
each rank names its own group, and the group's index goes into the key so that the groups
stay apart.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from dlsim.parallel.grid import Grid


@dataclass(frozen=True)
class Groups:
    """Equal consecutive sub-groups run at once, and a key suffix telling groups apart."""

    ranks: tuple[int, ...]
    instances: int
    tag: str

    @property
    def size(self) -> int:
        return len(self.ranks) // self.instances if self.instances else 0


def dense_group(grid: Grid, stage: int, k: int) -> tuple[int, ...]:
    """The ranks holding the same dense weights as tensor rank ``k`` of ``stage``."""
    return grid.data_group(stage, k, c=None)


def sharding_groups(grid: Grid, stage: int, ks: Sequence[int], shard: int, replica: int,
                    symmetric: bool, across: bool = False, c: int = 0) -> Groups:
    """The shard groups (``across``: the replica groups) of tensor ranks ``ks`` at ``stage``:
    every one of them in a symmetric run, else the one holding replica ``replica``'s
    context rank ``c`` (the simulated rank)."""
    ranks: list[int] = []
    instances, tag = 0, ""
    for k in ks:
        dense = dense_group(grid, stage, k)
        parts = ([dense[i::shard] for i in range(shard)] if across
                 else [dense[i:i + shard] for i in range(0, len(dense), shard)])
        if not symmetric:
            mine = grid.rank(stage, replica, k, c)
            index = next(n for n, part in enumerate(parts) if mine in part)
            if len(parts) > 1:
                tag = f" {'x' if across else 'g'}{index}"
            parts = [parts[index]]
        for part in parts:
            ranks.extend(part)
            instances += 1
    return Groups(tuple(ranks), instances, tag)
