"""The closed-form estimate of every plan of a space, factored by what each part depends on.

``dlsim.planner.estimate.estimate`` prices one plan from scratch; across a space, plans that
differ in one dimension share most of their parts. Each part here is memoised on the
dimensions it reads, and a plan's estimate combines its parts with the same arithmetic, in
the same order, as ``estimate`` (so the two agree to the last bit; the tests check it):

- the micro-batch part (compute, tensor-parallel collectives, the pipeline bubble and the
  point-to-point transfers, each stage's drain and backward) per (t, p, v, b, recompute,
  sequence parallelism, placement, protocol);
- the gradient sync and update per (the stages' parameters, ZeRO stage, algorithm,
  placement, protocol, offload);
- memory per (t, p, b, recompute, sequence parallelism, ZeRO stage, offload) as each stage's
  state plus its activations per micro-batch in flight, scaled by the schedule's in-flight
  count (``dlsim.parallel.memory.memory_per_device`` is linear in it).

Only the combination runs per plan: m micro-batches of the micro part, plus the tail of the
stage whose sync and update end last.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.parallel.grid import Grid
from dlsim.parallel.memory import (
    gradient_bytes_per_param,
    memory_per_device,
    pipeline_stages,
)
from dlsim.parallel.pipeline import Piece, count_collectives, in_flight
from dlsim.planner.estimate import BUCKET_BYTES, CostTable, Estimate, Fabric, update_s
from dlsim.planner.space import Plan


@dataclass(frozen=True)
class MicroPart:
    """One micro-batch's share of a plan's step, and what its tail needs of each stage."""

    compute: float  # the slowest stage's compute per micro-batch
    micro: float  # ... with its tensor-parallel collectives
    bubble: float
    p2p: float
    params: tuple[float, ...]  # per stage
    backward: tuple[float, ...]  # per stage, per micro-batch
    drained: tuple[float, ...]  # how much earlier than stage 0 each stage's last backward ends


@dataclass(frozen=True)
class SyncPart:
    """Per stage: the gradient sync (what may overlap the backward), what follows the update
    (ZeRO-1/2's all-gather), the update, and the gradient bytes."""

    sync: tuple[float, ...]
    after: tuple[float, ...]
    update: tuple[float, ...]
    grads: tuple[float, ...]


class Estimator:
    """Estimates and memory verdicts of many plans of one model on one cluster."""

    def __init__(self, table: Callable[[int], CostTable], optimizer: str, global_batch: int,
                 fabric: Fabric) -> None:
        self.table, self.optimizer, self.global_batch = table, optimizer, global_batch
        self.fabric = fabric
        self._micro: dict[tuple, MicroPart] = {}
        self._sync: dict[tuple, SyncPart] = {}
        self._memory: dict[tuple, list[tuple[float, float, float]]] = {}

    def micro_part(self, plan: Plan) -> MicroPart:
        t, p, d, v = plan.tensor, plan.pipeline, plan.data, plan.virtual_stages
        sp = plan.sequence_parallel and t > 1
        key = (t, p, d, v, plan.microbatch, plan.recompute, sp, plan.placement, plan.protocol)
        if key not in self._micro:
            self._micro[key] = self._micro_part(plan, sp)
        return self._micro[key]

    def _micro_part(self, plan: Plan, sp: bool) -> MicroPart:
        t, p, d, v = plan.tensor, plan.pipeline, plan.data, plan.virtual_stages
        table = self.table(plan.microbatch)
        fabric = self.fabric.for_protocol(plan.protocol)
        grid, place, n = Grid(d, t, p), plan.placement, plan.gpus
        cut = table.pieces(t, p * v, plan.recompute, sp)
        act = max(DTYPE_BYTES[table.dtype], 2) * table.tokens * table.hidden
        tensor_groups = tuple(grid.tensor_group(0, r) for r in range(d))

        def tensor_comm_s(pieces_: list[Piece]) -> float:
            counts = count_collectives([c for x in pieces_
                                        for c in (x.forward_collectives,
                                                  x.backward_collectives)])
            return sum(fabric.time_s(op, "ring", act, tensor_groups, n, place) * count
                       for op, count in counts)

        stages = [cut[s::p] for s in range(p)]
        stage_s = [sum(x.forward_s + x.backward_s for x in ps) + tensor_comm_s(ps)
                   for ps in stages]
        slowest = max(range(p), key=lambda s: sum(x.forward_s + x.backward_s
                                                  for x in stages[s]))
        compute = sum(x.forward_s + x.backward_s for x in stages[slowest])
        micro = stage_s[slowest]
        bubble = p2p = 0.0
        if p > 1:
            pairs = tuple((grid.rank(0, r, k), grid.rank(1, r, k)) for r in range(d)
                          for k in range(t))
            bubble = (sum(stage_s) - micro) / v
            size = max(x.out_bytes for x in cut) / t
            p2p = 2 * (p * v - 1) * fabric.time_s("send", "direct", size, pairs, n, place)
        return MicroPart(compute, micro, bubble, p2p,
                         tuple(sum(x.params for x in stages[s]) for s in range(p)),
                         tuple(sum(x.backward_s for x in stages[s]) for s in range(p)),
                         tuple(sum(cut[k].backward_s for k in range(s)) for s in range(p)))

    def sync_part(self, plan: Plan, params: tuple[float, ...]) -> SyncPart:
        key = (plan.tensor, plan.pipeline, plan.data, params, plan.zero_stage,
               plan.algorithm, plan.placement, plan.protocol, plan.offload)
        if key not in self._sync:
            self._sync[key] = self._sync_part(plan, params)
        return self._sync[key]

    def _sync_part(self, plan: Plan, params: tuple[float, ...]) -> SyncPart:
        t, p, d = plan.tensor, plan.pipeline, plan.data
        table = self.table(plan.microbatch)
        fabric = self.fabric.for_protocol(plan.protocol)
        grid, place, n = Grid(d, t, p), plan.placement, plan.gpus
        data_groups = tuple(grid.data_group(0, k) for k in range(t))
        sync, after, update, grads_ = [], [], [], []
        for stage_params in params:
            grads = stage_params * gradient_bytes_per_param(table.dtype)
            if plan.zero_stage == 0:
                s_, a_ = fabric.time_s("allreduce", plan.algorithm, grads, data_groups, n,
                                       place), 0.0
            else:
                scatter = fabric.time_s("reducescatter", "ring", grads, data_groups, n, place)
                gather = fabric.time_s("allgather", "ring", grads, data_groups, n, place)
                s_, a_ = (scatter + 2 * gather, 0.0) if plan.zero_stage == 3 else (scatter,
                                                                                  gather)
            owned = stage_params / d if plan.zero_stage > 0 else stage_params
            sync.append(s_)
            after.append(a_)
            update.append(update_s(owned, self.optimizer, table.device, table.dtype,
                                   plan.offload, fabric.topology.devices_per_node))
            grads_.append(grads)
        return SyncPart(tuple(sync), tuple(after), tuple(update), tuple(grads_))

    def estimate(self, plan: Plan) -> Estimate:
        """What ``dlsim.planner.estimate.estimate`` gives for ``plan``, from memoised parts."""
        t, p, d = plan.tensor, plan.pipeline, plan.data
        m = plan.microbatches_for(self.global_batch)
        part = self.micro_part(plan)
        syncs = self.sync_part(plan, part.params)
        overlapped = p == 1 and t == 1 and d > 1  # DDP buckets overlap the backward
        best = None
        for s in range(p):
            sync = syncs.sync[s]
            if overlapped:
                sync = (max(sync - part.backward[s], 0.0)
                        + sync * min(1.0, BUCKET_BYTES / syncs.grads[s]))
            candidate = (sync + syncs.after[s], syncs.update[s], part.drained[s])
            if best is None or (candidate[0] + candidate[1] - candidate[2]
                                > best[0] + best[1] - best[2]):
                best = candidate
        assert best is not None
        sync, update, drained = best
        tail = sync + update - drained
        exposed = max(tail - update, 0.0)
        return Estimate(m * part.micro + part.bubble + part.p2p + tail, {
            "compute": m * part.compute + tail - exposed,
            "tensor_comm": m * (part.micro - part.compute),
            "bubble": part.bubble,
            "pipeline_comm": part.p2p,
            "exposed_dp_comm": exposed,
        })

    def memory_bytes(self, plan: Plan) -> float:
        """``memory_per_device(...).total`` of ``plan`` as the planner has always priced it:
        the fullest of p stages, each holding stage 0's micro-batches in flight."""
        sp = plan.sequence_parallel and plan.tensor > 1
        key = (plan.tensor, plan.pipeline, plan.data, plan.microbatch, plan.recompute, sp,
               plan.zero_stage, plan.offload)
        if key not in self._memory:
            table = self.table(plan.microbatch)
            self._memory[key] = []
            for part in pipeline_stages(table.model, plan.pipeline):
                one = memory_per_device(
                    table.model, table.dtype, self.optimizer, data=plan.data,
                    tensor=plan.tensor, stage_layers=part, in_flight_microbatches=1,
                    zero_stage=plan.zero_stage, recompute=plan.recompute,
                    offload=plan.offload, sequence_parallel=sp)
                self._memory[key].append((one.params + one.grads + one.optimizer,
                                          one.activations, one.gathered))
        held = in_flight(plan.schedule, 0, plan.pipeline,
                         plan.microbatches_for(self.global_batch), plan.virtual_stages)
        return max(state + held * activations + gathered
                   for state, activations, gathered in self._memory[key])
