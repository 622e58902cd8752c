"""The planner's plan space: its dimensions, its size, and that every plan in it runs."""

from __future__ import annotations

import dataclasses
import itertools
from functools import cache

from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.cluster.build import build_topology
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ClusterSpec
from dlsim.parallel import feasibility
from dlsim.planner import PlanRequest, run_plan
from dlsim.planner.space import Plan, PlanSpace, Target, enumerate_plans, job_of
from dlsim.workload.shapes import TRANSFORMER_SHAPES, gpt

CALCULON_GPT3_1024_A100 = 11_698_528  # Calculon's default space, measured (issue 13, item 6)


def divisors(n: int) -> list[int]:
    return [k for k in range(1, n + 1) if n % k == 0]


@cache
def _target(gpus: int, cluster: str = "dgx-a100") -> Target:
    return Target.on(build_topology(ClusterSpec(preset=cluster, nodes=gpus // 8)), "bf16")


def _count(blocks: int, seq: int, gpus: int, batch: int, per_domain: int) -> int:
    """Plans of the space, counted from its dimensions: tensor a power of two within the
    NVLink domain, context 1 or any c with 2c dividing the sequence, pipeline any divisor of
    the blocks, d = N/(t·c·p) dividing the batch, micro-batch any divisor of the replica's
    batch, p = 1 one schedule, else gpipe, 1f1b and interleaved with every v > 1 dividing
    blocks/p; ZeRO 0-3 where d·c > 1, its shard group the whole group or 1 < k < d dividing d;
    the three algorithms for ZeRO-0 all-reduces (one otherwise), two placements; then 3
    recomputations x 2 sequence parallelisms (t > 1) x 2 offloads x 4 protocols."""
    total = 0
    tensors = [t for t in (1, 2, 4, 8, 16, 32, 64) if t <= per_domain and gpus % t == 0]
    contexts = [c for c in divisors(seq) if c == 1 or seq % (2 * c) == 0]
    for t, c, p in itertools.product(tensors, contexts, divisors(blocks)):
        if gpus % (t * c * p) or batch % (gpus // (t * c * p)):
            continue
        d = gpus // (t * c * p)
        schedules = 1 if p == 1 else 2 + len(divisors(blocks // p)) - 1
        for _b, zero in itertools.product(divisors(batch // d),
                                          (0, 1, 2, 3) if d * c > 1 else (0,)):
            shards = 1 if zero == 0 else 1 + sum(1 < k < d for k in divisors(d))
            algorithms = 3 if zero == 0 and d * c > 1 else 1
            total += (schedules * shards * algorithms * 2
                      * 3 * (2 if t > 1 else 1) * 2 * 4)
    return total


def test_space_for_gpt3_on_1024_a100_is_at_least_calculons():
    """GPT-3 175B on 1,024 A100s (128 DGX A100 nodes), global batch 1536: the space holds
    12,396,096 plans, more than Calculon's 11,698,528 executions."""
    space = PlanSpace(TRANSFORMER_SHAPES["gpt3-175b"], 1536, _target(1024))
    expected = _count(96, 2048, 1024, 1536, 8)
    assert space.size() == expected >= CALCULON_GPT3_1024_A100


def _brute_force(blocks: int, heads: int, gpus: int, batch: int) -> set[tuple]:
    """The runnable (d, t, p, b, schedule, v, zero, sequence parallel) tuples, by trying every
    value against the rules the engine applies today: ZeRO-2 without a pipeline (ZeRO-1
    and FSDP with one too), interleaving with m a multiple of p and p·v blocks at most."""
    found = set()
    for t, p, b in itertools.product((1, 2, 4, 8), divisors(blocks), range(1, batch + 1)):
        if heads % t or gpus % (t * p):
            continue
        d = gpus // (t * p)
        if batch % (d * b):
            continue
        m = batch // (d * b)
        schedules = [("1f1b", 1)] if p == 1 else [("gpipe", 1), ("1f1b", 1)] + [
            ("interleaved", v) for v in divisors(blocks // p) if v > 1 and m % p == 0]
        zeros = (0,) if d == 1 else (0, 1, 3) if p > 1 else (0, 1, 2, 3)
        for (schedule, v), zero, sp in itertools.product(schedules, zeros,
                                                         (False, True) if t > 1 else (False,)):
            found.add((d, t, p, b, schedule, v, zero, sp))
    return found


@settings(max_examples=25, deadline=None)
@given(blocks=st.sampled_from([4, 6, 12]), heads=st.sampled_from([4, 12, 16]),
       gpus=st.sampled_from([8, 16, 32]), batch=st.sampled_from([32, 48, 64]))
def test_plan_space_is_every_runnable_plan_once(blocks, heads, gpus, batch):
    shape = gpt(blocks, heads * 64, heads, 128, 1000)
    plans = list(enumerate_plans(shape, batch, _target(gpus), recompute=("none",),
                                 placements=("pack",), algorithms=("ring",),
                                 offload=("none",), protocol=("auto",), context=(1,),
                                 expert=(1,), expert_tensor=(1,), shard_group=(None,)))
    keys = [(p.data, p.tensor, p.pipeline, p.microbatch, p.schedule, p.virtual_stages,
             p.zero_stage, p.sequence_parallel) for p in plans]
    assert len(keys) == len(set(keys))
    assert set(keys) == _brute_force(blocks, heads, gpus, batch)
    assert all(p.data * p.tensor * p.pipeline == gpus for p in plans)


def test_a_dimension_is_searched_exactly_where_the_engine_runs_it(monkeypatch):
    """Context parallelism: every c whose 2c chunks divide the sequence is searched, since
    the engine runs it; where the rules refuse a dimension (here: a check that refuses
    context > 1), its plans are counted and dropped, with no planner change."""
    shape = gpt(4, 512, 8, 128, 1000)
    narrowed = {"recompute": ("none",), "offload": ("none",), "protocol": ("auto",)}
    space = PlanSpace(shape, 32, _target(16), narrowed)
    assert {p.context for p in space} == {1, 2, 4, 8, 16}
    original = feasibility.check

    def refusing_context(job, place, lowered=None):
        if job.context > 1:
            raise ScenarioError("refused here", field="parallelism.context")
        return original(job, place, lowered)

    monkeypatch.setattr(feasibility, "check", refusing_context)
    narrower = PlanSpace(shape, 32, _target(16), narrowed)
    assert {p.context for p in narrower} == {1}
    assert narrower.count.enumerated == space.count.enumerated
    assert narrower.count.feasible < space.count.feasible


def test_every_plan_the_planner_returns_passes_the_rules():
    request = PlanRequest("megatron-1.7b", "dgx-a100", (16,), 32, top=50, confirm=1)
    result = run_plan(request)
    assert len(result.plans) == 50
    target = _target(16)
    for row in result.plans:
        plan = Plan(*(row[f.name] for f in dataclasses.fields(Plan)))
        feasibility.check(job_of(plan, TRANSFORMER_SHAPES["megatron-1.7b"], 32, target),
                          lambda n, policy=plan.placement: target.place(n, policy))
    space = result.space  # pruned plans are skipped before any check
    assert space["enumerated"] >= space["feasible"] + space["pruned"]
    assert space["feasible"] >= space["fitting"] == len(result.candidates) == space[
        "estimated"]



class _Recording(dict):
    """A layout that notes which of its values a dimension reads."""

    def __init__(self, values: dict) -> None:
        super().__init__(values)
        self.read: set[str] = set()

    def __getitem__(self, key: str):
        self.read.add(key)
        return super().__getitem__(key)


def test_the_dimensions_after_the_prefix_read_only_what_they_name():
    """The walk shares a tail of layouts among the prefixes that agree on what the tail's
    and the free dimensions name in ``reads``: a dimension reading anything else would make
    prefixes share tails they should not. Each is asked at every layout of a dense and an
    MoE space, and reads only what it names."""
    from dlsim.planner.space import DIMENSIONS, PREFIX_END

    names = [d.name for d in DIMENSIONS if d.checked]
    after = {d.name for d in DIMENSIONS if d.checked and
             names.index(d.name) > names.index(PREFIX_END)}
    moe = dataclasses.replace(TRANSFORMER_SHAPES["mixtral-8x7b"], layers=4)
    for shape, gpus in ((gpt(12, 768, 12, 1024, 1000), 32), (moe, 16)):
        space = PlanSpace(shape, 64, _target(gpus))
        layouts = list(space.layouts())
        assert len(layouts) > 100
        for dim in DIMENSIONS:
            if dim.checked and dim.name not in after:
                continue
            assert dim.reads is not None, dim.name
            before = names[:names.index(dim.name)] if dim.checked else names
            for _, layout, _, _ in layouts:
                chosen = _Recording({n: layout[n] for n in before})
                dim.values(space.problem, chosen)
                assert chosen.read <= set(dim.reads), (dim.name, chosen.read)


def test_tensor_parallel_overlap_is_searched_where_its_contention_is_priced():
    """TE's TP overlap needs sequence parallelism and t > 1, and is searched on devices
    whose profile prices what the overlapped collectives take (H100: comm_contention 0.15),
    not where it would be free (A100: none measured); its scenario asks the engine for it."""
    from dlsim.planner.search import scenario_of

    shape = gpt(4, 1024, 16, 1024, 1000)
    on = {name: list(enumerate_plans(shape, 16, _target(16, name), recompute=("none",),
                                     offload=("none",), protocol=("auto",)))
          for name in ("dgx-h100", "dgx-a100")}
    overlapped = [p for p in on["dgx-h100"] if p.tp_comm_overlap]
    assert overlapped and not any(p.tp_comm_overlap for p in on["dgx-a100"])
    assert all(p.tensor > 1 and p.sequence_parallel for p in overlapped)
    # every SP plan of H100 has its overlapped twin, and no plan without SP has one
    sp = {dataclasses.replace(p, tp_comm_overlap=True) for p in on["dgx-h100"]
          if p.sequence_parallel and not p.tp_comm_overlap}
    assert sp == set(overlapped)
    request = PlanRequest("gpt2-124m", "dgx-h100", (16,), 16)
    assert scenario_of(request, overlapped[0], 8)["parallelism"]["tp_comm_overlap"] is True
    assert "tp_comm_overlap" not in scenario_of(request, on["dgx-a100"][0], 8)["parallelism"]
