"""The plans the estimate-vs-engine comparisons sample: every ``stride``-th plan of the
planner's space as it was before issue 13 widened it (micro-batches 1-8, v 1, 2 or 4, no
offload, NCCL's own protocols, no context parallelism or hybrid sharding:
tests/planner/test_layouts.py samples those), each with its model and cost table, so that
the step-time and energy figures stay comparable across sessions."""

from __future__ import annotations

from collections.abc import Iterator

from dlsim.contract.scenario import ModelSpec
from dlsim.hardware.profiles import DeviceProfile
from dlsim.planner.estimate import CostTable
from dlsim.planner.space import Plan, Target, enumerate_plans
from dlsim.workload.model import Model
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import TRANSFORMER_SHAPES


def sampled_plans(model: str, batch: int, target: Target, device: DeviceProfile,
                  stride: int) -> Iterator[tuple[Plan, Model, CostTable]]:
    shape = TRANSFORMER_SHAPES[model]
    narrowed = enumerate_plans(shape, batch, target, microbatch=(1, 2, 4, 8),
                               virtual_stages=(1, 2, 4), offload=("none",), protocol=("auto",))
    for plan in [plan for plan in narrowed
                 if plan.context == 1 and plan.shard_group is None][::stride]:
        built = build_model(ModelSpec(preset=model), plan.microbatch, 2)
        yield plan, built, CostTable(built, device, "bf16", plan.microbatch * shape.seq_len,
                                     shape.hidden, shape, plan.microbatch)
