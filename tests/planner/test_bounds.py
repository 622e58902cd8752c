"""The planner's lower bounds (``dlsim.planner.bounds``) skip only plans that cannot reach
the ranking: a bounded search returns what the exhaustive one does."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest

from dlsim.cluster.build import build_topology
from dlsim.contract.scenario import ClusterSpec
from dlsim.planner import PlanRequest, run_plan
from dlsim.planner import search as S
from dlsim.planner.bounds import step_lower_bound
from dlsim.planner.estimate import Fabric
from dlsim.planner.factored import Estimator
from dlsim.planner.space import PLAN_PROTOCOLS, PlanSpace, Target

CASES = [
    # (request keywords, what it exercises)
    (dict(model="megatron-1.7b", cluster="dgx-a100", gpus=(8, 16), global_batch=32),
     "two GPU counts, time"),
    (dict(model="megatron-1.7b", cluster="dgx-a100", gpus=(8, 16), global_batch=32,
          objective="cost", tokens=2e9), "cost over two counts: the Pareto front"),
    (dict(model="megatron-1.7b", cluster="dgx-a100", gpus=(8, 16), global_batch=32,
          objective="energy", tokens=2e9), "energy"),
    (dict(model="gpt2-1.5b", cluster="dgx-a100", gpus=(8, 16), global_batch=64,
          tokens=5e9, max_days=0.3), "a deadline only some plans meet"),
    (dict(model="mixtral-8x7b", cluster="dgx-h100", gpus=(8,), global_batch=16, top=5),
     "expert parallelism"),
]


def _without_order(result: S.PlanResult) -> tuple:
    return (result.plans, result.pareto, result.explanation,
            result.smallest_gpus_meeting_deadline)


@pytest.mark.parametrize("kwargs", [c for c, _ in CASES], ids=[i for _, i in CASES])
def test_bounded_search_ranks_as_the_exhaustive_one(kwargs: dict) -> None:
    bounded = run_plan(PlanRequest(**kwargs, confirm=0))
    exhaustive = run_plan(PlanRequest(**kwargs, confirm=0, exhaustive=True))
    assert _without_order(bounded) == _without_order(exhaustive)
    assert exhaustive.space["pruned"] == 0
    assert bounded.space["pruned"] > 0  # the bound did skip plans, or the test shows nothing
    assert bounded.space["enumerated"] == exhaustive.space["enumerated"]
    assert (bounded.space["feasible"] + bounded.space["pruned"]
            >= exhaustive.space["feasible"])
    # what the bounded search estimated, it estimated exactly as the exhaustive one
    everything = {tuple(sorted((k, v) for k, v in r.items() if not isinstance(v, dict)))
                  for r in exhaustive.candidates}
    assert all(tuple(sorted((k, v) for k, v in r.items() if not isinstance(v, dict)))
               in everything for r in bounded.candidates)


def _tables(spec, shape, device):
    """The planner's cost table per micro-batch (``search.plan``'s ``table``), memoised."""
    tables: dict[int, S.CostTable] = {}

    def table(mb: int) -> S.CostTable:
        if mb not in tables:
            kernel = S.attention_kernel(spec, device, "bf16")
            tables[mb] = S.CostTable(S.build_model(spec, mb, 2, kernel), device, "bf16",
                                     mb * shape.seq_len, shape.hidden, shape, mb)
        return tables[mb]
    return table


def test_no_estimate_is_below_its_blocks_bound() -> None:
    """The bound of every block is at most the estimate of each of its plans (the
    exhaustive search estimates them all)."""
    request = PlanRequest("gpt2-1.5b", "dgx-a100", (16,), 64, confirm=0, exhaustive=True)
    result = run_plan(request)
    system = S.hardware.system(request.cluster)
    device = S.hardware.device(system.device)
    shape, spec = S.model_shape(request.model), S.model_spec(request.model)
    ((_, _, ((batch, space),)),) = S._admit(request, shape, system, (64,))
    table = _tables(spec, shape, device)

    def power(mb: int) -> S.PowerModel:
        return S.power_model(table(mb).model, device, "bf16")

    layout_fields = tuple(next(space.layouts())[1])
    bound_of = {}
    for block in S._blocks(space, table, power, request, batch, 1.0, device):
        for tail, *_ in block.tails:
            layout = {**block.prefix, **tail}
            bound_of[tuple(layout.values()) + tuple(v for _, v in block.choice)] = block.step_s
    for row in result.candidates:
        key = tuple(row[k] for k in (*layout_fields, *S.BOUND_DIMENSIONS))
        assert bound_of[key] <= row["step_time_s"], row
    assert len(result.candidates) > 1000


def test_step_bound_closed_form() -> None:
    # p = 1: m micro-batches of compute; p = 4, v = 2: (m - 1/2)·C + sum/2
    assert step_lower_bound((2.0,), 8, 1) == pytest.approx(16.0, rel=1e-11)
    assert step_lower_bound((1.0, 2.0, 1.0, 1.0), 8, 2) == pytest.approx(
        7.5 * 2.0 + 5.0 / 2, rel=1e-11)


@pytest.mark.parametrize("objective, gpus", [("time", (8,)), ("energy", (8, 16))])
def test_bounded_search_over_batches_ranks_as_the_exhaustive_one(objective: str,
                                                                  gpus: tuple) -> None:
    """With a target loss each plan keeps its best batch; the bounds hold at every batch.
    By energy a plan keeps its least-energy batch and the front is each count's fastest at
    any batch, so the bounds prune there too."""
    kwargs = dict(model="gpt2-124m", cluster="dgx-a100", gpus=gpus, global_batch=64,
                  target_loss=3.5, confirm=0, objective=objective)
    bounded = run_plan(PlanRequest(**kwargs))
    exhaustive = run_plan(PlanRequest(**kwargs, exhaustive=True))
    assert _without_order(bounded) == _without_order(exhaustive)
    assert bounded.time_to_loss == exhaustive.time_to_loss
    assert bounded.space["pruned"] > 0


def test_bounded_search_confirms_as_the_exhaustive_one() -> None:
    """The extra confirmations pass over protocol twins of confirmed plans, so the j-th lies
    within the first confirm + j layouts by estimate (plans that differ only in their
    protocol are one layout): the depth the kept layouts reach (GPT-3 175B on 1,024 A100s
    confirms its winner at estimate rank 12, past the max(top, confirm) plans kept once).
    GPT-2 1.5B on 16 A100s confirms six plans, and the bounded search, which also skips
    whole blocks and layouts whose micro-batches with their communication are slower than
    the kept plans, simulates the same six and answers the same; its confirmed plans lie
    within the first six layouts by estimate, as the kept ones must."""
    kwargs = dict(model="gpt2-1.5b", cluster="dgx-a100", gpus=(16,), global_batch=64, confirm=3,
                  top=1)
    bounded = run_plan(PlanRequest(**kwargs))
    exhaustive = run_plan(PlanRequest(**kwargs, exhaustive=True))
    assert bounded.space["confirmed"] == exhaustive.space["confirmed"] > 3
    assert _without_order(bounded) == _without_order(exhaustive)
    assert bounded.space["estimated"] < exhaustive.space["estimated"] / 10
    layouts: list[tuple] = []
    for row in sorted(exhaustive.candidates, key=lambda r: r["estimated_step_time_s"]):
        if S._layout_key(row) not in layouts:
            layouts.append(S._layout_key(row))
    depth = 3 + S.EXTRA_CONFIRMATIONS
    confirmed = [layouts.index(S._layout_key(row)) for row in exhaustive.candidates
                 if row["step_time_source"] == "simulated"]
    assert len(confirmed) > 3 and max(confirmed) < depth, confirmed


MIXTRAL_LIKE = {"architectures": ["MixtralForCausalLM"], "num_hidden_layers": 4,
                "hidden_size": 1024, "num_attention_heads": 16, "num_key_value_heads": 4,
                "intermediate_size": 2816, "num_local_experts": 8, "num_experts_per_tok": 2,
                "max_position_embeddings": 8192, "vocab_size": 32000}


def _step(part, m: int) -> float:
    return m * part.micro + part.bubble + part.p2p


def test_floors_never_exceed_a_protocols_micro_part(tmp_path) -> None:
    """The micro part at each collective's fastest protocol, exact or at sizes rounded down
    to a power of two, and without ZeRO-3's gathers (the block's floor), is at most the
    micro part of the plan at every protocol: fields and the step they make. Every plan of
    an MoE model with context, expert, tensor and pipeline parallelism and FSDP on 16 H100s
    that the engine runs at micro-batch 1 with ring all-reduce (over 2,000); the rounded floor
    is strictly below every protocol's for over 100 of them (a floor, not a copy)."""
    config = tmp_path / "moe.json"
    config.write_text(json.dumps(MIXTRAL_LIKE))
    shape = S.model_shape(str(config))
    topology = build_topology(ClusterSpec(preset="dgx-h100", nodes=2))
    target = Target.on(topology, "bf16")
    device = topology.device
    spec = S.model_spec(str(config))
    table = _tables(spec, shape, device)

    estimator = Estimator(table, "adam", Fabric(topology))
    space = PlanSpace(shape, 16, target, only={"offload": ("none",), "microbatch": (1,),
                                                "algorithm": ("ring",)})
    protocols = PLAN_PROTOCOLS
    checked = lower = 0
    for plan in space:
        if plan.protocol != "auto":
            continue
        m = plan.microbatches_for(16)
        parts = [estimator.micro_part(replace(plan, protocol=p)) for p in protocols]
        block = replace(plan, zero_stage=0, shard_group=None)
        for floor in (estimator.micro_floor(plan, protocols),
                      estimator.micro_floor(plan, protocols, rounded=True),
                      estimator.micro_floor(block, protocols),
                      estimator.micro_floor(block, protocols, rounded=True)):
            for part in parts:
                assert floor.micro <= part.micro and floor.bubble <= part.bubble
                assert floor.p2p <= part.p2p and floor.compute == part.compute
                assert _step(floor, m) <= _step(part, m)
        rounded = estimator.micro_floor(plan, protocols, rounded=True)
        lower += _step(rounded, m) < min(_step(part, m) for part in parts)
        checked += 1
    assert checked > 2000 and lower > 100
