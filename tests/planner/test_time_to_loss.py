"""``dlsim plan --target-loss``: the global batch searched against Kaplan et al. 2020's steps.

Closed forms are computed here from the paper's constants, not from dlsim's: B_crit(L) =
2e8 / L^(1/0.21) tokens (eq. 1.4), S_min(L) = 2.1e3 / (L - (6.5e13/N)^0.077)^(1/0.76)
(eq. 1.6, Table 3), S = S_min (1 + B_crit/B) (eq. 5.4) and E = S·B = E_min (1 + B/B_crit)."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.planner import PlanRequest, plan_summary, run_plan
from dlsim.planner.batches import WINDOW, around_critical, parse_global_batch
from dlsim.planner.space import PLAN_FIELDS
from dlsim.planner.time_to_loss import LossTarget
from dlsim.workload.presets import build_model

SEQ, LAYERS, HIDDEN = 1024, 12, 768  # GPT-2 124M


def _gpt2_target(loss: float) -> LossTarget:
    return LossTarget.of(loss, build_model(ModelSpec(preset="gpt2-124m"), 1, 2), SEQ)


def test_gpt2_target_matches_kaplans_constants():
    target = _gpt2_target(3.5)
    n = LAYERS * (12 * HIDDEN**2 + 13 * HIDDEN)  # qkv, proj, two MLP GEMMs, biases, 2 norms
    assert target.non_embedding_parameters == n
    assert target.critical_batch_tokens == pytest.approx(2e8 / 3.5 ** (1 / 0.21), rel=1e-12)
    s_min = 2.1e3 / (3.5 - (6.5e13 / n) ** 0.077) ** (1 / 0.76)
    assert target.min_steps == pytest.approx(s_min, rel=1e-12)
    b_crit = target.critical_batch_samples
    assert b_crit == pytest.approx(2e8 / 3.5 ** (1 / 0.21) / SEQ, rel=1e-12)
    # at B = B_crit: twice the minimum steps and twice the minimum tokens
    at = target.critical_batch_tokens / SEQ
    assert target.min_steps * (1 + target.critical_batch_tokens / (at * SEQ)) == \
        pytest.approx(2 * target.min_steps)
    assert target.steps(512) == pytest.approx(s_min * (1 + 2e8 / 3.5 ** (1 / 0.21) / (512 * SEQ)),
                                              rel=1e-12)
    assert target.tokens(512) == pytest.approx(target.steps(512) * 512 * SEQ, rel=1e-12)


def test_a_loss_below_the_floor_is_refused():
    with pytest.raises(ScenarioError) as err:
        _gpt2_target(2.0)  # GPT-2 124M's floor (N_c/N)^0.077 is 2.838 nats
    floor = (6.5e13 / (LAYERS * (12 * HIDDEN**2 + 13 * HIDDEN))) ** 0.077
    assert err.value.field == "--target-loss" and f"{floor:.4g}" in err.value.message


@settings(deadline=None)
@given(st.floats(3.0, 6.0), st.integers(1, 1 << 16))
def test_kaplan_trade_of_steps_and_tokens(loss, batch):
    """True statements of eq. 5.4: steps fall and tokens grow with the batch,
    (S/S_min - 1)(E/E_min - 1) = 1, and past B_crit doubling the batch cuts the steps by
    less than a quarter while the tokens grow by at least half but less than double (the
    issue's "more than doubles the tokens" is false in Kaplan's model: E(2B)/E(B) =
    (1 + 2x)/(1 + x) < 2 for x = B/B_crit)."""
    target = _gpt2_target(loss)
    s, e = target.steps(batch), target.tokens(batch)
    e_min = target.min_steps * target.critical_batch_tokens
    assert target.steps(2 * batch) < s and target.tokens(2 * batch) > e
    assert (s / target.min_steps - 1) * (e / e_min - 1) == pytest.approx(1.0, rel=1e-9)
    if batch >= target.critical_batch_samples:
        assert 0.75 <= target.steps(2 * batch) / s < 1
        assert 1.5 <= target.tokens(2 * batch) / e < 2


def test_around_critical_is_every_doubling_of_the_base_in_the_window():
    # GPT-3 175B at loss 2.0: B_crit = 7.37 M tokens = 3,599 sequences of 2,048
    assert around_critical(1536, 3599.0) == (768, 1536, 3072, 6144, 12288, 24576)
    assert around_critical(3, 1.0) == (3, 6)  # an odd base is not halved
    with pytest.raises(ScenarioError) as err:
        around_critical(1001, 10.0)  # odd, above 8·B_crit: neither halves nor doubles in
    assert err.value.field == "--global-batch"


@settings(deadline=None)
@given(st.integers(1, 4096), st.floats(1.0, 1e5))
def test_around_critical_stays_in_the_window(base, critical):
    try:
        batches = around_critical(base, critical)
    except ScenarioError:
        return
    assert all(critical / WINDOW <= b <= critical * WINDOW for b in batches)
    assert all((b % base == 0 and (b // base) & (b // base - 1) == 0)
               or (base % b == 0 and (base // b) & (base // b - 1) == 0) for b in batches)


def test_parse_global_batch():
    assert parse_global_batch("1536") == (1536,)
    assert parse_global_batch("64,16,32,16") == (16, 32, 64)
    assert parse_global_batch("512:8192") == (512, 1024, 2048, 4096, 8192)
    for bad in ("", "a", "0", "8:4", "-4,8"):
        with pytest.raises(ScenarioError):
            parse_global_batch(bad)


@pytest.fixture(scope="module")
def planned():
    """GPT-2 124M on 8 A100s to loss 3.5 at three batches (estimates only)."""
    return run_plan(PlanRequest("gpt2-124m", "dgx-a100", (8,), 16, confirm=0,
                                target_loss=3.5, global_batches=(16, 64, 256)))


def test_each_plan_is_kept_at_its_best_batch(planned):
    target = _gpt2_target(3.5)
    loss = plan_summary(planned)["time_to_loss"]
    assert loss["batches"] == [16, 64, 256]
    assert loss["critical_batch_tokens"] == target.critical_batch_tokens
    best = planned.plans[0]
    assert (f"batch of {best['global_batch']:,} "
            f"({best['global_batch'] / target.critical_batch_samples:.2g} x B_crit)"
            in planned.explanation[1])
    for row in planned.candidates:
        steps = target.min_steps * (1 + target.critical_batch_tokens
                                    / (row["global_batch"] * SEQ))
        assert row["steps_to_target"] == pytest.approx(steps, rel=1e-12)
        assert row["time_to_train_s"] == pytest.approx(steps * row["step_time_s"], rel=1e-12)
    keys = [tuple(r[f] for f in PLAN_FIELDS) for r in planned.candidates]
    assert len(keys) == len(set(keys))  # one row per plan
    layouts = [tuple(c["plan"][f] for f in ("data", "tensor", "pipeline", "microbatch"))
               for c in loss["curves"]]
    assert len(layouts) == 3 and len(set(layouts)) == 3  # the best distinct layouts
    by_plan = {tuple(r[f] for f in PLAN_FIELDS): r for r in planned.candidates}
    for curve in loss["curves"]:
        row = by_plan[tuple(curve["plan"][f] for f in PLAN_FIELDS)]
        times = {p["global_batch"]: p["time_to_target_s"] for p in curve["points"]}
        assert curve["best_global_batch"] == row["global_batch"] == min(times, key=times.get)
        assert times[row["global_batch"]] == pytest.approx(row["time_to_train_s"], rel=1e-12)
        assert all(p["time_to_target_s"] == pytest.approx(p["steps_to_target"]
                                                           * p["step_time_s"], rel=1e-12)
                   for p in curve["points"])


def test_more_gpus_at_a_fixed_batch_never_need_more_steps():
    result = run_plan(PlanRequest("gpt2-124m", "dgx-a100", (8, 16), 32, confirm=0,
                                  target_loss=3.5, global_batches=(32,)))
    steps = {r["gpus"]: r["steps_to_target"] for r in result.candidates}
    assert set(steps) == {8, 16} and steps[16] <= steps[8]


def _cli(tmp_path, *args: str) -> tuple[int, str]:
    res = CliRunner().invoke(app, ["plan", "--model", "gpt2-124m", "--cluster", "dgx-a100",
                                   "--gpus", "8", *args, "--out", str(tmp_path)],
                             catch_exceptions=False)
    return res.exit_code, res.output


@pytest.mark.parametrize(("args", "flag"), [
    (("--global-batch", "16,32"), "--global-batch"),  # several batches need a target loss
    (("--global-batch", "16", "--target-loss", "2.0"), "--target-loss"),  # below the floor
    (("--global-batch", "16", "--target-loss", "3.5", "--tokens", "1e9"), "--tokens"),
    (("--global-batch", "1x", "--target-loss", "3.5"), "--global-batch"),
])
def test_cli_refuses_bad_batches_and_targets(tmp_path, args, flag):
    code, text = _cli(tmp_path, *args)
    assert code == 2 and flag in text and "Traceback" not in text


def test_cli_json_has_time_to_loss(tmp_path):
    code, text = _cli(tmp_path, "--global-batch", "32,128", "--target-loss", "3.5",
                      "--confirm", "0", "--json")
    assert code == 0, text
    data = json.loads(text)
    assert data["time_to_loss"]["batches"] == [32, 128]
    assert data["plans"][0]["global_batch"] in (32, 128)


def test_a_plan_keeps_the_batch_that_meets_the_deadline_over_its_least_energy_one():
    """By energy a plan is kept at its least-energy batch, unless that batch misses the
    deadline and another meets it: a plan ranked out by --max-days at one batch is still
    a candidate at the batch that trains in time."""
    from dlsim.planner.search import _batch_rank
    request = PlanRequest("gpt2-124m", "dgx-a100", (8,), 64, objective="energy",
                          max_days=5.0, target_loss=3.5)
    frugal = {"energy_kwh": 1.0, "time_to_train_s": 10 * 86400.0, "cost_usd": 1.0}
    on_time = {"energy_kwh": 2.0, "time_to_train_s": 4 * 86400.0, "cost_usd": 1.0}
    assert _batch_rank(on_time, 1, request) < _batch_rank(frugal, 0, request)
    relaxed = PlanRequest("gpt2-124m", "dgx-a100", (8,), 64, objective="energy",
                          target_loss=3.5)
    assert _batch_rank(frugal, 0, relaxed) < _batch_rank(on_time, 1, relaxed)
    by_time = PlanRequest("gpt2-124m", "dgx-a100", (8,), 64, target_loss=3.5)
    assert _batch_rank(on_time, 1, by_time) < _batch_rank(frugal, 0, by_time)
