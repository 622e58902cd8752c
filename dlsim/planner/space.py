"""The plan space: every way to run one model on N devices of one system.

A plan fixes the data, tensor and pipeline degrees (d·t·p = N), the micro-batch, the pipeline
schedule (and its virtual stages), the ZeRO stage, recomputation, placement, the
data-parallel collective algorithm and, with t > 1, sequence parallelism (Korthikanti et al.
2022, §4.2.2). Only plans a framework could actually run are produced:
tensor degrees divide the attention heads and the hidden size (Megatron-LM's requirement),
pipeline stages divide the transformer blocks (interleaving needs blocks divisible by p·v and
micro-batches divisible by p, as Megatron-LM's interleaved schedule does), the global batch
divides into d replicas of whole micro-batches, and ZeRO is used only without a pipeline.
ZeRO's reduce-scatter and all-gathers run as rings, so its plans name the ring only.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import asdict, dataclass

from dlsim.network.algorithms import algorithms_for
from dlsim.parallel.memory import RECOMPUTE
from dlsim.parallel.schedules import schedule_names, schedule_of

PLACEMENTS = ("pack", "spread")
VIRTUAL_STAGES = (2, 4)


def searched_algorithms() -> tuple[str, ...]:
    """The data-parallel all-reduce algorithms the planner tries, in precedence order: the
    registered ones that ask for it (dlsim.network.algorithms; ring, tree and hierarchical
    as shipped). Read when plans are enumerated, so a registration made later counts."""
    return tuple(name for name, a in algorithms_for("allreduce").items() if a.planner)


@dataclass(frozen=True)
class ModelShape:
    """What the plan space needs to know about a model."""

    blocks: int  # repeated layers a pipeline can cut between (transformer blocks)
    heads: int | None  # None: tensor parallelism does not apply (CNN, MLP)
    hidden: int | None


@dataclass(frozen=True)
class Plan:
    gpus: int
    data: int
    tensor: int
    pipeline: int
    microbatch: int
    schedule: str
    virtual_stages: int
    zero_stage: int
    recompute: str
    placement: str
    algorithm: str
    sequence_parallel: bool = False

    def microbatches_for(self, global_batch: int) -> int:
        return global_batch // self.data // self.microbatch

    def as_dict(self) -> dict[str, int | str]:
        return asdict(self)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


def _powers_of_two_dividing(n: int, limit: int) -> list[int]:
    out, k = [], 1
    while k <= limit:
        if n % k == 0:
            out.append(k)
        k *= 2
    return out


def enumerate_plans(shape: ModelShape, gpus: int, global_batch: int, devices_per_node: int,
                    *, max_microbatch: int = 8, schedules: tuple[str, ...] | None = None,
                    recompute: tuple[str, ...] = RECOMPUTE,
                    placements: tuple[str, ...] = PLACEMENTS,
                    algorithms: tuple[str, ...] | None = None,
                    sequence_parallel: tuple[bool, ...] = (False, True)) -> Iterator[Plan]:
    """Every runnable plan for ``gpus`` devices, in a fixed order (so ties break the same);
    ``algorithms`` defaults to ``searched_algorithms()``, ``schedules`` to the registered
    ones (dlsim.parallel.schedules: gpipe, 1f1b, interleaved as shipped)."""
    if algorithms is None:
        algorithms = searched_algorithms()
    if schedules is None:
        schedules = schedule_names()
    tensor_options = [1]
    if shape.heads is not None and shape.hidden is not None:
        tensor_options = [t for t in _powers_of_two_dividing(gpus, 2 * devices_per_node)
                          if shape.heads % t == 0 and shape.hidden % t == 0]
    for t in tensor_options:
        for p in divisors(shape.blocks):
            if gpus % (t * p):
                continue
            d = gpus // (t * p)
            if global_batch % d:
                continue
            per_replica = global_batch // d
            for b in _powers_of_two_dividing(per_replica, max_microbatch):
                m = per_replica // b
                for schedule, v in _schedules(schedules, p, m, shape.blocks):
                    for zero in (((0, 1, 2, 3) if t == 1 else (0, 1, 2))
                                 if p == 1 and d > 1 else (0,)):
                        for rc, sp in itertools.product(
                                recompute, sequence_parallel if t > 1 else (False,)):
                            for place in placements:
                                for algo in (algorithms if d > 1 and zero == 0
                                             else algorithms[:1]):
                                    yield Plan(gpus, d, t, p, b, schedule, v, zero, rc, place,
                                               algo, sp)


def _schedules(allowed: tuple[str, ...], p: int, m: int,
               blocks: int) -> Iterator[tuple[str, int]]:
    if p == 1:  # no pipeline: the schedule is moot, name it once
        yield "1f1b", 1
        return
    for schedule in allowed:
        if not schedule_of(schedule).chunked:
            yield schedule, 1
        elif m % p == 0:
            for v in VIRTUAL_STAGES:
                if blocks % (p * v) == 0:
                    yield schedule, v
