"""The feasibility rules are the engine's: a plan the planner proposes runs, and a plan from
a wider space is accepted by ``feasibility.check`` exactly when the engine accepts it, for
the same reason."""

from __future__ import annotations

import re
from functools import cache

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import dlsim
from dlsim.cluster.build import build_topology, placement
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec, CommunicationSpec, ParallelismSpec
from dlsim.hardware import profiles as hardware
from dlsim.hardware.topology import Topology
from dlsim.parallel.feasibility import JobSpec, check, infeasible
from dlsim.planner.search import PlanRequest, plan, scenario_of
from dlsim.planner.space import Plan, Target, enumerate_plans
from dlsim.workload.shapes import TRANSFORMER_SHAPES, TransformerShape

A100 = "a100-sxm4-80gb"
# the wider space's models: a preset, a small custom transformer, and an MLP (no tensor
# parallelism); with their shape and layer count as the feasibility rules read them
MODELS = {
    "gpt2": ({"preset": "gpt2-124m"}, TRANSFORMER_SHAPES["gpt2-124m"], 14),
    "tiny": ({"kind": "transformer", "layers": 4, "hidden": 256, "heads": 8, "seq_len": 128,
              "vocab": 1000}, TransformerShape(4, 256, 8, 128, 1000, 1024, 8), 6),
    "mlp": ({"preset": "mlp-mnist"}, None, 3),
}


@cache
def _dgx(nodes: int, cluster: str = "dgx-a100") -> Topology:
    return build_topology(ClusterSpec(preset=cluster, nodes=nodes))


@cache
def _planner_space(model: str, gpus: int, batch: int) -> tuple[Plan, ...]:
    return tuple(enumerate_plans(TRANSFORMER_SHAPES[model], batch,
                                 Target.on(_dgx(gpus // 8), "bf16")))


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(["gpt2-124m", "megatron-1.7b"]), gpus=st.sampled_from([8, 16, 32]),
       batch=st.sampled_from([16, 32]), data=st.data())
def test_every_plan_the_planner_proposes_runs_in_the_engine(model, gpus, batch, data):
    plans = _planner_space(model, gpus, batch)
    chosen = plans[data.draw(st.integers(0, len(plans) - 1))]
    result = dlsim.simulate(scenario_of(PlanRequest(model, "dgx-a100", (gpus,), batch),
                                        chosen, 8))
    assert result.step_time_s > 0


def _engine_field(err: ScenarioError) -> str | None:
    """The field the user is shown: a loader error names it in its message."""
    named = re.match(r"field '([^']+)'", err.message)
    return err.field or (named.group(1) if named else None)


def _mostly(common, *others, times: int = 3) -> st.SearchStrategy:
    """``common`` ``times`` times as often as all ``others``: most plans run, and each rule
    still gets its turn."""
    return st.sampled_from([common] * times * len(others) + list(others))


@st.composite
def _pipelines(draw: st.DrawFn) -> tuple[int, str, int, int]:
    """(pipeline, schedule, virtual stages, ZeRO stage), mostly ones that go together."""
    pipeline = draw(_mostly(1, 2, 4, 2, 4, 3, 8))
    schedule = draw(_mostly("1f1b", "gpipe", "interleaved", times=9) if pipeline == 1
                    else st.sampled_from(["1f1b", "gpipe", "interleaved", "interleaved"]))
    virtual = draw(st.sampled_from([2, 4, 1, 3]) if schedule == "interleaved"
                   else _mostly(1, 2, times=9))
    zero = draw(_mostly(0, 1, 2, 3) if pipeline == 1 else _mostly(0, 1, 2, 3, times=9))
    return pipeline, schedule, virtual, zero


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(model=st.sampled_from(["gpt2", "gpt2", "tiny", "tiny", "mlp"]),
       nodes=st.sampled_from([1, 2, 3]), data=_mostly(None, *range(1, 17), times=9),
       tensor=_mostly(1, 2, 4, 8, 2, 4, 3), pipelines=_pipelines(),
       batch=st.sampled_from([48, 24, 16, 6]), micro=st.sampled_from([None, 1, 2, 4, 3]),
       recompute=st.sampled_from(["none", "selective", "full"]), lora=_mostly(False, True),
       precision=_mostly("bf16", "fp8", times=9),
       algorithm=st.sampled_from(["ring", "tree", "hierarchical", "halving-doubling", "ps",
                                  "auto"]),
       servers=_mostly(1, 2, 3, 64), compression=_mostly("none", "fp16", "onebit", times=9),
       period=_mostly(1, 2, times=9), steps=_mostly(1, 2, times=9),
       place=st.sampled_from(["pack", "spread"]))
def test_feasibility_accepts_exactly_what_the_engine_runs(
        model, nodes, data, tensor, pipelines, batch, micro, recompute, lora, precision,
        algorithm, servers, compression, period, steps, place):
    """Wider than the planner's space: any degrees (data given or left to the devices),
    schedules, virtual stages, ZeRO stages, micro-batches, recomputation, LoRA, precisions
    the device lacks, every all-reduce algorithm, parameter servers, compression, local SGD
    and both placements."""
    pipeline, schedule, virtual, zero = pipelines
    spec, shape, layers = MODELS[model]
    parallelism = {"tensor": tensor, "pipeline": pipeline, "schedule": schedule,
                   "virtual_stages": virtual, "zero_stage": zero, "recompute": recompute}
    if data is not None:
        parallelism["data"] = data
    training = {"global_batch": batch, "steps": steps, "optimizer": "adam"}
    if micro is not None:
        training["microbatch"] = micro
    lora = lora and shape is not None  # LoRA targets are the model's matrices: GPT's qkv
    if lora:
        training["lora"] = {"rank": 8, "targets": ["qkv"]}
    communication = {"data_parallel": algorithm, "servers": servers,
                     "compression": compression, "local_sgd_period": period}
    scenario = {"name": "wide", "model": spec,
                "cluster": {"preset": "dgx-a100", "nodes": nodes}, "precision": precision,
                "training": training, "parallelism": parallelism,
                "communication": communication, "placement": place}
    topology = _dgx(nodes)
    job = JobSpec(shape, layers, hardware.device(A100), 8 * nodes, 8, precision, batch,
                      CommunicationSpec(**communication), micro, data, tensor, pipeline,
                      schedule, virtual, zero, lora, steps)
    verdict = infeasible(job, lambda n: placement(n, topology, place))
    event(f"refused: {verdict.field}" if verdict else "runs")
    try:
        dlsim.simulate(scenario)
    except ScenarioError as refused:
        assert verdict is not None, f"the engine refused what feasibility accepts: {refused}"
        assert verdict.field == _engine_field(refused)
        assert verdict.message.rstrip(".") in refused.message
    else:
        assert verdict is None, f"the engine ran what feasibility refuses: {verdict}"


def test_the_loader_and_the_rules_say_the_same():
    """A parallelism section that cannot go together is refused at load with the rule's
    text, and ``check`` refuses it with the same text for the field 'parallelism'."""
    with pytest.raises(ValueError, match="ZeRO stage 2 partitions") as loaded:
        ParallelismSpec(pipeline=2, zero_stage=2)
    job = JobSpec(TRANSFORMER_SHAPES["gpt2-124m"], 14, hardware.device(A100), 8, 8,
                      "bf16", 8, CommunicationSpec(), pipeline=2, zero_stage=2)
    with pytest.raises(ScenarioError) as checked:
        check(job, lambda n: placement(n, _dgx(1), "pack"))
    assert checked.value.field == "parallelism"
    assert checked.value.message.rstrip(".") in str(loaded.value)


def test_tensor_degree_must_divide_the_key_value_heads():
    """LLaMA-2-70B has 64 query heads but 8 key-value heads: t = 16 divides the first only."""
    job = JobSpec(TRANSFORMER_SHAPES["llama-2-70b"], 82, hardware.device("h100-sxm5-80gb"),
                      16, 8, "bf16", 16, CommunicationSpec(), tensor=16)
    verdict = infeasible(job, lambda n: placement(n, _dgx(2, "dgx-h100"), "pack"))
    assert verdict is not None and verdict.field == "parallelism.tensor"
    assert verdict.message == "tensor (16) must divide the model's key-value heads (8)."


def test_hierarchical_allreduce_on_groups_split_unevenly_over_nodes_is_refused():
    """24 GPUs as d=3, t=4, p=2: a data-parallel group holds ranks 0, 4, 8, two on node 0
    and one on node 1, which the two-level all-reduce cannot split. The engine used to fail
    on it with an assertion (and the planner with it); now both name the field."""
    scenario = {"name": "uneven", "model": {"preset": "gpt2-124m"},
                "cluster": {"preset": "dgx-a100", "nodes": 3},
                "training": {"global_batch": 6, "microbatch": 1},
                "parallelism": {"data": 3, "tensor": 4, "pipeline": 2},
                "communication": {"data_parallel": "hierarchical"}}
    with pytest.raises(ScenarioError, match=r"same number of ranks on every node, got \[2, 1\]"
                       ) as err:
        dlsim.simulate(scenario)
    assert err.value.field == "communication.data_parallel"
    plans = _planner_space("gpt2-124m", 24, 48)
    assert not [p for p in plans if (p.data, p.tensor, p.pipeline, p.algorithm,
                                     p.placement) == (3, 4, 2, "hierarchical", "pack")]
    assert [p for p in plans if (p.data, p.tensor, p.pipeline, p.algorithm) == (3, 4, 2, "ring")]
    best = plan(PlanRequest("gpt2-124m", "dgx-a100", (24,), 48, confirm=1)).plans[0]
    assert best["step_time_source"] == "simulated"
