"""The planner's funnel end: which estimated plans the engine confirms.

The engine decides the winner, but it only sees the plans it confirms. When it finds the
confirmed ones slower than the next plans' estimates, those are confirmed too (a few more),
so the winner is not a simulated plan that the next plans' estimates beat, unless the
extra confirmations run out.
"""

from __future__ import annotations

from dlsim.planner import PlanRequest
from dlsim.planner.confirm import Ahead, pool_of, worker_count
from dlsim.planner.search import EXTRA_CONFIRMATIONS, _confirm_beaten, _ranking
from dlsim.planner.space import Plan

REQUEST = PlanRequest(model="gpt3-175b", cluster="dgx-a100", gpus=(8,), global_batch=8)
RANK = _ranking(REQUEST)


def _row(seconds: float, layout: int, protocol: str = "auto") -> dict:
    """A plan row: ``layout`` tells layouts apart (its data degree), ``protocol`` twins."""
    fields = {f: 1 for f in Plan.__dataclass_fields__} | {"data": layout,
                                                            "protocol": protocol}
    return {**fields, "global_batch": 8, "time_to_train_s": seconds, "step_time_s": seconds,
            "fits_in_memory": True}


def _simulating(engine: dict[int, float]):
    """A stand-in for the engine: the plan at index i of the list takes engine[i] s."""
    seen: list[int] = []

    def confirm(row: dict) -> None:
        seen.append(row["index"])
        row["time_to_train_s"] = row["step_time_s"] = engine[row["index"]]
    return confirm, seen


def _plans(estimates: list[float]) -> list[dict]:
    rows = [_row(s, i) for i, s in enumerate(estimates)]
    for i, r in enumerate(rows):
        r["index"] = i
    return rows


def test_no_extra_confirmation_when_the_engine_agrees():
    rows = _plans([10.0, 11.0, 12.0, 13.0])
    confirm, seen = _simulating({0: 10.5, 1: 11.5})
    for r in rows[:2]:
        confirm(r)
    assert _confirm_beaten(rows, rows[:2], REQUEST, RANK, confirm) == []
    assert seen == [0, 1]


def test_plans_whose_estimate_beats_the_confirmed_are_confirmed():
    """The engine finds the first two 20 % slower than the third's estimate: the third is
    confirmed, and then no more, since it beats the fourth's estimate."""
    rows = _plans([10.0, 10.0, 11.0, 12.5, 13.0])
    confirm, seen = _simulating({0: 13.2, 1: 13.2, 2: 11.1, 3: 12.6})
    for r in rows[:2]:
        confirm(r)
    assert _confirm_beaten(rows, rows[:2], REQUEST, RANK, confirm) == [rows[2]]
    assert seen == [0, 1, 2]


def test_extra_confirmations_are_capped():
    rows = _plans([10.0 + i for i in range(10)])
    confirm, seen = _simulating({i: 100.0 for i in range(10)})  # the engine: all slow
    confirm(rows[0])
    assert len(_confirm_beaten(rows, rows[:1], REQUEST, RANK, confirm)) == EXTRA_CONFIRMATIONS
    assert seen == list(range(1 + EXTRA_CONFIRMATIONS))


def test_a_plan_that_does_not_fit_in_the_engine_does_not_count_as_confirmed_best():
    rows = _plans([10.0, 11.0, 12.0])
    confirm, seen = _simulating({0: 10.5, 1: 11.2})
    confirm(rows[0])
    rows[0]["fits_in_memory"] = False  # the engine's memory says no
    assert _confirm_beaten(rows, rows[:1], REQUEST, RANK, confirm) == [rows[1]]
    assert seen == [0, 1]


def test_nothing_confirmed_nothing_added():
    rows = _plans([10.0, 11.0])
    confirm, seen = _simulating({})
    assert _confirm_beaten(rows, [], REQUEST, RANK, confirm) == []
    assert seen == []


def test_protocol_twins_of_a_confirmed_plan_are_passed_over():
    """The confirmed plan's LL128 twin is next by estimate; the extra confirmation goes to
    the next layout instead."""
    rows = _plans([10.0, 10.0, 10.5, 12.0])
    rows[1].update(data=0, protocol="LL128")  # layout 0 again, another protocol
    confirm, seen = _simulating({0: 12.5, 2: 10.9})
    confirm(rows[0])
    assert _confirm_beaten(rows, rows[:1], REQUEST, RANK, confirm) == [rows[2]]
    assert seen == [0, 2]


def test_simulated_ties_go_to_the_plan_with_fewer_model_parallel_ranks():
    """GPT-2 1.5B on 16 A100: ZeRO-3 over d = 16, or d = 8 with context 2, simulate alike to
    5e-17 s; the winner is the plan without context parallelism."""
    from dlsim.planner import run_plan

    result = run_plan(PlanRequest("gpt2-1.5b", "dgx-a100", (16,), 64, confirm=1))
    simulated = [r for r in result.plans if r["step_time_source"] == "simulated"]
    assert len(simulated) > 1
    best = simulated[0]
    assert all(best["tensor"] * best["pipeline"] * best["context"] * best["expert"]
               <= r["tensor"] * r["pipeline"] * r["context"] * r["expert"]
               for r in simulated if abs(r["step_time_s"] / best["step_time_s"] - 1) < 1e-12)


def _doubled(scenario: dict) -> dict:
    """A stand-in engine run for worker processes: what it reads, doubled, with its pid."""
    import os

    return {"value": 2 * scenario["value"], "pid": os.getpid()}


def test_runs_started_ahead_are_the_runs_asked_for_on_other_processes():
    """Rows foreseen are started ahead on the pool, two at a time; a row not foreseen is
    started when asked for; each result is its own row's, from a worker process, and the
    pool's exit kills a run started ahead and never asked for."""
    import os

    rows = [{"value": i} for i in range(5)]
    with pool_of(2) as pool:
        ahead = Ahead(rows[:4], lambda row: row, pool, 2, _doubled)
        first, unforeseen = ahead.result(rows[0]), ahead.result(rows[4])
        second = ahead.result(rows[1])
    assert (first["value"], unforeseen["value"], second["value"]) == (0, 8, 2)
    assert os.getpid() not in {first["pid"], unforeseen["pid"], second["pid"]}
    assert worker_count(None, 1) == 1 and worker_count(8, 3) == 3
    with pool_of(1) as none:
        assert none is None
        assert Ahead(rows, lambda row: row, none, 1, _doubled).result(rows[3])["pid"] \
            == os.getpid()


def test_confirming_on_two_processes_ranks_as_confirming_in_this_one():
    """GPT-2 1.5B on 16 A100s confirms six plans (three and three extra): on two worker
    processes, started ahead, it confirms the same six and ranks every plan the same."""
    from dlsim.planner import run_plan

    kwargs = dict(model="gpt2-1.5b", cluster="dgx-a100", gpus=(16,), global_batch=64,
                  confirm=3, top=20)
    here = run_plan(PlanRequest(**kwargs, workers=1))
    parallel = run_plan(PlanRequest(**kwargs, workers=2))
    assert here.space["confirmed"] == parallel.space["confirmed"] > 3
    assert here.plans == parallel.plans and here.explanation == parallel.explanation
