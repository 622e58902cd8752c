"""The plan space: every way to run one model on N devices of one system that the planner
searches.

A plan fixes the data, tensor and pipeline degrees (d·t·p = N), the micro-batch, the pipeline
schedule (and its virtual stages), the ZeRO stage, recomputation, placement, the
data-parallel collective algorithm and, with t > 1, sequence parallelism (Korthikanti et al.
2022, §4.2.2). Which plans can run is not decided here: every candidate passes
``dlsim.parallel.feasibility.check``, the rules the engine applies, so no plan is proposed that
the engine refuses. What is decided here is the breadth of the search, Megatron-LM's
conventions: tensor degrees are powers of two within two nodes, pipeline stages hold equal
numbers of transformer blocks (interleaved chunks too: blocks divisible by p·v, v = 2 or 4),
micro-batches are powers of two up to 8, every device is used (d = N / (t·p)), and ZeRO is
searched only without a pipeline and with d > 1. ZeRO's reduce-scatter and all-gathers run as
rings, so its plans name the ring only.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field

import numpy as np

from dlsim.cluster.build import placement
from dlsim.contract.scenario import CommunicationSpec
from dlsim.hardware.profiles import DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import algorithms_for
from dlsim.parallel.feasibility import JobSpec, Lowered, infeasible
from dlsim.parallel.memory import RECOMPUTE
from dlsim.parallel.schedules import schedule_names, schedule_of
from dlsim.workload.shapes import TransformerShape

PLACEMENTS = ("pack", "spread")
VIRTUAL_STAGES = (2, 4)


def searched_algorithms() -> tuple[str, ...]:
    """The data-parallel all-reduce algorithms the planner tries, in precedence order: the
    registered ones that ask for it (dlsim.network.algorithms; ring, tree and hierarchical
    today)."""
    return tuple(name for name, a in algorithms_for("allreduce").items() if a.planner)


@dataclass(frozen=True)
class Target:
    """What plans run on: ``devices`` of one system at one precision; ``place(n, policy)``
    gives the devices of ranks 0..n-1. Both it and ``lowered`` (the feasibility rules'
    verdicts on data-parallel groups) are memoised: thousands of plans share a few layouts."""

    device: DeviceProfile
    precision: str
    devices: int
    devices_per_node: int
    place: Callable[[int, str], np.ndarray]
    lowered: Lowered = field(default_factory=dict)

    @classmethod
    def on(cls, topology: Topology, precision: str) -> Target:
        memo: dict[tuple[int, str], np.ndarray] = {}

        def place(n: int, policy: str) -> np.ndarray:
            if (n, policy) not in memo:
                memo[n, policy] = placement(n, topology, policy)
            return memo[n, policy]

        assert topology.device is not None  # system presets name their device
        return cls(topology.device, precision, topology.n_devices, topology.devices_per_node,
                   place)


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


def _powers_of_two(limit: int) -> list[int]:
    return [1 << k for k in range(limit.bit_length())]


def enumerate_plans(shape: TransformerShape, global_batch: int, target: Target, *,
                    max_microbatch: int = 8, schedules: tuple[str, ...] | None = None,
                    recompute: tuple[str, ...] = RECOMPUTE,
                    placements: tuple[str, ...] = PLACEMENTS,
                    algorithms: tuple[str, ...] | None = None,
                    sequence_parallel: tuple[bool, ...] = (False, True)) -> Iterator[Plan]:
    """Every runnable plan searched for ``target``, in a fixed order (so ties break the same).
    Recomputation and sequence parallelism change no rule, so the plans that differ only in
    them share one verdict. ``algorithms`` defaults to ``searched_algorithms()``."""
    gpus = target.devices
    algorithms = searched_algorithms() if algorithms is None else algorithms
    schedules = schedule_names() if schedules is None else schedules
    verdicts: dict[tuple, bool] = {}
    for t in _powers_of_two_dividing(gpus, 2 * target.devices_per_node):
        for p in divisors(shape.layers):
            if gpus % (t * p):
                continue
            d = gpus // (t * p)
            for b, (schedule, v) in itertools.product(_powers_of_two(max_microbatch),
                                                      _schedules(schedules, p, shape.layers)):
                for zero in (0, 1, 2, 3) if p == 1 and d > 1 else (0,):
                    for rc, sp, place in itertools.product(
                            recompute, sequence_parallel if t > 1 else (False,), placements):
                        for algo in algorithms if d > 1 and zero == 0 else algorithms[:1]:
                            plan = Plan(gpus, d, t, p, b, schedule, v, zero, rc, place, algo,
                                        sp)
                            key = (t, p, b, schedule, v, zero, place, algo)
                            if key not in verdicts:
                                verdicts[key] = runs(plan, shape, global_batch, target)
                            if verdicts[key]:
                                yield plan


def job_of(plan: Plan, shape: TransformerShape, global_batch: int,
           target: Target) -> JobSpec:
    """What the feasibility rules read of ``plan``: the scenario ``scenario_of`` writes."""
    return JobSpec(shape, shape.model_layers, target.device, target.devices,
                       target.devices_per_node, target.precision, global_batch,
                       CommunicationSpec(data_parallel=plan.algorithm), plan.microbatch,
                       plan.data, plan.tensor, plan.pipeline, plan.schedule,
                       plan.virtual_stages, plan.zero_stage)


def runs(plan: Plan, shape: TransformerShape, global_batch: int, target: Target) -> bool:
    """Whether the engine runs ``plan`` (``dlsim.parallel.feasibility``)."""
    return infeasible(job_of(plan, shape, global_batch, target),
                      lambda n: target.place(n, plan.placement), target.lowered) is None


def _schedules(allowed: tuple[str, ...], p: int, blocks: int) -> Iterator[tuple[str, int]]:
    if p == 1:  # no pipeline: the schedule is moot, name it once
        yield "1f1b", 1
        return
    for schedule in allowed:
        if not schedule_of(schedule).chunked:
            yield schedule, 1
        else:
            for v in VIRTUAL_STAGES:
                if blocks % (p * v) == 0:
                    yield schedule, v
