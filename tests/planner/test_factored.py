"""The factored estimate: every plan's estimate and memory from memoised parts, equal to the
per-plan estimate and ``memory_per_device`` to the last bit."""

from __future__ import annotations

import itertools
from functools import cache

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec, ModelSpec
from dlsim.parallel.memory import memory_per_device
from dlsim.parallel.pipeline import in_flight
from dlsim.planner.estimate import CostTable, Fabric, estimate
from dlsim.planner.factored import Estimator
from dlsim.planner.space import Plan, Target, enumerate_plans
from dlsim.workload.presets import build_model
from dlsim.workload.shapes import TRANSFORMER_SHAPES

MODEL, GPUS, BATCH = "megatron-1.7b", 16, 32


@cache
def _setup() -> tuple[tuple[Plan, ...], Estimator, Fabric]:
    topology = build_topology(ClusterSpec(preset="dgx-a100", nodes=GPUS // 8))
    shape = TRANSFORMER_SHAPES[MODEL]
    plans = tuple(enumerate_plans(shape, BATCH, Target.on(topology, "bf16")))
    estimator = Estimator(_table, "adam", Fabric(topology))
    return plans, estimator, Fabric(topology)  # the per-plan estimate gets its own fabric


@cache
def _table(microbatch: int) -> CostTable:
    device = build_topology(ClusterSpec(preset="dgx-a100", nodes=1)).device
    shape = TRANSFORMER_SHAPES[MODEL]
    return CostTable(build_model(ModelSpec(preset=MODEL), microbatch, 2), device, "bf16",
                     microbatch * shape.seq_len, shape.hidden, shape, microbatch)


@settings(max_examples=60, deadline=None)
@given(st.data())
def test_factored_estimate_equals_the_per_plan_estimate(data):
    """A random plan of megatron-1.7b on 16 A100s (every dimension: context parallelism,
    shard groups, offload and forced protocols too): the same step time, breakdown and
    memory, exactly."""
    plans, estimator, fabric = _setup()
    plan = plans[data.draw(st.integers(0, len(plans) - 1))]
    table = _table(plan.microbatch)
    assert estimator.estimate(plan, BATCH) == estimate(plan, table, "adam", BATCH, fabric)
    m = plan.microbatches_for(BATCH)
    memory = memory_per_device(
        table.model, "bf16", "adam", data=plan.data, tensor=plan.tensor,
        pipeline=plan.pipeline, in_flight_microbatches=in_flight(
            plan.schedule, 0, plan.pipeline, m, plan.virtual_stages),
        zero_stage=plan.zero_stage, recompute=plan.recompute, offload=plan.offload,
        sequence_parallel=plan.sequence_parallel and plan.tensor > 1, context=plan.context,
        shard=plan.shard_group)
    assert estimator.memory_bytes(plan, BATCH) == memory.total


def test_offload_adds_the_pcie_round_trip_and_the_host_update():
    """ZeRO-Offload on one A100: the update is the gradients down and the bf16 parameters
    up over PCIe 4 x16 and Adam on the host, so the step grows by exactly that less the
    device's own update."""
    from dlsim.hardware import profiles as hardware
    from dlsim.parallel.data_parallel import OFFLOAD_HOST
    from dlsim.workload.costmodel import optimizer_time_s

    topology = build_topology(ClusterSpec(preset="dgx-a100", nodes=1))
    device = topology.device
    model = build_model(ModelSpec(preset="gpt2-124m"), 4, 2)
    table = CostTable(model, device, "bf16", 4 * 1024, 768)
    base = Plan(1, 1, 1, 1, 4, "1f1b", 1, 0, "none", "pack", "ring")
    off = Plan(1, 1, 1, 1, 4, "1f1b", 1, 0, "none", "pack", "ring", offload="optimizer")
    fabric = Fabric(topology)
    grown = (estimate(off, table, "adam", 8, fabric).step_time_s
             - estimate(base, table, "adam", 8, fabric).step_time_s)
    n = sum(piece.params for piece in table.pieces(1, 1, "none"))
    pcie = hardware.link(device.pcie or "pcie4-x16")
    expected = (n * 2 / pcie.up_Bps + optimizer_time_s(n * 8, "adam",
                                                       hardware.device(OFFLOAD_HOST))
                + n * 2 / pcie.down_Bps - optimizer_time_s(n, "adam", device))
    assert abs(grown - expected) <= 1e-9 * abs(expected)


@pytest.mark.parametrize("model", ["megatron-1.7b", "mixtral-8x7b", "deepseek-v3"])
def test_shards_built_from_the_distinct_layers_are_the_whole_models(model):
    """The cost table shards a model's distinct layers and spreads them over its layers
    (``CostTable._spread``): the same models, to the last field, as sharding every layer,
    at every tensor, sequence-parallel, context and expert choice."""
    device = build_topology(ClusterSpec(preset="dgx-h100", nodes=1)).device
    shape = TRANSFORMER_SHAPES[model]
    table = CostTable(build_model(ModelSpec(preset=model), 2, 2), device, "bf16",
                      2 * shape.seq_len, shape.hidden, shape, 2)
    experts = (1, 2, 8) if shape.moe is not None else (1,)
    for t, sp, c, e in itertools.product((1, 2, 8), (False, True), (1, 4), experts):
        for et in (1, 2) if shape.moe is not None else (1,):
            assert (table._shard(t, sp, c, e, et)[:2]
                    == CostTable._transform(table.model, t, sp, c, e, et))
