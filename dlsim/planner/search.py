"""The planner: enumerate plans, discard those that do not fit, estimate, rank, confirm.

Planning is a funnel, the way good planners work: the memory model (arithmetic) removes plans
that cannot run; the closed-form estimate (``estimate.py``) ranks every remaining plan; the
discrete-event engine simulates only the best few, and those confirmed figures decide the
winner. Every figure a plan carries says where it came from (``step_time_source``).
Objectives: time to train (steps × step time; with a target loss, the steps to reach it at
each searched global batch, ``time_to_loss``), cost (device-hours × the device's hourly
price in its profile) and energy (``dlsim.results.power``: idle power plus dynamic power by
what each device does, from the estimate's parts, or from the engine's spans for the plans it
confirms).
"""

from __future__ import annotations

import bisect
import itertools
import math
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any

from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import DEFAULT_MAX_EVENTS, ClusterSpec
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.hardware.topology import Topology
from dlsim.planner.batches import around_critical
from dlsim.planner.bounds import MARGIN, Block, energy_lower_bound_J, step_lower_bound
from dlsim.planner.confirm import Ahead, pool_of, worker_count
from dlsim.planner.estimate import CostTable, Fabric
from dlsim.planner.factored import Estimator
from dlsim.planner.models import model_name, model_section, model_shape, model_spec
from dlsim.planner.space import (
    Plan,
    PlanSpace,
    SpaceCount,
    Tail,
    Target,
    context_comm_for,
)
from dlsim.planner.time_to_loss import LossTarget, batch_reason, to_target
from dlsim.planner.time_to_loss import summary as loss_summary
from dlsim.results.power import PowerModel, estimated_energy_J, power_model
from dlsim.workload.attention import attention_kernel
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import TransformerShape

# the space is counted before anything is estimated (GPT-3 175B on 1,024 GPUs: 12.4 M plans
# in a few seconds); only feasible plans are estimated
DEFAULT_MAX_PLANS = 50_000_000
OBJECTIVES = {"time": "time_to_train_s", "cost": "cost_usd", "energy": "energy_kwh"}


@dataclass(frozen=True)
class PlanRequest:
    model: str
    cluster: str
    gpus: tuple[int, ...]
    global_batch: int
    precision: str = "bf16"
    optimizer: str = "adam"
    tokens: float | None = None
    objective: str = "time"
    max_days: float | None = None
    budget_usd: float | None = None
    top: int = 10
    confirm: int = 3
    max_plans: int = DEFAULT_MAX_PLANS
    exhaustive: bool = False  # estimate every plan, not only those the bounds leave in
    # with a target loss the global batch is searched: these batches, or (empty) the
    # global_batch·2^k around the critical batch (dlsim.planner.batches)
    target_loss: float | None = None
    global_batches: tuple[int, ...] = ()
    workers: int | None = 1  # processes the confirmations run on (None: one per CPU)


@dataclass
class PlanResult:
    request: PlanRequest
    evaluated: int
    fitting: int
    plans: list[dict[str, Any]]  # ranked: confirmed plans first, then by estimate
    pareto: list[dict[str, Any]]
    explanation: list[str]
    smallest_gpus_meeting_deadline: int | None
    candidates: list[dict[str, Any]] = field(default_factory=list)  # every plan estimated
    wall_s: dict[str, float] = field(default_factory=dict)
    # plans enumerated, feasible (the engine's rules), fitting in memory, estimated, pruned
    space: dict[str, int] = field(default_factory=dict)
    time_to_loss: dict[str, Any] | None = None  # with a target loss (time_to_loss.summary)


def scenario_of(request: PlanRequest, plan: Plan, devices_per_node: int,
                global_batch: int | None = None) -> dict[str, Any]:
    """The scenario that runs ``plan`` at ``global_batch`` (the request's by default): what
    the engine confirms and the user can rerun."""
    batch = request.global_batch if global_batch is None else global_batch
    return {
        "name": (f"plan-{model_name(request.model)}-{plan.gpus}gpu-d{plan.data}t{plan.tensor}"
                 f"p{plan.pipeline}" + ("-sp" if plan.sequence_parallel else "")),
        "model": model_section(request.model),
        "cluster": {"preset": request.cluster, "nodes": plan.gpus // devices_per_node},
        "precision": request.precision,
        "training": {"global_batch": batch, "microbatch": plan.microbatch,
                     "optimizer": request.optimizer},
        "parallelism": {"data": plan.data, "tensor": plan.tensor, "pipeline": plan.pipeline,
                        "schedule": plan.schedule, "virtual_stages": plan.virtual_stages,
                        "zero_stage": plan.zero_stage, "recompute": plan.recompute,
                        "sequence_parallel": plan.sequence_parallel, "offload": plan.offload,
                        "context": plan.context, "expert": plan.expert,
                        "expert_tensor": plan.expert_tensor, "shard_group": plan.shard_group}
        | ({"tp_comm_overlap": True} if plan.tp_comm_overlap else {})
        | _exchange(request, plan),
        "communication": {"data_parallel": plan.algorithm, "protocol": plan.protocol},
        "placement": plan.placement,
    }


def _exchange(request: PlanRequest, plan: Plan) -> dict[str, str]:
    """``context_comm`` where the plan's context parallelism needs the a2a exchange."""
    if plan.context == 1 or context_comm_for(model_shape(request.model)) == "p2p":
        return {}
    return {"context_comm": "a2a"}


def _objectives(row: dict[str, Any], step_s: float, steps: float, gpus: int,
                device: hardware.DeviceProfile, energy_per_step_J: float) -> None:
    seconds = step_s * steps
    row["time_to_train_s"] = seconds
    row["cost_usd"] = (gpus * seconds / 3600 * device.price_usd_per_hour
                       if device.price_usd_per_hour is not None else None)
    row["energy_kwh"] = energy_per_step_J * steps / 3.6e6


Progress = Callable[[list[dict[str, Any]], str], Iterable[dict[str, Any]]]


def plan(request: PlanRequest, progress: Progress | None = None) -> PlanResult:
    """Plan ``request``; ``progress(items, label)`` wraps the engine confirmations (a bar).

    With a target loss every plan is priced at each searched global batch it can split (its
    micro and sync parts once: ``Estimator``; only the micro-batch count changes) and kept at
    its best batch by the objective."""
    if request.objective not in OBJECTIVES:
        raise ScenarioError(f"objective must be one of {', '.join(OBJECTIVES)}.",
                            field="--objective")
    system = hardware.system(request.cluster)
    device = hardware.device(system.device)
    device.peak_flops(request.precision)
    shape = model_shape(request.model)
    dtype_bytes = max(DTYPE_BYTES[request.precision], 2)
    dpn = system.devices_per_node
    tables: dict[int, CostTable] = {}
    spec = model_spec(request.model)

    def table(microbatch: int) -> CostTable:
        if microbatch not in tables:
            tables[microbatch] = CostTable(
                build_model(spec, microbatch, dtype_bytes,
                            attention_kernel(spec, device, request.precision)), device,
                request.precision, microbatch * shape.seq_len, shape.hidden, shape,
                microbatch)
        return tables[microbatch]

    target = (LossTarget.of(request.target_loss, table(1).model, shape.seq_len)
              if request.target_loss is not None else None)
    batches = searched_batches(request, target)

    def steps_at(batch: int) -> float:
        if target is not None:
            return target.steps(batch)
        return request.tokens / (batch * shape.seq_len) if request.tokens else 1.0

    spaces = _admit(request, shape, system, batches)
    started = time.perf_counter()
    powers: dict[int, PowerModel] = {}

    def power(microbatch: int) -> PowerModel:
        if microbatch not in powers:
            powers[microbatch] = power_model(table(microbatch).model, device, request.precision)
        return powers[microbatch]

    size = SpaceCount()
    rank = _ranking(request)
    # the bounds may skip blocks worse than the kept plans (each at its best batch so far)
    # and worse than each count's fastest row at any batch (the Pareto front's: at one
    # count and price the fastest is also the cheapest)
    bounded = not request.exhaustive
    # ... and deep enough for the confirmations: the first --confirm plans, then extras that
    # pass over protocol twins, the j-th within the first confirm + j layouts
    kept = _Best(max(request.top, request.confirm, 2), request.confirm + EXTRA_CONFIRMATIONS)
    best: dict[Plan, tuple[tuple[int, ...], dict[str, Any]]] = {}
    estimators: dict[int, Estimator] = {}
    fastest: dict[int, float] = {}
    fastest_rows: dict[int, tuple[float, tuple[Any, ...], dict[str, Any]]] = {}
    for g, (gpus, topology, by_batch) in enumerate(spaces):
        estimator = estimators[gpus] = Estimator(table, request.optimizer, Fabric(topology))
        fastest[gpus] = float("inf")  # this count's least time to train
        for b, (batch, space) in enumerate(by_batch):
            steps = steps_at(batch)
            for block in _blocks(space, table, power, request, batch, steps, device):
                if bounded and block.key > kept.worst() and block.key[1] > fastest[gpus]:
                    size.pruned += block.plans
                    continue
                beaten = partial(_beaten, estimator, request, batch, steps, device,
                                 power, kept, fastest, gpus) if bounded else None
                for order, p in _block_plans(space, block, size, partial(
                        _fits, estimator, batch, device.memory_bytes), beaten):
                    memory = estimator.memory_bytes(p, batch)
                    est = estimator.estimate(p, batch)
                    energy_J = gpus * estimated_energy_J(power(p.microbatch), est.step_time_s,
                                                         est.breakdown_s)
                    row: dict[str, Any] = {
                        **p.as_dict(), "global_batch": batch,
                        "microbatches": p.microbatches_for(batch),
                        "memory_per_device_bytes": memory, "fits_in_memory": True,
                        "step_time_s": est.step_time_s, "step_time_source": "estimate",
                        "estimated_step_time_s": est.step_time_s,
                        "estimated_breakdown_s": est.breakdown_s}
                    if target is not None:
                        to_target(row, target, batch)
                    _objectives(row, est.step_time_s, steps, gpus, device, energy_J)
                    fastest[gpus] = min(fastest[gpus], row["time_to_train_s"])
                    seen = (row["time_to_train_s"], (g, b, *order), row)
                    if gpus not in fastest_rows or seen[:2] < fastest_rows[gpus][:2]:
                        fastest_rows[gpus] = seen
                    if _meets(row, request):
                        kept.add(rank(row), p)
                    mine = _batch_rank(row, b, request)
                    before = best.get(p)
                    if before is None or mine < _batch_rank(before[1], before[0][1], request):
                        best[p] = ((g, b, *order), row)
            size.enumerated += space.size()
    # enumeration order (GPU count, batch, layout, free values): ties break the same
    rows = [row for _, row in sorted(best.values(), key=lambda item: item[0])]
    estimated = time.perf_counter()
    feasible = sorted((r for r in rows if _meets(r, request)), key=rank)

    def scenario(row: dict[str, Any]) -> dict[str, Any]:
        return scenario_of(request, plan_of(row), dpn, row["global_batch"])

    def confirm(row: dict[str, Any]) -> None:
        result = runs.result(row)
        row.update(step_time_s=result["step_time_s"], step_time_source="simulated",
                   breakdown_s=result["breakdown_s"],
                   memory_per_device_bytes=result["memory_per_device_bytes"],
                   fits_in_memory=result["fits_in_memory"], scenario=scenario(row))
        _objectives(row, result["step_time_s"], steps_at(row["global_batch"]), row["gpus"],
                    device, result["energy_per_step_J"])

    def confirming(rows: list[dict[str, Any]], label: str) -> None:
        for row in (progress(rows, label) if progress else rows):
            confirm(row)

    first = feasible[:request.confirm]
    likely = first + _extra_candidates(feasible, first)
    workers = worker_count(request.workers, len(likely))
    with pool_of(workers) as pool:
        runs = Ahead(likely, scenario, pool, workers)
        confirming(first, "simulating the best plans")
        done = first + _confirm_beaten(feasible, first, request, rank, lambda row: (
            confirming([row], "simulating a plan the estimate puts ahead of the simulated")))
    simulated = {id(r) for r in done}
    confirmed = sorted((r for r in done if r["fits_in_memory"] and _meets(r, request)),
                       key=lambda r: (*(_rounded(x) for x in rank(r)), _model_parallel(r)))
    ranked = confirmed + [r for r in feasible if id(r) not in simulated]
    space_size = {"enumerated": size.enumerated, "feasible": size.feasible,
                  "fitting": len(rows), "estimated": len(rows), "pruned": size.pruned,
                  "confirmed": len(done)}
    if not ranked:
        raise ScenarioError(*_binding(request, size.feasible, rows, device.memory_bytes,
                                      batches))
    deadline_gpus = (min(r["gpus"] for r in ranked)
                     if request.max_days is not None and ranked else None)
    loss = None
    explanation = explain(ranked, device.memory_bytes, request.objective)
    if target is not None:
        explanation.insert(1, batch_reason(ranked[0], target, batches))
        space_at = {(gpus, batch): space for gpus, _, pairs in spaces for batch, space in pairs}
        loss = loss_summary(target, batches, [
            batch_curve(row, batches, estimators[row["gpus"]], space_at, target,
                        device.memory_bytes) for row in distinct_layouts(ranked, CURVES)])
    return PlanResult(request, size.feasible, len(rows), ranked[:request.top],
                      pareto_front(_front_rows(rows, fastest_rows)), explanation,
                      deadline_gpus, rows, {"estimate": estimated - started,
                                            "simulate": time.perf_counter() - estimated},
                      space_size, loss)


class _Lowest:
    """The least key of each of the ``count`` identities whose least keys are lowest so
    far: its last key is what an identity must beat to be among them."""

    def __init__(self, count: int) -> None:
        self.count = count
        self._keys: list[tuple[tuple[float, float], object]] = []  # best first

    def add(self, key: tuple[float, float], identity: object) -> None:
        if len(self._keys) == self.count and key >= self._keys[-1][0]:
            return
        for i, (other, name) in enumerate(self._keys):
            if name == identity:
                if other <= key:
                    return
                del self._keys[i]
                break
        bisect.insort(self._keys, (key, identity), key=lambda item: item[0])
        del self._keys[self.count:]

    def worst(self) -> tuple[float, float]:
        """The ``count``-th least key (none yet: infinity)."""
        if len(self._keys) < self.count:
            return (float("inf"), float("inf"))
        return self._keys[-1][0]


class _Best:
    """The best ranking keys seen so far of the ``keep`` best plans that meet the
    constraints and of the ``layouts`` best layouts (plans that differ only in their
    protocol are one layout), each plan and layout at its best batch. Rows of one plan at
    several batches count once: the final ranking holds each plan at its best batch, so
    its ``keep``-th plan ranks no better than the ``keep``-th kept here; and its layouts
    (``_layout_key``, one per batch its protocol twins settled at) include each layout's
    best, so its n-th ranks no worse than the n-th kept here."""

    def __init__(self, keep: int, layouts: int = 0) -> None:
        self._plans, self._layouts = _Lowest(keep), _Lowest(layouts)

    def add(self, key: tuple[float, float], plan: Plan) -> None:
        self._plans.add(key, plan)
        if self._layouts.count:
            self._layouts.add(key, replace(plan, protocol="auto"))

    def worst(self) -> tuple[float, float]:
        """The key a plan must beat to be kept, among the plans and among the layouts."""
        if not self._layouts.count:
            return self._plans.worst()
        return max(self._plans.worst(), self._layouts.worst())


# the free dimensions the step's lower bound reads (the cut's compute); the others (offload,
# protocol) and every checked dimension but the layout's degrees share one bound
BOUND_DIMENSIONS = ("recompute", "sequence_parallel")


def _blocks(space: PlanSpace, table: Callable[[int], CostTable],
            power: Callable[[int], PowerModel], request: PlanRequest, batch: int,
            steps: float, device: hardware.DeviceProfile) -> list[Block]:
    """The space's plans in blocks that share a lower bound (``dlsim.planner.bounds``),
    best bound first: the layouts of one prefix (degrees and micro-batch) and number of
    virtual stages (whatever their schedule, ZeRO stage, shard group, algorithm and
    placement) at one recompute and sequence-parallel choice. Blocks hold their prefix and
    tails; no layout is built until its block is searched."""
    names = [d.name for d in space.free]
    fixed = [names.index(n) for n in BOUND_DIMENSIONS]
    rest = [i for i in range(len(names)) if i not in fixed]
    # a prefix's tails by virtual stages and the bound's values (listed per tensor degree
    # and tensor-parallel overlap: BOUND_DIMENSIONS read nothing else), with the plans per
    # choice of them; prefixes share their tails, so each list is split once
    split: dict[int, list[tuple[int, tuple[Tail, ...], list[Sequence[Any]], int]]] = {}
    blocks = []
    for prefix, order, tails in space.prefixes():
        if id(tails) not in split:
            by_virtual: dict[tuple, list[Tail]] = {}
            for tail in tails:
                key = (tail[0]["virtual_stages"], *(tuple(tail[2][i]) for i in fixed))
                by_virtual.setdefault(key, []).append(tail)
            split[id(tails)] = [
                (key[0], tuple(group), [group[0][2][i] for i in fixed],
                 sum(math.prod(len(free[i]) for i in rest) for _, _, free, _ in group))
                for key, group in by_virtual.items()]
        t, c, p, d, e, et, mb = (prefix[n] for n in (
            "tensor", "context", "pipeline", "data", "expert", "expert_tensor", "microbatch"))
        m = batch // d // mb
        for v, group, options, plans in split[id(tails)]:
            for choice in itertools.product(*options):
                recompute, sp = choice
                compute = table(mb).stage_compute(t, p * v, recompute, sp and t > 1, c, e,
                                                  et, p)
                step = step_lower_bound(compute, m, v)
                blocks.append(Block(prefix, order, group,
                                    tuple(zip(BOUND_DIMENSIONS, choice)), plans, step,
                                    _bound_key(request, step, steps,
                                               space.problem.target.devices, device,
                                               power(mb), m * max(compute))))
    return sorted(blocks, key=lambda b: (b.key, b.order + b.tails[0][1]))


def _bound_key(request: PlanRequest, step_s: float, steps: float, gpus: int,
               device: hardware.DeviceProfile, power: PowerModel,
               compute_s: float) -> tuple[float, float]:
    """The ranking key (``_ranking``) no plan of a block beats."""
    seconds = step_s * steps
    if request.objective == "time":
        return (seconds, seconds)
    if request.objective == "cost":
        price = device.price_usd_per_hour
        return (gpus * seconds / 3600 * price if price is not None else float("inf"),
                seconds)
    return (gpus * energy_lower_bound_J(power, step_s, compute_s) * steps / 3.6e6, seconds)


def _beaten(estimator: Estimator, request: PlanRequest, batch: int, steps: float,
            device: hardware.DeviceProfile, power: Callable[[int], PowerModel], kept: _Best,
            fastest: dict[int, float], gpus: int, plans: list[Plan],
            rounded: bool = False) -> bool:
    """Whether no plan like ``plans`` (each a micro part's dimensions, the protocols and
    placements a layout or a block runs at) can reach the kept plans or its count's fastest:
    m micro-batches of the slowest stage with their communication at its fastest protocol,
    the bubble and the transfers (``combine``'s tail is never negative, and no dimension
    left changes them). ``rounded``: each collective's size rounded down to a power of two
    (``Estimator.micro_floor``), a looser bound with far fewer collectives to price."""
    protocols = tuple(dict.fromkeys(plan.protocol for plan in plans))
    m = plans[0].microbatches_for(batch)
    for plan in dict.fromkeys(replace(plan, protocol=protocols[0]) for plan in plans):
        part = estimator.micro_floor(plan, protocols, rounded)
        step = MARGIN * (m * part.micro + part.bubble + part.p2p)
        key = _bound_key(request, step, steps, gpus, device, power(plan.microbatch),
                         m * part.compute)
        if key <= kept.worst() or key[1] <= fastest[gpus]:
            return False
    return True


def _fits(estimator: Estimator, batch: int, capacity: float, plan: Plan) -> bool:
    return estimator.memory_bytes(plan, batch) <= capacity


def _block_plans(space: PlanSpace, block: Block, size: SpaceCount,
                 fits: Callable[[Plan], bool],
                 beaten: Callable[..., bool] | None = None
                 ) -> Iterator[tuple[tuple[Any, ...], Plan]]:
    """The feasible plans of ``block`` that ``fits`` (memory) with their place in the
    enumeration order (the layout's value indices, then each free dimension's value index);
    counts the feasible ones. ``fits`` reads no protocol, the innermost dimension, so it is
    asked once for the protocols of each choice of the others (most plans do not fit). At
    the block's first plan that fits, ``beaten`` (its micro parts at every placement and
    protocol of the block, without ZeRO-3's gathers, which only add) may skip the whole
    block; at each layout's first, ``beaten`` (its plans at each protocol) may skip the
    layout's remaining plans; both counted as pruned."""
    names = [d.name for d in space.free]
    assert names[-1] == "protocol"
    chosen = dict(block.choice)

    def options(free: list[Sequence[Any]]) -> list[list[tuple[int, Any]]]:
        return [[(free[i].index(chosen[n]), chosen[n])] if n in chosen
                else list(enumerate(free[i])) for i, n in enumerate(names)]

    block_checked = beaten is None
    for at, (tail, tail_order, free, count) in enumerate(block.tails):
        order, layout = block.order + tail_order, {**block.prefix, **tail}
        if not space.layout_runs(order, layout, free, count):
            continue
        *others, protocols = options(free)
        checked = False
        for seen, values in enumerate(itertools.product(*others)):
            named = {n: v for n, (_, v) in zip(names, values)}
            at_values = tuple(k for k, _ in values)
            first = space.plan(layout, {**named, "protocol": protocols[0][1]})
            if not fits(first):
                size.feasible += len(protocols)
                continue
            plans = [first, *(space.plan(layout, {**named, "protocol": protocol})
                              for _, protocol in protocols[1:])]
            left = (math.prod(map(len, others)) - seen) * len(protocols)
            if not block_checked:
                assert beaten is not None
                block_checked = True
                floor = _block_floor(block, options, first)
                if beaten(floor, rounded=True) or beaten(floor):
                    size.pruned += left + sum(math.prod(map(len, options(later[2])))
                                              for later in block.tails[at + 1:])
                    return
            if beaten is not None and not checked:
                checked = True
                if beaten(plans):
                    size.pruned += left
                    break
            size.feasible += len(protocols)
            for (k, _), plan in zip(protocols, plans):
                yield (order, *at_values, k), plan


def _block_floor(block: Block,
                 options: Callable[[list[Sequence[Any]]], list[list[tuple[int, Any]]]],
                 plan: Plan) -> list[Plan]:
    """``plan`` at every placement and protocol of ``block``'s layouts, without ZeRO-3's
    layer-by-layer gathers: every micro part of the block is at least one of theirs."""
    placements = {tail["placement"] for tail, *_ in block.tails}
    protocols = dict.fromkeys(p for _, _, free, _ in block.tails for _, p in options(free)[-1])
    return [replace(plan, placement=where, protocol=protocol, zero_stage=0, shard_group=None)
            for where in sorted(placements) for protocol in protocols]


CURVES = 3  # the best layouts whose step time, steps and time to target the report draws


LAYOUT = ("gpus", "data", "tensor", "pipeline", "context", "expert", "microbatch")


def distinct_layouts(ranked: list[dict[str, Any]], count: int) -> list[dict[str, Any]]:
    """The best ``count`` plans whose degrees or micro-batch differ (not only their
    placement or protocol), in rank order."""
    seen: set[tuple] = set()
    out = []
    for row in ranked:
        key = tuple(row[f] for f in LAYOUT)
        if key not in seen:
            seen.add(key)
            out.append(row)
            if len(out) == count:
                break
    return out


def plan_of(row: dict[str, Any]) -> Plan:
    return Plan(*(row[f] for f in Plan.__dataclass_fields__))


def searched_batches(request: PlanRequest, target: LossTarget | None) -> tuple[int, ...]:
    """The global batches planned: the request's list, or around the critical batch with a
    target loss, or the one global batch. Several batches need a target loss: with a fixed
    number of tokens a larger batch only ever looks faster (it needs fewer steps)."""
    if target is not None and request.tokens is not None:
        raise ScenarioError("--tokens and --target-loss both say how much to train; give "
                            "one of them.", field="--tokens")
    if request.global_batches:
        if len(request.global_batches) > 1 and target is None:
            raise ScenarioError("--global-batch names several batches, which the planner "
                                "searches only against a --target-loss (steps then depend on "
                                "the batch); give one batch, or a --target-loss.",
                                field="--global-batch")
        return tuple(sorted(request.global_batches))
    if target is not None:
        return around_critical(request.global_batch, target.critical_batch_samples)
    return (request.global_batch,)


def batch_curve(row: dict[str, Any], batches: tuple[int, ...], estimator: Estimator,
                spaces: dict[tuple[int, int], PlanSpace], target: LossTarget,
                capacity: float) -> dict[str, Any]:
    """One layout's step time (estimate), steps and time to the target at each searched
    batch it can split, runs and fits in memory at."""
    plan = plan_of(row)
    points = []
    for batch in batches:
        space = spaces[plan.gpus, batch]
        if (batch % (plan.data * plan.microbatch) or not space.runs(plan)
                or estimator.memory_bytes(plan, batch) > capacity):
            continue
        step = estimator.estimate(plan, batch).step_time_s
        steps = target.steps(batch)
        points.append({"global_batch": batch, "step_time_s": step,
                       "steps_to_target": steps, "tokens_to_target": target.tokens(batch),
                       "time_to_target_s": steps * step})
    return {"plan": plan.as_dict(), "best_global_batch": row["global_batch"],
            "step_time_source": "estimate", "points": points}


def _admit(request: PlanRequest, shape: TransformerShape, system: hardware.SystemProfile,
           batches: tuple[int, ...]
           ) -> list[tuple[int, Topology, list[tuple[int, PlanSpace]]]]:
    """Each GPU count's plan space at each batch, refusing a request too large to plan
    before estimating anything: a GPU count that is not whole nodes, a cluster past the
    engine's default event limit (each device is a node of the topology the estimate and the
    confirmations build), or more plans at one batch than --max-plans (counted, not
    enumerated)."""
    dpn = system.devices_per_node
    for gpus in request.gpus:
        if gpus > DEFAULT_MAX_EVENTS:
            raise ScenarioError(f"{gpus:,} GPUs is past the {DEFAULT_MAX_EVENTS:,} devices a "
                                "simulated topology may have (simulation.max_events); plan "
                                "for fewer GPUs.", field="--gpus")
        if gpus % dpn:
            raise ScenarioError(f"{gpus} GPUs is not a whole number of {request.cluster} "
                                f"nodes of {dpn}.", field="--gpus")
    spaces = []
    for gpus in request.gpus:
        topology = build_topology(ClusterSpec(preset=request.cluster, nodes=gpus // dpn))
        target = Target.on(topology, request.precision, system.nvlink_domain_nodes)
        spaces.append((gpus, topology, [(batch, PlanSpace(shape, batch, target))
                                        for batch in batches]))
    for i, batch in enumerate(batches):
        count = sum(by_batch[i][1].size() for _, _, by_batch in spaces)
        if count > request.max_plans:
            at = f" at global batch {batch:,}" if len(batches) > 1 else ""
            raise ScenarioError(f"this request enumerates {count:,} plans{at}, over the "
                                f"limit of {request.max_plans:,}; give fewer --gpus counts, "
                                f"or pass --max-plans {count} to plan it anyway.",
                                field="--max-plans")
    return spaces


def _binding(request: PlanRequest, evaluated: int, rows: list[dict[str, Any]],
             capacity: float, batches: tuple[int, ...]) -> tuple[str, None, str]:
    """Why no plan is left, naming the constraint that binds: memory, --max-days, --budget."""
    gb = capacity / 1e9
    if not evaluated:
        return (f"no data/tensor/pipeline plan divides {', '.join(map(str, batches))} "
                "samples and "
                f"{', '.join(map(str, request.gpus))} GPUs; choose a --global-batch that "
                "is a multiple of the data-parallel degree.", None, "--global-batch")
    if not rows:
        return (f"none of the {evaluated:,} plans fits in {gb:g} GB of memory per device; "
                "give more --gpus (or a larger --global-batch split finer) so the model "
                "state is spread wider.", None, "--gpus")
    fastest = min(r["time_to_train_s"] for r in rows) / 86400
    if request.max_days is not None and fastest > request.max_days:
        return (f"the fastest of the {len(rows):,} plans that fit in memory takes "
                f"{fastest:.3g} days, over --max-days {request.max_days:g}; allow more days "
                "or give more --gpus.", None, "--max-days")
    priced = [r["cost_usd"] for r in rows if r["cost_usd"] is not None]
    cheapest = f"{min(priced):,.0f} USD" if priced else "unpriced (the device has no price)"
    return (f"no plan that fits in memory{' and meets --max-days' if request.max_days else ''}"
            f" costs at most --budget {request.budget_usd:,.0f} USD; the cheapest is "
            f"{cheapest}.", None, "--budget")


def _ranking(request: PlanRequest) -> Callable[[dict[str, Any]], tuple[float, float]]:
    """Order by the objective (unpriced plans last when it is cost), then by time."""
    key = OBJECTIVES[request.objective]
    return lambda r: (r[key] if r[key] is not None else float("inf"), r["time_to_train_s"])


# at most this many plans beyond --confirm are confirmed because the engine found the
# confirmed ones slower than the next estimates
EXTRA_CONFIRMATIONS = 3


def _confirm_beaten(feasible: list[dict[str, Any]], confirmed: list[dict[str, Any]],
                    request: PlanRequest,
                    rank: Callable[[dict[str, Any]], tuple[float, float]],
                    confirm: Callable[[dict[str, Any]], None]) -> list[dict[str, Any]]:
    """Confirm the next plans by estimate while the best confirmed one, as the engine
    simulated it, is worse than the next plan's estimate (the estimate is the optimistic
    one: the engine found what it leaves out), at most ``EXTRA_CONFIRMATIONS`` of them
    (``_extra_candidates``); the plans confirmed so."""
    extra: list[dict[str, Any]] = []
    for row in _extra_candidates(feasible, confirmed):
        fitting = [rank(r) for r in (*confirmed, *extra)
                   if r["fits_in_memory"] and _meets(r, request)]
        if fitting and min(fitting) <= rank(row):
            break
        confirm(row)
        extra.append(row)
    return extra


def _extra_candidates(feasible: list[dict[str, Any]], confirmed: list[dict[str, Any]]
                      ) -> list[dict[str, Any]]:
    """The plans ``_confirm_beaten`` may confirm after ``confirmed``, in its order (none
    without any confirmed): the next by estimate, passing over a plan that differs from a
    confirmed one or an earlier candidate only in its NCCL protocol (the engine prices the
    protocol as the estimate does, and the confirmations go to layouts the engine has not
    seen)."""
    if not confirmed:
        return []
    seen = {_layout_key(r) for r in confirmed}  # a confirmed plan is its own twin
    out: list[dict[str, Any]] = []
    for row in feasible:
        if len(out) == EXTRA_CONFIRMATIONS:
            break
        if _layout_key(row) not in seen:
            out.append(row)
            seen.add(_layout_key(row))
    return out


def _rounded(x: float) -> float:
    """``x`` to 12 significant digits: simulated plans that differ by float noise (the same
    compute summed in another order, 5e-17 s) tie."""
    return float(f"{x:.12g}") if math.isfinite(x) else x


def _model_parallel(row: dict[str, Any]) -> int:
    """Ranks a plan splits each replica over (tensor x pipeline x context x expert): of
    simulated plans that tie, the one with fewer goes first."""
    return row["tensor"] * row["pipeline"] * row["context"] * row["expert"]


def _layout_key(row: dict[str, Any]) -> tuple[Any, ...]:
    """A plan's fields but its NCCL protocol, and the batch it runs at."""
    return (*(row[f] for f in Plan.__dataclass_fields__ if f != "protocol"),
            row["global_batch"])


def _batch_rank(row: dict[str, Any], batch_index: int, request: PlanRequest
                ) -> tuple[bool, float, int]:
    """How a plan's rows at its batches rank, the first kept: those that meet the deadline
    and budget first, then by time (at one plan's GPU count and price, cost orders its
    batches as time does; unpriced: by time) or energy, then the first searched."""
    mine = row["energy_kwh" if request.objective == "energy" else "time_to_train_s"]
    return (not _meets(row, request), mine, batch_index)


def _meets(row: dict[str, Any], request: PlanRequest) -> bool:
    if request.max_days is not None and row["time_to_train_s"] > request.max_days * 86400:
        return False
    if request.budget_usd is not None and (row["cost_usd"] is None
                                           or row["cost_usd"] > request.budget_usd):
        return False
    return True


def _front_rows(rows: list[dict[str, Any]],
                fastest: dict[int, tuple[float, tuple[Any, ...], dict[str, Any]]]
                ) -> list[dict[str, Any]]:
    """The rows the Pareto front is drawn from: each plan at its best batch, and each GPU
    count's fastest plan at any batch. By time or cost that one is already a plan's best
    row; by energy over several batches a plan's least-energy batch may not be its fastest,
    and the front (time against cost) is over every way to train that was searched."""
    kept = {id(row) for row in rows}
    return rows + [row for _, _, row in sorted(fastest.values(), key=lambda f: f[:2])
                   if id(row) not in kept]


def pareto_front(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Plans no other plan beats on both time to train and cost (ties keep the first)."""
    priced = sorted((r for r in rows if r["cost_usd"] is not None),
                    key=lambda r: (r["time_to_train_s"], r["cost_usd"]))
    front, best_cost = [], float("inf")
    for row in priced:
        if row["cost_usd"] < best_cost:
            front.append(row)
            best_cost = row["cost_usd"]
    return front


def _breakdown(row: dict[str, Any]) -> dict[str, float]:
    """The simulated breakdown where the engine confirmed the plan, else the estimate's."""
    return row.get("breakdown_s") or row["estimated_breakdown_s"]


_PARTS = {"compute": "compute", "tensor_comm": "tensor-parallel all-reduces",
          "bubble": "the pipeline bubble", "pipeline_comm": "pipeline transfers",
          "exposed_dp_comm": "exposed gradient communication",
          "exposed_comm": "exposed communication", "straggler_wait": "waiting for peers",
          "idle": "idle time"}


def explain(ranked: list[dict[str, Any]], capacity: float, objective: str = "time") -> list[str]:
    """Why the winner wins: its time shares, memory headroom, and where the runner-up lost."""
    if not ranked:
        return ["No plan fits in memory and meets the constraints."]
    win = ranked[0]
    parts = _breakdown(win)
    total = sum(parts.values()) or 1.0
    shares = ", ".join(f"{_PARTS.get(k, k)} {100 * v / total:.0f}%"
                       for k, v in parts.items() if v > 0)
    headroom = capacity - win["memory_per_device_bytes"]
    extra = "".join(f", {k}={win[k]}" for k in ("context", "expert", "expert_tensor")
                    if win.get(k, 1) > 1)
    extra += f", shard group {win['shard_group']}" if win.get("shard_group") else ""
    lines = [f"The winner (d={win['data']}, t={win['tensor']}, p={win['pipeline']}{extra}, "
             f"micro-batch {win['microbatch']}, {win['schedule']}, ZeRO-{win['zero_stage']}, "
             f"recompute {win['recompute']}"
             f"{', sequence parallel' if win.get('sequence_parallel') else ''}"
             f"{', TP overlap' if win.get('tp_comm_overlap') else ''}, "
             f"{win['placement']}, {win['algorithm']}) spends its "
             f"step on {shares} ({win['step_time_source']}); it leaves "
             f"{headroom / 1e9:.1f} GB of memory free."]
    if len(ranked) > 1:
        lines.append(_runner_up(win, ranked[1], objective))
    return lines


def _runner_up(win: dict[str, Any], run: dict[str, Any], objective: str) -> str:
    """Where the runner-up lost, comparing like with like: both simulated, or both estimated
    when the engine confirmed only the winner."""
    same = run["step_time_source"] == win["step_time_source"]
    mine = _breakdown(win) if same else win["estimated_breakdown_s"]
    theirs = _breakdown(run) if same else run["estimated_breakdown_s"]
    diffs = {k: theirs.get(k, 0.0) - mine.get(k, 0.0) for k in sorted({*mine, *theirs})}
    worst = max(diffs, key=diffs.__getitem__)
    step = "step_time_s" if same else "estimated_step_time_s"
    gap = run[step] - win[step]
    basis = run["step_time_source"] if same else "both by the estimate"
    changed = ", ".join(f"{f} {run[f]} instead of {win[f]}" for f in Plan.__dataclass_fields__
                        if run[f] != win[f])
    name = f"The runner-up ({changed})"
    if objective != "time":
        key, unit = {"cost": ("cost_usd", "USD"), "energy": ("energy_kwh", "kWh")}[objective]
        return (f"{name} costs {run[key] - win[key]:,.3g} {unit} more to train "
                f"({run['step_time_source']}), at {run['step_time_s']:.3g} s per step.")
    if gap < 0:
        return (f"{name} is {-gap:.3g} s per step faster by the estimate, but the engine, "
                "which decides, confirmed only the plans above it; confirm more plans "
                "(--confirm) to compare them in the engine.")
    if gap == 0:
        return f"{name} ties with it ({basis}); the order between them is the enumeration's."
    where = (f", mostly {_PARTS.get(worst, worst)} (+{diffs[worst]:.3g} s)"
             if diffs[worst] > 0 else "")
    return f"{name} is {gap:.3g} s per step slower ({basis}){where}."
