"""Statistical-efficiency models: McCandlish's noise scale, Kaplan's critical batch and
S_min, Chinchilla's L(N, D), and the time and cost to a target loss in a run's summary.

Each closed form is written out here from the paper's equation and constants, not read
back from dlsim's module.
"""

from __future__ import annotations

import math

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import load_scenario
from dlsim.hardware.profiles import device as device_profile
from dlsim.kinds.sync import scaling_laws as laws

DEVICE = "a100-sxm4-80gb"
TINY = {"kind": "transformer", "layers": 2, "hidden": 256, "heads": 4, "seq_len": 128,
        "vocab": 1000}


def scenario(n=4, batch=32, **extra):
    base = {"name": "t", "model": TINY,
            "cluster": {"topology": "ring", "devices": n, "device": DEVICE,
                        "link": {"bandwidth_GBps": 10, "latency_us": 5}},
            "precision": "bf16",
            "training": {"global_batch": batch, "optimizer": "adam", "steps": 1}}
    base.update(extra)
    return base


# --- McCandlish et al. 2018 ---------------------------------------------------------------

def test_steps_and_examples_at_the_noise_batch_are_twice_their_minima():
    s_min, noise = 4321.0, 777.0
    assert laws.mccandlish_steps(s_min, noise, noise) == 2 * s_min
    assert laws.mccandlish_examples(s_min, noise, noise) == 2 * (s_min * noise)  # 2 E_min


def test_past_the_critical_batch_doubling_it_nearly_doubles_the_tokens():
    """E(2B) / E(B) = (1 + 2x) / (1 + x) with x = B / B_crit: at least 1.5 (and below 2,
    so never 'more than double') for B >= B_crit, while the steps fall by at most a quarter;
    below B_crit doubling costs under 1.5x the tokens and saves over a quarter of the steps."""
    s_min, crit = 1000.0, 4096.0
    for b in (crit, 2 * crit, 8 * crit, 64 * crit):
        e1, e2 = (laws.mccandlish_examples(s_min, crit, x) for x in (b, 2 * b))
        s1, s2 = (laws.mccandlish_steps(s_min, crit, x) for x in (b, 2 * b))
        assert 1.5 <= e2 / e1 < 2 and s2 / s1 >= 0.75
    for b in (crit / 64, crit / 8, crit / 2):
        e1, e2 = (laws.mccandlish_examples(s_min, crit, x) for x in (b, 2 * b))
        s1, s2 = (laws.mccandlish_steps(s_min, crit, x) for x in (b, 2 * b))
        assert e2 / e1 < 1.5 and s2 / s1 < 0.75


# --- Kaplan et al. 2020 ---------------------------------------------------------------------

def test_kaplan_critical_batch_from_its_constants():
    # eq. 1.4: B_crit(L) = B* / L^(1/alpha_B), B* = 2e8 tokens, alpha_B = 0.21
    for loss in (1.8, 2.0, 3.0):
        assert laws.kaplan_critical_batch_tokens(loss) == pytest.approx(
            2e8 * math.exp(-math.log(loss) / 0.21), rel=1e-12)
    assert laws.kaplan_critical_batch_tokens(2.0) == pytest.approx(7.3715e6, rel=1e-4)


def test_kaplan_min_steps_inverts_l_of_n_and_s():
    # eq. 1.6 with Table 3: L = (6.5e13 / N)^0.077 + (2.1e3 / S_min)^0.76
    n, loss = 1.75e11, 2.0
    s_min = laws.kaplan_min_steps(loss, n)
    assert (6.5e13 / n) ** 0.077 + (2.1e3 / s_min) ** 0.76 == pytest.approx(loss, rel=1e-12)


# --- Hoffmann et al. 2022 (Chinchilla) ---------------------------------------------------

def test_chinchilla_loss_at_its_own_compute_optimal_point():
    # Chinchilla itself: N = 70e9 parameters, D = 1.4e12 tokens (Hoffmann et al., Table 1);
    # 1.69 + 406.4 / 70e9^0.34 + 410.7 / 1.4e12^0.28 = 1.69 + 0.0835 + 0.1631 = 1.9366
    n, d = 70e9, 1.4e12
    assert laws.chinchilla_loss(n, d) == pytest.approx(
        1.69 + 406.4 / n ** 0.34 + 410.7 / d ** 0.28, rel=1e-12)
    assert laws.chinchilla_loss(n, d) == pytest.approx(1.9366, abs=5e-4)
    assert laws.chinchilla_tokens(laws.chinchilla_loss(n, d), n) == pytest.approx(d, rel=1e-9)


# --- the summary ----------------------------------------------------------------------------

def test_time_and_cost_to_a_target_loss():
    r = dlsim.simulate(scenario(convergence={"model": "kaplan", "target_loss": 6.0}))
    c = r.summary["convergence"]
    n = c["non_embedding_parameters"]
    assert n == 2 * (12 * 256 ** 2 + 13 * 256)  # 12h^2 + 13h per block (model.py)
    s_min = 2.1e3 / (6.0 - (6.5e13 / n) ** 0.077) ** (1 / 0.76)
    crit = 2e8 / 6.0 ** (1 / 0.21)
    steps = s_min * (1 + crit / (32 * 128))
    assert c["steps_to_target"] == pytest.approx(steps, rel=1e-12)
    assert c["tokens_to_target"] == pytest.approx(steps * 32 * 128, rel=1e-12)
    assert r.summary["time_to_accuracy_s"] == pytest.approx(steps * r.step_time_s, rel=1e-12)
    price = device_profile(DEVICE).price_usd_per_hour
    assert c["cost_usd"] == pytest.approx(4 * steps * r.step_time_s / 3600 * price, rel=1e-12)
    # the devices draw the simulated steps' average power all the way to the target
    assert c["energy_to_target_J"] == pytest.approx(
        4 * r.summary["average_power_W"] * steps * r.step_time_s, rel=1e-12)
    assert c["energy_to_target_J"] == pytest.approx(r.summary["energy_per_step_J"] * steps,
                                                    rel=1e-9)
    assert any("eq. 1.4" in a for a in c["assumptions"])


def test_chinchilla_steps_are_the_tokens_over_the_batch():
    r = dlsim.simulate(scenario(convergence={"model": "chinchilla", "target_loss": 8.0}))
    c = r.summary["convergence"]
    n = c["parameters"]
    tokens = (410.7 / (8.0 - 1.69 - 406.4 / n ** 0.34)) ** (1 / 0.28)
    assert c["tokens_to_target"] == pytest.approx(tokens, rel=1e-9)
    assert c["steps_to_target"] == pytest.approx(tokens / (32 * 128), rel=1e-9)


def test_more_devices_at_a_fixed_global_batch_never_need_more_steps():
    conv = {"model": "kaplan", "target_loss": 6.0}
    steps = [dlsim.simulate(scenario(n, 32, convergence=conv)).summary["convergence"]
             ["steps_to_target"] for n in (2, 4, 8)]
    assert steps[0] == steps[1] == steps[2]


def test_without_a_model_the_summary_keeps_its_fields():
    r = dlsim.simulate(scenario(convergence={"min_steps": 10, "noise_batch": 5}))
    assert "model" not in r.summary["convergence"]
    assert "assumptions" not in r.summary["convergence"]


@pytest.mark.parametrize("conv", [
    {"model": "kaplan"},                                          # no target
    {"model": "kaplan", "target_loss": 2.0, "min_steps": 10},     # a McCandlish field
    {"model": "chinchilla", "target_loss": 2.0, "noise_batch": 5},
    {"min_steps": 10},                                            # McCandlish needs both
    {"model": "kaplan", "target_loss": float("inf")},             # not a loss (nor JSON)
    {"min_steps": 10, "noise_batch": float("nan")},
])
def test_bad_convergence_fields_are_refused(conv):
    with pytest.raises(ScenarioError):
        load_scenario(scenario(convergence=conv))


@pytest.mark.parametrize("law,floor_term", [("kaplan", "(N_c/N)^alpha_N"),
                                             ("chinchilla", "E + A/N^alpha")])
def test_an_unreachable_loss_names_the_floor(law, floor_term):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario(convergence={"model": law, "target_loss": 1.0}))
    assert err.value.field == "convergence.target_loss" and "never falls below" in str(err.value)
    assert floor_term in str(err.value)


@pytest.mark.parametrize("explicit", [False, True])
def test_local_sgd_multiplies_the_steps_by_its_stated_penalty(explicit):
    """Averaging every H = 4 steps at local_sgd_penalty c = 0.25: S = S_min (1 + B_noise/B)
    (1 + c (H - 1)); the step time is the run's, so the time follows."""
    conv = {"min_steps": 1000, "noise_batch": 96, "local_sgd_penalty": 0.25,
            **({"model": "mccandlish"} if explicit else {})}
    s = dlsim.simulate(scenario(training={"global_batch": 32, "optimizer": "adam",
                                          "steps": 4},
                                communication={"local_sgd_period": 4},
                                convergence=conv)).summary
    c = s["convergence"]
    assert c["steps_to_target"] == pytest.approx(1000 * (1 + 96 / 32) * (1 + 0.25 * 3),
                                                 rel=1e-12)
    assert (c["local_sgd_period"], c["local_sgd_penalty"]) == (4, 0.25)
    assert s["time_to_accuracy_s"] == pytest.approx(c["steps_to_target"] * s["step_time_s"],
                                                    rel=1e-12)
    if explicit:
        assert any("local SGD averaging every 4 steps" in a for a in c["assumptions"])


def test_without_local_sgd_its_penalty_changes_nothing():
    conv = {"min_steps": 1000, "noise_batch": 96}
    plain = dlsim.simulate(scenario(convergence=conv)).summary["convergence"]
    stated = dlsim.simulate(scenario(convergence={**conv, "local_sgd_penalty": 0.5})
                            ).summary["convergence"]
    assert stated["steps_to_target"] == plain["steps_to_target"] == 1000 * (1 + 96 / 32)
    assert "local_sgd_period" not in stated
