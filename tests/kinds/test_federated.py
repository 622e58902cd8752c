"""Federated learning: round times, straggler policies, FedBuff staleness, traces, inputs.

Closed forms are computed here from the hardware profiles' published figures (inputs, not
simulator outputs): a device trains at peak · gemm_max FLOP/s when the scenario gives
flops_per_sample, a link moves bytes at its up/down bandwidth after its latency.
"""

from __future__ import annotations

import copy
import json
import math
from pathlib import Path

import numpy as np
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dlsim
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.federated import SamplesSpec
from dlsim.hardware import profiles as hardware
from dlsim.kinds.federated import traces
from dlsim.kinds.federated.link import fair_rates, finish_times
from dlsim.kinds.federated.population import class_counts, draw_samples

ROOT = Path(__file__).resolve().parents[2]
P = 1_000_000          # parameters: 4 MB of fp32
F = 2e9                # FLOPs per sample
N = 40                 # samples per client
E = 2                  # local epochs


def scenario(**fed) -> dict:
    """Identical phone-mid clients on Wi-Fi, always online, no loss, no server limit."""
    base = {"clients": 20, "population": [{"device": "phone-mid", "share": 1.0,
                                            "link": "wifi"}],
            "rounds": 3, "clients_per_round": 10, "local_epochs": E, "batch_size": 10,
            "samples": {"distribution": "constant", "mean": N},
            "flops_per_sample": F, "parameters": P}
    base.update(fed)
    return {"name": "fl-test", "kind": "federated", "precision": "fp32", "seed": 0,
            "federated": base}


def speed(device: str) -> float:
    d = hardware.device(device)
    return d.peak_tflops["fp32"] * 1e12 * d.efficiency.gemm_max


def train_s(device: str, flops: float = F) -> float:
    return E * N * flops / speed(device)


def transfer_s(link: str, nbytes: float, up: bool) -> float:
    lk = hardware.link(link)
    return lk.latency_us * 1e-6 + nbytes / ((lk.up_GBps if up else lk.down_GBps) * 1e9)


def round_s(device: str = "phone-mid", flops: float = F) -> float:
    return (transfer_s("wifi", 4 * P, up=False) + train_s(device, flops)
            + transfer_s("wifi", 4 * P, up=True))


def durations(summary: dict) -> np.ndarray:
    return np.array([r["end_s"] - r["start_s"] for r in summary["round_table"]])


# -- synchronous FedAvg: closed forms -----------------------------------------------------------

def test_identical_clients_round_is_broadcast_plus_training_plus_upload():
    s = dlsim.simulate(scenario()).summary
    expected = round_s()
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)
    assert s["time_to_rounds_s"] == pytest.approx(3 * expected, rel=1e-12)
    assert s["bytes_down"] == s["bytes_up"] == 3 * 10 * 4 * P
    assert s["wasted"] == {"flops": 0.0, "device_s": 0.0, "clients": 0}
    assert s["participation"]["phone-mid"]["aggregated"] == 30
    assert s["samples_aggregated"] == 30 * N


def test_client_spans_are_download_train_upload_of_the_first_rounds():
    r = dlsim.simulate(scenario(trace_rounds=2))
    down = transfer_s("wifi", 4 * P, up=False)
    one = round_s()
    first = sorted((sp.start_s, sp.end_s, sp.category) for sp in r.spans
                   if sp.device == r.spans[0].device and sp.end_s <= one * (1 + 1e-12))
    trained = down + train_s("phone-mid")
    assert [c for *_, c in first] == ["comm", "compute", "comm"]
    assert [t for a, b, _ in first for t in (a, b)] == pytest.approx(
        [0.0, down, down, trained, trained, one], rel=1e-12)
    assert max(sp.end_s for sp in r.spans) == pytest.approx(2 * one, rel=1e-12)
    assert len(r.spans) == 2 * 10 * 3  # 10 clients a round, no waiting when all are equal


def test_shared_server_link_splits_max_min_fairly():
    """10 identical flows on a 10 MB/s server link each get 1 MB/s (below their Wi-Fi
    caps), so each transfer takes latency + 10 · bytes / capacity."""
    capacity = 10e6
    s = dlsim.simulate(scenario(server={"bandwidth_Gbps": capacity * 8 / 1e9})).summary
    lat = hardware.link("wifi").latency_us * 1e-6
    expected = 2 * (lat + 10 * 4 * P / capacity) + train_s("phone-mid")
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)


def test_packet_loss_divides_goodput_by_the_expected_transmissions():
    p = 0.2
    fed = scenario()["federated"]
    fed["population"][0]["packet_loss"] = p
    s = dlsim.simulate(scenario(population=fed["population"])).summary
    lk = hardware.link("wifi")
    expected = (2 * lk.latency_us * 1e-6 + train_s("phone-mid")
                + 4 * P / (lk.down_GBps * 1e9 * (1 - p)) + 4 * P / (lk.up_GBps * 1e9 * (1 - p)))
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)
    assert s["bytes_resent"] == pytest.approx(2 * 30 * 4 * P * p / (1 - p), rel=1e-12)


def test_fedprox_adds_one_memory_bound_pass_per_local_step():
    """Per step: read w, w_global, grad, write grad (16 B/param at fp32), 3 FLOPs/param."""
    s = dlsim.simulate(scenario(algorithm="fedprox")).summary
    d = hardware.device("phone-mid")
    eff = d.efficiency.memory
    step = (max(3 * P / (d.peak_tflops["fp32"] * 1e12 * eff),
                16 * P / (d.memory_bandwidth_GBps * 1e9 * eff)) + d.kernel_launch_us * 1e-6)
    steps = E * math.ceil(N / 10)
    assert durations(s) == pytest.approx([round_s() + steps * step] * 3, rel=1e-12)


def test_heterofl_width_scales_flops_and_bytes_by_width_squared():
    w = 0.5
    pop = [{"device": "phone-mid", "share": 1.0, "link": "wifi", "width": w}]
    s = dlsim.simulate(scenario(population=pop)).summary
    expected = (transfer_s("wifi", 4 * P * w * w, up=False) + train_s("phone-mid") * w * w
                + transfer_s("wifi", 4 * P * w * w, up=True))
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)
    assert s["bytes_up"] == pytest.approx(30 * 4 * P * w * w)


@pytest.mark.parametrize("compression,update_bytes", [
    ({"kind": "int8"}, P),                                        # 1 byte per parameter
    ({"kind": "topk", "topk_fraction": 0.01}, math.ceil(0.01 * P) * (4 + 4)),  # value + index
])
def test_compression_shrinks_the_upload(compression, update_bytes):
    s = dlsim.simulate(scenario(compression=compression)).summary
    assert s["update_bytes"] == update_bytes
    expected = (transfer_s("wifi", 4 * P, up=False) + train_s("phone-mid")
                + transfer_s("wifi", update_bytes, up=True))
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)


# -- straggler policies -------------------------------------------------------------------------

TWO_SPEEDS = [{"device": "phone-high", "share": 0.5, "link": "wifi"},
              {"device": "phone-low", "share": 0.5, "link": "wifi"}]


def test_deadline_drops_late_clients_and_counts_their_wasted_work():
    """All 10 clients selected (5 fast, 5 slow); the deadline falls while the slow ones
    train, so each round lasts the deadline and each slow client wastes what it trained."""
    fast, slow = round_s("phone-high"), round_s("phone-low")
    deadline = (fast + slow) / 2
    s = dlsim.simulate(scenario(clients=10, population=TWO_SPEEDS,
                                straggler={"policy": "deadline",
                                           "deadline_s": deadline})).summary
    assert fast < deadline < slow
    assert durations(s) == pytest.approx([deadline] * 3, rel=1e-12)
    download = transfer_s("wifi", 4 * P, up=False)
    assert s["dropped"] == {"deadline": 15}
    assert s["wasted"]["flops"] == pytest.approx(15 * (deadline - download) * speed("phone-low"),
                                                 rel=1e-12)
    assert s["wasted"]["device_s"] == pytest.approx(15 * deadline, rel=1e-12)
    assert s["participation"]["phone-low"]["aggregated"] == 0
    assert s["participation"]["phone-high"]["aggregated"] == 15


def test_drop_slowest_fraction_ends_the_round_at_the_last_kept_arrival():
    s = dlsim.simulate(scenario(clients=10, population=TWO_SPEEDS,
                                straggler={"policy": "drop-slowest", "fraction": 0.5})).summary
    fast = round_s("phone-high")
    assert durations(s) == pytest.approx([fast] * 3, rel=1e-12)
    assert s["dropped"] == {"slowest": 15}
    download = transfer_s("wifi", 4 * P, up=False)
    assert s["wasted"]["flops"] == pytest.approx(15 * (fast - download) * speed("phone-low"),
                                                 rel=1e-12)


def test_random_drop_fails_that_fraction_after_training():
    """round(0.3 · 10) = 3 clients per round fail before uploading: all their training is
    wasted; the others' round is unchanged."""
    s = dlsim.simulate(scenario(straggler={"policy": "random-drop", "fraction": 0.3})).summary
    assert s["dropped"] == {"random": 9}
    assert s["wasted"]["flops"] == pytest.approx(9 * E * N * F, rel=1e-12)
    assert durations(s) == pytest.approx([round_s()] * 3, rel=1e-12)
    assert s["participation"]["phone-mid"]["aggregated"] == 21


def test_overcommit_aggregates_the_first_k_and_cancels_the_rest():
    s = dlsim.simulate(scenario(overcommit=1.5)).summary     # select 15, keep 10
    assert s["dropped"] == {"overcommit": 15}
    assert s["wasted"]["flops"] == pytest.approx(15 * E * N * F, rel=1e-12)
    assert s["participation"]["phone-mid"]["selected"] == 45


# -- FedBuff ------------------------------------------------------------------------------------

F_BUFF = 5e9  # puts the slow client's round trip between 3 and 4 of the fast one's


def fedbuff(rounds: int, max_staleness: int | None = None) -> dict:
    """A fast and a slow client, both always training (concurrency 2), buffer 1: every
    arrival is a server update, and each slot re-picks the client that just finished."""
    return dlsim.simulate(scenario(
        clients=2, clients_per_round=1, population=TWO_SPEEDS, algorithm="fedbuff",
        rounds=rounds, flops_per_sample=F_BUFF,
        fedbuff={"buffer": 1, "concurrency": 2, "max_staleness": max_staleness})).summary


def test_fedbuff_staleness_weights_are_one_over_sqrt_one_plus_staleness():
    """The fast client arrives at T, 2T, ..., kT (staleness 0); the slow one, which
    downloaded version 0, arrives at T_s after k updates (staleness k); the fast update
    downloaded at kT arrives at (k+1)T after the slow one (staleness 1)."""
    t_fast, t_slow = round_s("phone-high", F_BUFF), round_s("phone-low", F_BUFF)
    k = math.floor(t_slow / t_fast)
    assert k == 3 and t_slow > k * t_fast
    s = fedbuff(rounds=k + 2)
    ends = [r["end_s"] for r in s["round_table"]]
    assert ends == pytest.approx([t_fast * i for i in range(1, k + 1)]
                                 + [t_slow, (k + 1) * t_fast], rel=1e-12)
    staleness = [0] * k + [k, 1]
    weights = [1 / math.sqrt(1 + v) for v in staleness]
    assert s["staleness"]["max"] == k
    assert s["staleness"]["mean"] == pytest.approx(np.mean(staleness), rel=1e-12)
    assert s["staleness"]["mean_weight"] == pytest.approx(np.mean(weights), rel=1e-12)
    assert s["dropped"] == {}


def test_fedbuff_discards_updates_staler_than_max_staleness():
    """With max_staleness k - 1 the slow update is thrown away at T_s, all its work wasted;
    the fast update of (k+1)T then finds the version it downloaded (staleness 0)."""
    t_fast, t_slow = round_s("phone-high", F_BUFF), round_s("phone-low", F_BUFF)
    k = math.floor(t_slow / t_fast)
    s = fedbuff(rounds=k + 1, max_staleness=k - 1)
    ends = [r["end_s"] for r in s["round_table"]]
    assert ends == pytest.approx([t_fast * i for i in range(1, k + 2)], rel=1e-12)
    assert s["dropped"] == {"stale": 1} and s["staleness"]["discarded"] == 1
    assert s["wasted"]["flops"] == pytest.approx(E * N * F_BUFF, rel=1e-12)
    assert s["wasted"]["device_s"] == pytest.approx(t_slow, rel=1e-12)
    assert s["staleness"]["max"] == 0


# -- time to a target ------------------------------------------------------------------------

def test_synchronous_rounds_reach_the_target_after_its_client_updates():
    """FedAvg aggregates K = 10 fresh updates a round: U = 45 updates are 4.5 rounds of the
    run's mean round, with its energy per round."""
    sc = scenario(rounds=3)
    sc["convergence"] = {"client_updates": 45, "staleness_penalty": 0.7}  # no staleness
    s = dlsim.simulate(sc).summary
    c = s["convergence"]
    assert (c["mean_staleness"], c["mean_update_weight"], c["updates_to_target"]) == (0, 1, 45)
    assert c["rounds_to_target"] == pytest.approx(4.5, rel=1e-12)
    assert c["time_to_target_s"] == pytest.approx(s["time_to_rounds_s"] * 4.5 / 3, rel=1e-12)
    assert s["time_to_accuracy_s"] == c["time_to_target_s"]
    assert c["energy_to_target_J"] == pytest.approx(s["energy_J"] * 4.5 / 3, rel=1e-12)


@pytest.mark.parametrize("penalty", [0.0, 0.5, 2.0])
def test_stale_fedbuff_updates_count_one_over_one_plus_c_s(penalty):
    """The two-speed FedBuff run aggregates updates of staleness 0, 0, 0, 3, 1 (the test
    above): U fresh updates need U / mean(1 / (1 + c s)) of them, at the run's rate."""
    t_fast, t_slow = round_s("phone-high", F_BUFF), round_s("phone-low", F_BUFF)
    k = math.floor(t_slow / t_fast)
    sc = scenario(clients=2, clients_per_round=1, population=TWO_SPEEDS, algorithm="fedbuff",
                  rounds=k + 2, flops_per_sample=F_BUFF,
                  fedbuff={"buffer": 1, "concurrency": 2})
    sc["convergence"] = {"client_updates": 100, "staleness_penalty": penalty}
    s = dlsim.simulate(sc).summary
    weight = np.mean([1 / (1 + penalty * v) for v in [0] * k + [k, 1]])
    c = s["convergence"]
    assert c["mean_update_weight"] == pytest.approx(weight, rel=1e-12)
    assert c["updates_to_target"] == pytest.approx(100 / weight, rel=1e-12)
    assert c["time_to_target_s"] == pytest.approx(
        s["time_to_rounds_s"] * 100 / weight / (k + 2), rel=1e-12)  # buffer 1: an update a round


@pytest.mark.parametrize("convergence,field", [
    ({"client_updates": 0}, "convergence.client_updates"),
    ({"client_updates": 10, "staleness_penalty": -1}, "convergence.staleness_penalty"),
    ({"client_updates": 10, "min_steps": 5}, "convergence.min_steps"),  # a training field
])
def test_bad_federated_convergence_names_the_field(convergence, field):
    sc = scenario()
    sc["convergence"] = convergence
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(sc)
    assert field in str(err.value)


# -- population -----------------------------------------------------------------------------------

def test_class_shares_are_exact_by_largest_remainder():
    """10 clients at shares 1:1:1 -> 3.33 each: the remainders tie, the first class gets
    the spare client; 0.4/0.4/0.2 of 10,000 is exact."""
    assert class_counts([1, 1, 1], 10).tolist() == [4, 3, 3]
    assert class_counts([0.4, 0.4, 0.2], 10_000).tolist() == [4000, 4000, 2000]


def test_zipf_quantity_skew_gives_rank_r_a_share_of_r_to_the_minus_a():
    """a = 1, 4 clients, mean 100: shares 1, 1/2, 1/3, 1/4 of 400 / (25/12)."""
    spec = SamplesSpec(distribution="zipf", mean=100, zipf_a=1.0)
    got = sorted(draw_samples(spec, 4, np.random.default_rng(0)).tolist(), reverse=True)
    assert got == [round(400 * 12 / 25 / r) for r in (1, 2, 3, 4)]


def test_lognormal_samples_have_the_given_mean():
    """mean exp(mu + s^2/2); with 200,000 draws of sigma 0.5 the standard error of the mean
    is sqrt(e^0.25 - 1) / sqrt(2e5) = 0.12 % of it: 1 % is eight standard errors."""
    spec = SamplesSpec(distribution="lognormal", mean=500, sigma=0.5)
    got = draw_samples(spec, 200_000, np.random.default_rng(1))
    assert got.mean() == pytest.approx(500, rel=0.01)


# -- shared link ----------------------------------------------------------------------------------

def test_water_filling_gives_capped_flows_their_cap_and_splits_the_rest():
    """Caps 1, 2, 10, 10 on a link of 15: the two small flows keep their caps, the two
    large ones share the remaining 12 equally."""
    assert fair_rates(np.array([1.0, 2.0, 10.0, 10.0]), 15.0) == pytest.approx([1, 2, 6, 6])


def test_staggered_flows_share_the_link_while_they_overlap():
    """Two 10-byte flows on a link of 1 B/s, caps 1: the second starts at t=5 when the
    first has 5 bytes left; both then move at 1/2 B/s: the first ends at 15, the second
    has 5 bytes left then and ends at 20."""
    done = finish_times(np.array([0.0, 5.0]), np.array([10.0, 10.0]), np.array([1.0, 1.0]),
                        1.0)
    assert done == pytest.approx([15.0, 20.0])


# -- availability and traces --------------------------------------------------------------------

def write(path: Path, data) -> str:
    path.write_text(data if isinstance(data, str) else json.dumps(data))
    return str(path)


def test_fedscale_capacity_trace_sets_compute_and_bandwidth(tmp_path):
    """FedScale: training = 3 x inference ms per sample; kbit/s in both directions."""
    ms, kbps = 20.0, 8000.0
    trace = write(tmp_path / "cap.csv", f"client_id,computation,communication\n1,{ms},{kbps}\n")
    s = dlsim.simulate(scenario(traces={"capacity": trace})).summary
    lat = hardware.link("wifi").latency_us * 1e-6
    expected = 2 * (lat + 4 * P / (kbps * 1e3 / 8)) + E * N * 3 * ms / 1e3
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)


def test_flash_speed_trace_with_no_spread_is_its_mean(tmp_path):
    trace = write(tmp_path / "speed.json", {"a": {"down_u": 1000, "down_sigma": 0,
                                                  "up_u": 250, "up_sigma": 0}})
    s = dlsim.simulate(scenario(traces={"flash_speed": trace})).summary
    lat = hardware.link("wifi").latency_us * 1e-6
    expected = 2 * lat + 4 * P / 1024e3 + 4 * P / 256e3 + train_s("phone-mid")
    assert durations(s) == pytest.approx([expected] * 3, rel=1e-12)


def test_behaviour_windows_repeat_with_their_period(tmp_path):
    """FedScale windows [0, 600) and [900, 1500) every 3600 s; FLASH windows are relative
    to trace_start and repeat every trace_end - trace_start."""
    fs = traces.fedscale_behaviour(write(tmp_path / "b.json", {"1": {
        "active": [0, 900], "inactive": [600, 1500], "finish_time": 3600}}))
    one = np.array([0])
    for t, online, left in ((100, True, 500), (700, False, 0), (3600 + 1000, True, 500),
                            (2 * 3600 + 1499, True, 1)):
        assert [x.tolist() for x in fs.query(t, one)] == [[online], [left]]
    fl = traces.flash_availability(write(tmp_path / "f.json", {
        "g": {"isSuccess": True, "trace_start": 1000, "trace_end": 2000,
              "ready_time": [[1100, 1300]]},
        "h": {"isSuccess": False, "trace_start": None, "trace_end": None, "ready_time": []}}))
    online, left = fl.query(1150.0, np.array([0, 1]))
    assert online.tolist() == [True, False] and left[0] == pytest.approx(150.0)


def test_unavailable_clients_are_not_selected(tmp_path):
    """Client k uses behaviour entry k mod 2: entry 1 is never online, so only the even
    clients are ever selected."""
    trace = write(tmp_path / "b.csv", "client_id,active,inactive,finish_time\n"
                  "1,0,100000,100000\n2,5,5,100000\n")
    s = dlsim.simulate(scenario(clients=20, clients_per_round=10, rounds=2,
                                availability={"kind": "trace"},
                                traces={"behaviour": trace})).summary
    assert s["participation"]["phone-mid"]["selected"] == 20  # all 10 even clients, twice
    assert s["rounds_failed"] == 0


def test_poisson_clients_that_go_offline_mid_round_are_dropped():
    s = dlsim.simulate(scenario(clients=200, clients_per_round=50, rounds=20,
                                availability={"kind": "poisson", "mean_online_s": 2.0,
                                              "mean_offline_s": 2.0})).summary
    part = s["participation"]["phone-mid"]
    assert s["dropped"].get("offline", 0) > 0
    assert part["selected"] == part["aggregated"] + s["wasted"]["clients"]


# -- reproducibility and invariants ----------------------------------------------------------------

RANDOM = {"clients": 300, "clients_per_round": 20, "rounds": 10, "overcommit": 1.3,
          "samples": {"distribution": "lognormal", "mean": 50, "sigma": 1.0},
          "speed_sigma": 0.4, "bandwidth_sigma": 0.5,
          "population": [{"device": "phone-low", "share": 0.5, "link": "lte"},
                         {"device": "phone-high", "share": 0.5, "link": "wifi"}],
          "availability": {"kind": "poisson", "mean_online_s": 600, "mean_offline_s": 600}}


@pytest.mark.parametrize("algorithm", ["fedavg", "fedbuff"])
def test_same_seed_same_summary_different_seed_different(algorithm):
    data = scenario(**RANDOM, algorithm=algorithm)
    first, again = dlsim.simulate(data).summary, dlsim.simulate(copy.deepcopy(data)).summary
    assert json.dumps(first) == json.dumps(again)
    data["seed"] = 1
    assert dlsim.simulate(data).summary["round_table"] != first["round_table"]


@settings(max_examples=8, deadline=None)
@given(policy=st.sampled_from(["wait-all", "deadline", "drop-slowest", "random-drop"]),
       fraction=st.floats(0.0, 0.6), overcommit=st.floats(1.0, 2.0),
       seed=st.integers(0, 1000))
def test_every_selected_client_is_aggregated_or_dropped(policy, fraction, overcommit, seed):
    straggler = ({"policy": policy, "deadline_s": 30.0} if policy == "deadline" else
                 {"policy": policy} if policy == "wait-all" else
                 {"policy": policy, "fraction": fraction})
    data = scenario(**{**RANDOM, "overcommit": overcommit, "straggler": straggler})
    data["seed"] = seed
    s = dlsim.simulate(data).summary
    part = s["participation"].values()
    assert sum(p["selected"] for p in part) == (sum(p["aggregated"] for p in part)
                                                + s["wasted"]["clients"])
    assert all(0 < r["aggregated"] <= 20 for r in s["round_table"])
    d = durations(s)
    assert (d > 0).all()
    if policy == "deadline":
        assert (d <= 30.0 * (1 + 1e-12)).all()
    ends = [r["end_s"] for r in s["round_table"]]
    assert ends == sorted(ends) and s["time_to_rounds_s"] == ends[-1]


# -- bad input ------------------------------------------------------------------------------------

@pytest.mark.parametrize("change,field", [
    ({"population": [{"device": "phone-ultra", "share": 1.0}]}, "federated.population.0.device"),
    ({"straggler": {"policy": "drop-slowest", "fraction": -0.1}}, "federated.straggler.fraction"),
    ({"traces": {"capacity": "no/such/trace.csv"}}, "federated.traces.capacity"),
    ({"clients_per_round": 50}, "clients_per_round"),
    ({"straggler": {"policy": "deadline"}}, "deadline_s"),
    ({"straggler": {"policy": "wait-all", "deadline_s": 5}}, "deadline_s"),  # not ignored
    ({"fedbuff": {"buffer": 5}}, "fedbuff"),
    ({"population": [{"device": "phone-mid", "share": 1.0, "link": "carrier-pigeon"}]},
     "federated.population.0.link"),
])
def test_bad_input_names_the_field(change, field):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario(**change))
    assert field in str(err.value)


def test_a_federated_scenario_needs_its_section_and_a_workload():
    with pytest.raises(ScenarioError, match="needs 'federated"):
        dlsim.simulate({"name": "x", "kind": "federated"})
    data = scenario()
    del data["federated"]["flops_per_sample"], data["federated"]["parameters"]
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(data)
    assert err.value.field == "model"


def test_a_device_without_the_precision_is_named():
    pop = [{"device": "raspberry-pi-4", "share": 1.0, "link": "wifi"}]
    data = scenario(population=pop)
    data["precision"] = "fp16"
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(data)
    assert err.value.field == "precision" and "raspberry-pi-4" in err.value.message


# -- CLI and report -------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted((ROOT / "scenarios").glob("federated-*.yaml")),
                         ids=lambda p: p.stem)
def test_bundled_federated_scenarios_simulate(path, monkeypatch):
    """Each bundled scenario, cut to 3 rounds to keep the suite fast."""
    data = yaml.safe_load(path.read_text())
    data["federated"]["rounds"] = 3
    monkeypatch.chdir(ROOT)  # trace paths in bundled scenarios are relative to the checkout
    s = dlsim.simulate(data).summary
    assert s["kind"] == "federated" and s["rounds"] == 3 and s["time_to_rounds_s"] > 0


def test_cli_writes_an_escaped_federated_report(tmp_path):
    """The one rendering of this suite (matplotlib is slow): sections present, the
    scenario's name escaped."""
    data = yaml.safe_load((ROOT / "scenarios/federated-deadline.yaml").read_text())
    data["federated"]["rounds"] = 3
    data["name"] = "<script>alert(1)</script>"
    small = tmp_path / "small.yaml"
    small.write_text(yaml.safe_dump(data))
    res = CliRunner().invoke(app, ["run", str(small), "--out", str(tmp_path / "out")],
                             catch_exceptions=False)
    assert res.exit_code == 0, res.output
    out = next((tmp_path / "out").iterdir())
    summary = json.loads((out / "summary.json").read_text())
    assert summary["kind"] == "federated" and summary["rounds"] == 3
    html = (out / "index.html").read_text()
    for section in ('id="rounds"', 'id="participation"', 'id="dropped"', 'id="timeline"',
                    "missed the round deadline", "data:image/png;base64,"):
        assert section in html
    assert "<script>alert(1)" not in html and "&lt;script&gt;" in html


def test_cli_reports_bad_federated_input_in_one_paragraph(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(scenario(straggler={"policy": "random-drop",
                                                      "fraction": -1})))
    res = CliRunner().invoke(app, ["run", str(bad), "--out", str(tmp_path)])
    assert res.exit_code == 2
    assert "federated.straggler.fraction" in res.output and "Traceback" not in res.output
