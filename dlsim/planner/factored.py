"""The closed-form estimate of every plan of a space, factored by what each part depends on.

``dlsim.planner.estimate.estimate`` prices one plan from its parts (``micro_part``,
``sync_part``, ``combine``); across a space, plans that differ in one dimension share most
of their parts, so each part is memoised here on the dimensions it reads and combined by the
same ``combine`` (one implementation: the two agree to the last bit; the tests check it):

- the micro-batch part (compute, tensor-parallel collectives, ring attention and
  all-to-alls, the pipeline bubble and the point-to-point transfers, each stage's drain and
  backward) per (t, c, p, v, b, e, et, recompute, sequence parallelism, placement,
  protocol, layer-by-layer ZeRO-3 and its shard group);
- the gradient sync and update per (the stages' parameters, the layout, ZeRO stage and
  shard group, algorithm, placement, protocol, offload);
- memory per (t, c, p, b, e, et, recompute, sequence parallelism, ZeRO stage, shard group,
  offload) as each stage's
  state plus its activations per micro-batch in flight, scaled by the schedule's in-flight
  count (``dlsim.parallel.memory.memory_per_device`` is linear in it).

Only the combination runs per plan: m micro-batches of the micro part, plus the tail of the
stage whose sync and update end last.
"""

from __future__ import annotations

from collections.abc import Callable

from dlsim.parallel.memory import memory_per_device, stored_activations
from dlsim.parallel.pipeline import in_flight
from dlsim.planner.estimate import (
    CostTable,
    Estimate,
    Fabric,
    FastestProtocol,
    MicroPart,
    SyncPart,
    combine,
    layered,
    micro_part,
    sync_part,
)
from dlsim.planner.space import Plan


class Estimator:
    """Estimates and memory verdicts of many plans of one model on one cluster."""

    def __init__(self, table: Callable[[int], CostTable], optimizer: str,
                 fabric: Fabric) -> None:
        self.table, self.optimizer, self.fabric = table, optimizer, fabric
        self._micro: dict[tuple, MicroPart] = {}
        self._sync: dict[tuple, SyncPart] = {}
        self._state: dict[tuple, list[tuple[float, float]]] = {}
        self._activations: dict[tuple, list[float]] = {}
        self._verdicts: dict[tuple, float] = {}
        self._floors: dict[tuple, MicroPart] = {}
        self._fastest: dict[tuple[tuple[str, ...], bool], FastestProtocol] = {}

    def micro_part(self, plan: Plan) -> MicroPart:
        key = (*_micro_key(plan), plan.protocol)
        if key not in self._micro:
            self._micro[key] = micro_part(plan, self.table(plan.microbatch), self.fabric)
        return self._micro[key]

    def micro_floor(self, plan: Plan, protocols: tuple[str, ...],
                    rounded: bool = False) -> MicroPart:
        """``plan``'s micro part with each collective at its fastest of ``protocols``
        (``rounded``: and at its size rounded down to a power of two): no field of it
        exceeds that of ``micro_part`` at any of them (the planner's bounds)."""
        key = (*_micro_key(plan), protocols, rounded)
        if key not in self._floors:
            if (protocols, rounded) not in self._fastest:
                self._fastest[protocols, rounded] = FastestProtocol(self.fabric, protocols,
                                                                    rounded)
            self._floors[key] = micro_part(plan, self.table(plan.microbatch),
                                           self._fastest[protocols, rounded])
        return self._floors[key]

    def sync_part(self, plan: Plan, params: tuple[float, ...],
                  expert_params: tuple[float, ...] = ()) -> SyncPart:
        key = (plan.tensor, plan.pipeline, plan.data, params, plan.zero_stage, layered(plan),
               plan.algorithm, plan.placement, plan.protocol, plan.offload, plan.context,
               plan.expert, plan.expert_tensor, plan.shard_group, expert_params)
        if key not in self._sync:
            self._sync[key] = sync_part(plan, params, self.table(plan.microbatch),
                                        self.optimizer, self.fabric, expert_params)
        return self._sync[key]

    def estimate(self, plan: Plan, global_batch: int) -> Estimate:
        """What ``dlsim.planner.estimate.estimate`` gives for ``plan`` at ``global_batch``,
        from memoised parts: no part reads the batch, so a plan priced at one batch costs
        only ``combine`` at another (the micro-batch count m is all that changes)."""
        part = self.micro_part(plan)
        return combine(plan, part, self.sync_part(plan, part.params, part.expert_params),
                       global_batch)

    def memory_bytes(self, plan: Plan, global_batch: int) -> float:
        """``memory_per_device(...).total`` of ``plan`` at ``global_batch`` as the planner has
        always priced it: the fullest of p stages, each holding stage 0's micro-batches in
        flight (the only part that reads the batch). Memoised per verdict too: plans of
        every algorithm, placement and protocol share it."""
        verdict = (plan.tensor, plan.pipeline, plan.data, plan.microbatch, plan.recompute,
                   plan.sequence_parallel, plan.zero_stage, plan.offload, plan.context,
                   plan.expert, plan.expert_tensor, plan.shard_group, plan.schedule,
                   plan.virtual_stages, global_batch)
        if verdict not in self._verdicts:
            held = in_flight(plan.schedule, 0, plan.pipeline,
                             plan.microbatches_for(global_batch), plan.virtual_stages)
            self._verdicts[verdict] = max(state + held * activations + gathered
                                          for state, activations, gathered
                                          in self._stage_memory(plan))
        return self._verdicts[verdict]

    def _stage_memory(self, plan: Plan) -> list[tuple[float, float, float]]:
        """Each stage's model state, activations of one micro-batch and ZeRO-3's gathered
        layers: the state (``memory_per_device`` at one micro-batch in flight) does not read
        the micro-batch, recomputation or sequence parallelism, and the activations
        (its ``stored_activations`` term) read nothing else, so each is memoised apart."""
        sp = plan.sequence_parallel and plan.tensor > 1
        t, p, c = plan.tensor, plan.pipeline, plan.context
        table = self.table(plan.microbatch)
        held = (t, p, plan.microbatch, plan.recompute, sp, c)
        if held not in self._activations:
            self._activations[held] = [
                sum(stored_activations(table.model.layers[i], t, plan.recompute, sp,
                                       table.dtype) for i in part) / c
                for part in table.stages(p)]
        state = (t, p, plan.data, plan.zero_stage, plan.offload, c, plan.expert,
                 plan.expert_tensor, plan.shard_group)
        if state not in self._state:
            self._state[state] = []
            for part in table.stages(p):
                one = memory_per_device(
                    table.model, table.dtype, self.optimizer, data=plan.data, tensor=t,
                    stage_layers=part, in_flight_microbatches=0,
                    zero_stage=plan.zero_stage, offload=plan.offload, context=c,
                    expert=plan.expert, expert_tensor=plan.expert_tensor,
                    shard=plan.shard_group)
                self._state[state].append((one.params + one.grads + one.optimizer,
                                           one.gathered))
        return [(kept, activations, gathered) for (kept, gathered), activations
                in zip(self._state[state], self._activations[held])]


def _micro_key(plan: Plan) -> tuple:
    """What ``micro_part`` reads of a plan but its protocol."""
    gathers = layered(plan)
    return (plan.tensor, plan.pipeline, plan.data, plan.virtual_stages, plan.microbatch,
            plan.recompute, plan.sequence_parallel and plan.tensor > 1, plan.placement,
            gathers, plan.context, plan.expert, plan.expert_tensor,
            plan.shard_group if gathers else None, plan.tp_comm_overlap)
