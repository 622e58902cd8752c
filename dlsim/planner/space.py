"""The plan space: every way to run one model on N devices of one system that the planner
searches, as a table of dimensions.

A plan fixes the tensor, context, pipeline and data degrees (d·c·t·p = N), the expert
degrees folded out of a stage's ranks, the micro-batch, the pipeline schedule and its virtual
stages, the ZeRO stage and its shard group, the data-parallel collective algorithm,
placement, Transformer Engine's tensor-parallel overlap, and the choices no feasibility rule
reads: recomputation, sequence parallelism
(t > 1, Korthikanti et al. 2022, §4.2.2), optimizer offload and the NCCL protocol. Each is one
entry of ``DIMENSIONS``: its values, given the dimensions before it. Which plans run is not
decided here: every candidate passes ``dlsim.parallel.feasibility.check``, the rules the engine
applies, so a dimension the engine refuses today (context, expert, hybrid sharding, ZeRO-2/3
with a pipeline) is enumerated, counted and dropped, and is searched the day the engine
accepts it. What is decided here is the breadth of the search:

- tensor: powers of two within one NVLink domain (the node, or ``nvlink_domain_nodes`` nodes
  of one NVSwitch fabric such as NVL72), as Megatron-LM keeps tensor groups on NVLink;
- context: 1 and every c whose 2c chunks divide the sequence (causal load balancing);
- pipeline: every divisor of the blocks; virtual stages: every divisor > 1 of the blocks per
  stage (interleaved schedules);
- expert (MoE shapes): every divisor of the experts dividing a stage's d·c·t ranks, and
  expert_tensor a tensor degree dividing what is left;
- micro-batch: every divisor of the replica's batch;
- ZeRO 0-3 wherever the dense gradient group (data × context) has more than one rank, with
  shard groups every proper divisor k of the data degree (1 < k < d) besides the whole group;
- the data-parallel algorithm (``searched_algorithms``) for ZeRO-0 all-reduces (ZeRO's
  reduce-scatters and all-gathers run as rings, so its plans name the ring only); an
  algorithm with a ``runs_on`` check (NVLS: one NVSwitch of generation 3 or later) is
  searched where the check passes for every gradient group of the layout on the cluster
  (``PlanSpace.runs``), and only with the protocols NCCL runs it with (NVLS: Simple);
- tensor-parallel overlap (``tp_comm_overlap``, with sequence parallelism) at t > 1 on devices
  whose profile prices its contention (``comm_contention`` > 0);
- every device is used (d = N / (t·c·p)), and d divides the global batch.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, fields
from functools import lru_cache
from typing import Any

import numpy as np

from dlsim.cluster.build import placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import CommunicationSpec
from dlsim.hardware.profiles import DeviceProfile
from dlsim.hardware.topology import Topology
from dlsim.network.algorithms import algorithms, algorithms_for, lower
from dlsim.network.protocol import PROTOCOLS
from dlsim.network.protocol import runs as protocol_runs
from dlsim.parallel.context import needs_head_split
from dlsim.parallel.feasibility import JobSpec, Lowered, infeasible
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import OFFLOAD, RECOMPUTE
from dlsim.parallel.schedules import schedule_names, schedule_of
from dlsim.workload.shapes import TransformerShape

PLACEMENTS = ("pack", "spread")
# communication.protocol: auto (NCCL's choice per collective) or one NCCL protocol forced
PLAN_PROTOCOLS = ("auto", *PROTOCOLS)


def searched_algorithms() -> tuple[str, ...]:
    """The data-parallel all-reduce algorithms the planner tries, in precedence order: the
    registered ones that ask for it (dlsim.network.algorithms; ring, tree, hierarchical and
    NVLS today, NVLS only where its ``runs_on`` check passes: ``PlanSpace.runs``)."""
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
    nvlink_domain: int = 0  # devices sharing one NVLink fabric (0: the node's)
    # the built cluster, for algorithms whose ``runs_on`` reads it (None: none checked)
    topology: Topology | None = field(default=None, compare=False)

    @classmethod
    def on(cls, topology: Topology, precision: str, nvlink_domain_nodes: int = 1) -> Target:
        memo: dict[tuple[int, str], np.ndarray] = {}

        def place(n: int, policy: str) -> np.ndarray:
            if (n, policy) not in memo:
                memo[n, policy] = placement(n, topology, policy)
            return memo[n, policy]

        assert topology.device is not None  # system presets name their device
        return cls(topology.device, precision, topology.n_devices, topology.devices_per_node,
                   place, nvlink_domain=nvlink_domain_nodes * topology.devices_per_node,
                   topology=topology)


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
    context: int = 1
    expert: int = 1
    expert_tensor: int = 1
    shard_group: int | None = None
    offload: str = "none"
    protocol: str = "auto"
    tp_comm_overlap: bool = False

    def microbatches_for(self, global_batch: int) -> int:
        return global_batch // self.data // self.microbatch

    def as_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in PLAN_FIELDS}


PLAN_FIELDS = tuple(f.name for f in fields(Plan))


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


@dataclass(frozen=True)
class Problem:
    """What the dimensions' values depend on: the model, the batch and the target."""

    shape: TransformerShape
    global_batch: int
    target: Target
    algorithms: tuple[str, ...] = field(default_factory=lambda: searched_algorithms())


Chosen = dict[str, Any]  # the values of the dimensions before this one


@dataclass(frozen=True)
class Dimension:
    """One axis of the space: ``values(problem, chosen)`` given the dimensions before it;
    ``checked``: whether the feasibility rules read it (plans that differ only in unchecked
    dimensions share one verdict); ``reads``: the dimensions ``values`` reads of
    ``chosen`` (None: any), which an unchecked one and those after ``PREFIX_END`` name, so
    that their values are listed once per choice of those, not once per layout."""

    name: str
    values: Callable[[Problem, Chosen], Sequence[Any]]
    checked: bool = True
    reads: tuple[str, ...] | None = None


def _tensor(pr: Problem, _: Chosen) -> list[int]:
    domain = pr.target.nvlink_domain or pr.target.devices_per_node
    return [1 << k for k in range(domain.bit_length())
            if (1 << k) <= domain and pr.target.devices % (1 << k) == 0]


def _context(pr: Problem, ch: Chosen) -> list[int]:
    s = pr.shape.seq_len
    return [c for c in divisors(s) if (c == 1 or s % (2 * c) == 0)
            and pr.target.devices % (ch["tensor"] * c) == 0]


def _pipeline(pr: Problem, ch: Chosen) -> list[int]:
    return [p for p in divisors(pr.shape.layers)
            if pr.target.devices % (ch["tensor"] * ch["context"] * p) == 0]


def _data(pr: Problem, ch: Chosen) -> list[int]:
    d = pr.target.devices // (ch["tensor"] * ch["context"] * ch["pipeline"])
    return [d] if pr.global_batch % d == 0 else []


def _expert(pr: Problem, ch: Chosen) -> list[int]:
    moe = pr.shape.moe
    if moe is None:
        return [1]
    stage = ch["data"] * ch["context"] * ch["tensor"]
    return [e for e in divisors(moe.experts) if stage % e == 0]


def _expert_tensor(pr: Problem, ch: Chosen) -> list[int]:
    if pr.shape.moe is None:
        return [1]
    stage = ch["data"] * ch["context"] * ch["tensor"]
    return [k for k in _tensor(pr, ch) if stage % (ch["expert"] * k) == 0]


def _microbatch(pr: Problem, ch: Chosen) -> list[int]:
    return divisors(pr.global_batch // ch["data"])


def _schedule(_: Problem, ch: Chosen) -> Sequence[str]:
    return ("1f1b",) if ch["pipeline"] == 1 else schedule_names()  # p = 1: moot, named once


def _virtual(pr: Problem, ch: Chosen) -> list[int]:
    if not schedule_of(ch["schedule"]).chunked:
        return [1]
    return [v for v in divisors(pr.shape.layers // ch["pipeline"]) if v > 1]


def _dense_group(ch: Chosen) -> int:
    return int(ch["data"] * ch["context"])


def _zero(_: Problem, ch: Chosen) -> tuple[int, ...]:
    return (0, 1, 2, 3) if _dense_group(ch) > 1 else (0,)


def _shard_group(_: Problem, ch: Chosen) -> list[int | None]:
    if ch["zero_stage"] == 0:
        return [None]
    return [None, *(k for k in divisors(ch["data"]) if 1 < k < ch["data"])]


def _algorithm(pr: Problem, ch: Chosen) -> tuple[str, ...]:
    """The searched algorithms for a ZeRO-0 all-reduce (the first otherwise), less those
    whose ``runs_on`` check cannot pass here: the group is larger than one node, or the
    cluster's nodes fail it (NVLS on A100's NVSwitch gen 2)."""
    if ch["zero_stage"] or _dense_group(ch) < 2:
        return pr.algorithms[:1]
    checked = _checked_on_hardware(pr.algorithms)
    return tuple(a for a in pr.algorithms if a not in checked or (
        _dense_group(ch) <= pr.target.devices_per_node and node_runs(a, pr.target)))


@lru_cache(maxsize=64)
def _checked_on_hardware(names: tuple[str, ...]) -> frozenset[str]:
    """Those of ``names`` with a ``runs_on`` check (asked for every layout: memoised)."""
    every = algorithms()
    return frozenset(a for a in names if every[a].runs_on is not None)


def _tp_comm_overlap(pr: Problem, ch: Chosen) -> tuple[bool, ...]:
    """Transformer Engine's tensor-parallel overlap where the device prices what the
    overlapped collectives take of its compute (``comm_contention`` > 0: H100); elsewhere
    the overlap would be free, an optimistic answer no measurement backs."""
    return (False, True) if ch["tensor"] > 1 and pr.target.device.comm_contention else (False,)


def _sequence_parallel(_: Problem, ch: Chosen) -> tuple[bool, ...]:
    if ch["tp_comm_overlap"]:  # TE's overlap runs on sequence parallelism's collectives
        return (True,)
    return (False, True) if ch["tensor"] > 1 else (False,)


def _protocol(pr: Problem, ch: Chosen) -> tuple[str, ...]:
    """auto and each protocol NCCL runs the data-parallel algorithm with (NVLS: Simple)."""
    if pr.target.devices == 1 or pr.target.device.kind != "gpu":
        return ("auto",)
    return tuple(p for p in PLAN_PROTOCOLS if p == "auto" or protocol_runs(p, ch["algorithm"]))


DIMENSIONS: tuple[Dimension, ...] = (
    Dimension("tensor", _tensor),
    Dimension("context", _context),
    Dimension("pipeline", _pipeline),
    Dimension("data", _data),
    Dimension("expert", _expert),
    Dimension("expert_tensor", _expert_tensor),
    Dimension("microbatch", _microbatch),
    # after the prefix (PREFIX_END): each names what it reads
    Dimension("schedule", _schedule, reads=("pipeline",)),
    Dimension("virtual_stages", _virtual, reads=("schedule", "pipeline")),
    Dimension("zero_stage", _zero, reads=("data", "context")),
    Dimension("shard_group", _shard_group, reads=("zero_stage", "data")),
    Dimension("algorithm", _algorithm, reads=("zero_stage", "data", "context")),
    Dimension("placement", lambda pr, ch: PLACEMENTS, reads=()),
    Dimension("tp_comm_overlap", _tp_comm_overlap, reads=("tensor",)),
    # read by no feasibility rule (they change no layout): one verdict for all their values
    Dimension("recompute", lambda pr, ch: RECOMPUTE, checked=False, reads=()),
    Dimension("sequence_parallel", _sequence_parallel, checked=False,
              reads=("tensor", "tp_comm_overlap")),
    Dimension("offload", lambda pr, ch: OFFLOAD, checked=False, reads=()),
    Dimension("protocol", _protocol, checked=False, reads=("algorithm",)),
)


@dataclass
class SpaceCount:
    """How much of the space a search went through: every plan ``enumerated``, those the
    engine's rules accept (``feasible``) and those the bounds skipped unchecked (``pruned``)."""

    enumerated: int = 0
    feasible: int = 0
    pruned: int = 0


# one layout below its prefix: the values of the checked dimensions after ``PREFIX_END``,
# their value indices (the enumeration order), the free dimensions' values and the plans
Tail = tuple[Chosen, tuple[int, ...], list[Sequence[Any]], int]
# the checked dimensions up to this one are a layout's prefix; those after it read none of
# its values but what their ``reads`` name, so their walk is shared by every prefix that
# agrees there (GPT-3 on 1,024 GPUs: 2.3 M layouts over six batches from 13,000 prefixes)
PREFIX_END = "microbatch"


class PlanSpace:
    """The plans of ``DIMENSIONS`` for one model, batch and target; ``only`` narrows a
    dimension to the values it names (tests, ablations)."""

    def __init__(self, shape: TransformerShape, global_batch: int, target: Target,
                 only: Mapping[str, Sequence[Any]] | None = None,
                 dimensions: tuple[Dimension, ...] = DIMENSIONS) -> None:
        self.problem = Problem(shape, global_batch, target)
        self.only = dict(only or {})
        checked = [d for d in dimensions if d.checked]
        split = [d.name for d in checked].index(PREFIX_END) + 1
        self.head, self.tail = checked[:split], checked[split:]
        self.free = [d for d in dimensions if not d.checked]
        later = self.tail + self.free
        head = {d.name for d in self.head}
        # what the tail's and the free dimensions' values read of a prefix (None: all of it)
        self._reads = (None if any(d.reads is None for d in later) else
                       tuple(n for n in head if any(n in (d.reads or ()) for d in later)))
        self.count = SpaceCount()
        self._prefixes: list[tuple[Chosen, tuple[int, ...], list[Tail]]] | None = None
        self._comm: dict[str, CommunicationSpec] = {}
        self._runs: dict[tuple[int, ...], bool] = {}

    def _values(self, dim: Dimension, chosen: Chosen) -> Sequence[Any]:
        values = dim.values(self.problem, chosen)
        allowed = self.only.get(dim.name)
        if allowed is None or (dim.name == "schedule" and chosen["pipeline"] == 1):
            return values  # without a pipeline the schedule is moot: never narrowed away
        return [v for v in values if v in allowed]

    def _walk(self, dims: Sequence[Dimension], given: Chosen
              ) -> Iterator[tuple[Chosen, tuple[int, ...]]]:
        """Every choice of ``dims`` after the values ``given``, depth first, with each
        value's index at its level, without recursion (a stack of the values left)."""
        if not dims:
            yield {}, ()
            return
        chosen, names = dict(given), [d.name for d in dims]
        stack = [enumerate(self._values(dims[0], chosen))]
        order: list[int] = []
        while stack:
            level = len(stack) - 1
            item = next(stack[-1], None)
            if item is None:
                stack.pop()
                continue
            del order[level:]
            order.append(item[0])
            chosen[names[level]] = item[1]
            if level + 1 == len(dims):
                yield {n: chosen[n] for n in names}, tuple(order)
            else:
                stack.append(enumerate(self._values(dims[level + 1], chosen)))

    def prefixes(self) -> list[tuple[Chosen, tuple[int, ...], list[Tail]]]:
        """Each prefix of a layout (the checked dimensions up to ``PREFIX_END``), its value
        indices, and its layouts as ``Tail``s, in enumeration order; prefixes that agree on
        what the rest reads share one list. Walked once and kept."""
        if self._prefixes is None:
            shared: dict[tuple, list[Tail]] = {}
            self._prefixes = []
            for prefix, order in self._walk(self.head, {}):
                key = (tuple(prefix[n] for n in self._reads) if self._reads is not None
                       else tuple(prefix.values()))
                if key not in shared:
                    shared[key] = []
                    for tail, tail_order in self._walk(self.tail, prefix):
                        layout = {**prefix, **tail}
                        free = [self._values(d, layout) for d in self.free]
                        shared[key].append((tail, tail_order, free, math.prod(map(len, free))))
                self._prefixes.append((prefix, order, shared[key]))
        return self._prefixes

    def layouts(self) -> Iterator[tuple[tuple[int, ...], Chosen, list[Sequence[Any]], int]]:
        """Each layout (the checked dimensions' values) in enumeration order: its value
        indices, its values, the unchecked dimensions' values (which depend on the checked
        ones only) and how many plans that makes."""
        for prefix, order, tails in self.prefixes():
            for tail, tail_order, free, count in tails:
                yield order + tail_order, {**prefix, **tail}, free, count

    def size(self) -> int:
        """Plans enumerated, counted without checking any (what --max-plans bounds)."""
        totals: dict[int, int] = {}
        for _, _, tails in self.prefixes():
            if id(tails) not in totals:
                totals[id(tails)] = sum(count for *_, count in tails)
        return sum(totals[id(tails)] for _, _, tails in self.prefixes())

    def __iter__(self) -> Iterator[Plan]:
        """Every feasible plan, in a fixed order (so ties break the same)."""
        names = [d.name for d in self.free]
        for order, layout, free, count in self.layouts():
            self.count.enumerated += count
            if not self.layout_runs(order, layout, free, count):
                continue
            self.count.feasible += count
            for values in itertools.product(*free):
                yield self.plan(layout, dict(zip(names, values)))

    def plan(self, layout: Chosen, free: Chosen) -> Plan:
        return Plan(self.problem.target.devices, **layout, **free)

    def layout_runs(self, order: tuple[int, ...], layout: Chosen,
                    free: list[Sequence[Any]], count: int) -> bool:
        """Whether the engine runs the plans of the layout at ``order`` (its value indices):
        checked once, with its first free values (the rules read none of the others)."""
        if order not in self._runs:
            names = [d.name for d in self.free]
            self._runs[order] = bool(count) and self.runs(
                self.plan(layout, {n: v[0] for n, v in zip(names, free)}))
        return self._runs[order]

    def runs(self, plan: Plan) -> bool:
        """Whether the engine runs ``plan`` (``dlsim.parallel.feasibility``)."""
        pr = self.problem
        if plan.algorithm not in self._comm:
            self._comm[plan.algorithm] = CommunicationSpec(data_parallel=plan.algorithm)
        job = job_of(plan, pr.shape, pr.global_batch, pr.target, self._comm[plan.algorithm])
        return infeasible(job, lambda n: pr.target.place(n, plan.placement),
                          pr.target.lowered) is None and runs_on_cluster(plan, pr.target)


def node_runs(algorithm: str, target: Target) -> bool:
    """Whether ``algorithm``'s ``runs_on`` check passes for an all-reduce over one node's
    devices (memoised in ``target.lowered``)."""
    check = algorithms()[algorithm].runs_on
    if check is None:
        return True
    if target.topology is None:
        return False
    key = ("node_runs", algorithm)
    if key not in target.lowered:
        node = target.place(target.devices_per_node, "pack")
        ok = check(target.topology, lower("allreduce", algorithm, node, 1.0))
        target.lowered[key] = None if ok else ScenarioError(
            f"{algorithm} does not run on one node", field="algorithm")
    return target.lowered[key] is None


def runs_on_cluster(plan: Plan, target: Target) -> bool:
    """Whether the data-parallel algorithm's ``runs_on`` check (NVLS: every flow through one
    NVSwitch of generation 3 or later) passes for every gradient group (data x context) of
    ``plan`` where ``plan.placement`` puts it; the engine's tuner refuses it otherwise.
    Memoised in ``target.lowered`` per layout."""
    check = algorithms()[plan.algorithm].runs_on
    if check is None or plan.zero_stage or plan.data * plan.context < 2:
        return True
    if target.topology is None:
        return False
    key = ("runs_on", plan.algorithm, plan.data, plan.tensor, plan.pipeline, plan.context,
           plan.placement)
    if key not in target.lowered:
        grid = Grid(plan.data, plan.tensor, plan.pipeline, plan.context)
        where = target.place(plan.gpus, plan.placement)
        groups = {tuple(where[list(grid.data_group(s, k, None))])
                  for s in range(plan.pipeline) for k in range(plan.tensor)}
        fails = any(not check(target.topology, lower("allreduce", plan.algorithm,
                                                     np.array(g), 1.0))
                    for g in groups)
        target.lowered[key] = ScenarioError(f"{plan.algorithm} does not run on these "
                                            "groups", field="algorithm") if fails else None
    return target.lowered[key] is None


def enumerate_plans(shape: TransformerShape, global_batch: int, target: Target, *,
                    schedules: tuple[str, ...] | None = None,
                    recompute: tuple[str, ...] | None = None,
                    placements: tuple[str, ...] | None = None,
                    algorithms: tuple[str, ...] | None = None,
                    sequence_parallel: tuple[bool, ...] | None = None,
                    **only: Sequence[Any]) -> Iterator[Plan]:
    """Every feasible plan of ``PlanSpace``, narrowed by the keywords (each a dimension's
    allowed values; None: all of them)."""
    named = {"schedule": schedules, "recompute": recompute, "placement": placements,
             "algorithm": algorithms, "sequence_parallel": sequence_parallel, **only}
    narrowed = {k: v for k, v in named.items() if v is not None}
    return iter(PlanSpace(shape, global_batch, target, narrowed))


def context_comm_for(shape: TransformerShape) -> str:
    """The planner's context exchange: the ring, but for attention only a2a runs."""
    return "a2a" if needs_head_split(shape) else "p2p"


def job_of(plan: Plan, shape: TransformerShape, global_batch: int, target: Target,
           communication: CommunicationSpec | None = None) -> JobSpec:
    """What the feasibility rules read of ``plan``: the scenario ``scenario_of`` writes."""
    comm = communication or CommunicationSpec(data_parallel=plan.algorithm,
                                              protocol=plan.protocol)
    return JobSpec(shape, shape.model_layers, target.device, target.devices,
                   target.devices_per_node, target.precision, global_batch, comm,
                   plan.microbatch, plan.data, plan.tensor, plan.pipeline, plan.schedule,
                   plan.virtual_stages, plan.zero_stage, context=plan.context,
                   expert=plan.expert, expert_tensor=plan.expert_tensor,
                   shard_group=plan.shard_group, context_comm=context_comm_for(shape))


def runs(plan: Plan, shape: TransformerShape, global_batch: int, target: Target) -> bool:
    """Whether the engine runs ``plan`` (``dlsim.parallel.feasibility``)."""
    return infeasible(job_of(plan, shape, global_batch, target),
                      lambda n: target.place(n, plan.placement),
                      target.lowered) is None and runs_on_cluster(plan, target)
