"""Edge inference against closed forms written out here: the Neurosurgeon split sum, the
BranchyNet expectation, the halo rows of a convolution, and bad input naming its field."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from typer.testing import CliRunner

import dlsim
from dlsim.cli import app
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.kinds.inference.exits import exit_shares
from dlsim.kinds.inference.spatial import halo_exchange
from dlsim.kinds.inference.split import split_table
from dlsim.kinds.inference.tiers import Hop, tier
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import Kernel, elementwise
from dlsim.workload.presets import build_model

ROOT = Path(__file__).resolve().parents[2]
RADIO = {"up_W": 3.0, "down_W": 1.5}


def scenario(**inference) -> dict:
    return {"name": "t", "kind": "edge-inference", "model": {"preset": "resnet50"},
            "precision": "fp32", "inference": {"device": "phone-mid", **inference}}


def forward_s(model, device_name: str, dtype: str = "fp32") -> np.ndarray:
    device = hardware.device(device_name)
    return np.array([sum(kernel_time_s(k, device, dtype) for k in layer.forward)
                     for layer in model.layers])


def test_split_latency_and_energy_are_the_neurosurgeon_sums():
    r = dlsim.simulate(scenario(server={"device": "a100-pcie-80gb", "link": "wifi"},
                                radio=RADIO))
    model = build_model(ModelSpec(preset="resnet50"), 1, 4)
    dev, srv = forward_s(model, "phone-mid"), forward_s(model, "a100-pcie-80gb")
    wifi, phone = hardware.link("wifi"), hardware.device("phone-mid")
    result = 1000 * 4  # 1000 fp32 logits
    sizes = [3 * 224 * 224 * 4] + [layer.output_bytes for layer in model.layers]
    rows = r.split["table"]
    assert [row["device_layers"] for row in rows] == list(range(len(model.layers) + 1))
    for s, row in enumerate(rows):
        offload = s < len(model.layers)
        up = sizes[s] / wifi.up_Bps if offload else 0.0
        down = result / wifi.down_Bps if offload else 0.0
        latency = (dev[:s].sum() + offload * (wifi.latency_s + up) + srv[s:].sum()
                   + offload * (wifi.latency_s + down))
        assert row["latency_s"] == pytest.approx(latency, rel=1e-12)
        energy = phone.power_W * dev[:s].sum() + RADIO["up_W"] * up + RADIO["down_W"] * down
        assert row["energy_J"] == pytest.approx(energy, rel=1e-12)
        stages = [dev[:s].sum(), srv[s:].sum(), up, down]
        assert row["throughput_per_s"] == pytest.approx(1 / max(stages), rel=1e-12)


def test_the_chosen_splits_are_the_argmins_and_the_timeline_is_that_request():
    r = dlsim.simulate(scenario(server={"device": "jetson-orin-nano", "link": "wifi"},
                                radio=RADIO))
    latency = [row["latency_s"] for row in r.split["table"]]
    energy = [row["energy_J"] for row in r.split["table"]]
    assert r.split["best_latency"]["device_layers"] == int(np.argmin(latency))
    assert r.split["best_energy"]["device_layers"] == int(np.argmin(energy))
    assert r.latency_s == min(latency)
    spans = sorted(r.spans, key=lambda sp: sp.start_s)
    assert spans[0].start_s == 0 and spans[-1].end_s == pytest.approx(min(latency), rel=1e-12)
    assert all(a.end_s == pytest.approx(b.start_s) for a, b in zip(spans, spans[1:]))


SMALL = build_model(ModelSpec(preset="mlp-wide"), 4, 2)
PHONE = tier("device", "phone-low", "d", SMALL, "fp16")
SERVER = tier("server", "a100-pcie-80gb", "s", SMALL, "fp16")


@settings(max_examples=25, deadline=None)
@given(up=st.floats(1e5, 1e10), factor=st.floats(1.0, 100.0), down=st.floats(1e5, 1e10),
       latency=st.floats(0, 0.05))
def test_more_uplink_bandwidth_never_slows_the_best_split(up, factor, down, latency):
    def best(bandwidth: float) -> float:
        link = Hop("l", bandwidth, down, latency)
        return split_table(PHONE, SERVER, link, SMALL, [], "fp16", 4, None)["latency_s"].min()

    assert best(up * factor) <= best(up) * (1 + 1e-12)


@settings(max_examples=30, deadline=None)
@given(st.lists(st.floats(0, 1), max_size=5))
def test_exit_shares_are_a_distribution(p):
    shares = exit_shares(p)
    assert shares.min() >= 0 and shares.sum() == pytest.approx(1.0)


def branch_s(model, layer: int, device, dt: int = 4) -> float:
    """Global average pooling over the layer's output, then an FC layer to 1000 classes."""
    shape = model.layers[layer].convs[-1]
    c, hw = shape.c_out, shape.hw_out
    kernels = [elementwise(c * hw * hw, dt, 1.0),
               Kernel("gemm", 2.0 * c * 1000, dt * (c + c * 1000 + 1000))]
    return sum(kernel_time_s(k, device, "fp32") for k in kernels)


def test_branchynet_expected_latency_on_the_device_and_across_the_split():
    exits = [{"after": "layer1.2", "probability": 0.3}, {"after": "layer3.1", "probability": 0.6}]
    r = dlsim.simulate(scenario(server={"device": "a100-pcie-80gb", "link": "lte"},
                                radio=RADIO, exits=exits))
    model = build_model(ModelSpec(preset="resnet50"), 1, 4)
    names = [layer.name for layer in model.layers]
    e1, e2 = names.index("layer1.2"), names.index("layer3.1")
    phone, a100 = hardware.device("phone-mid"), hardware.device("a100-pcie-80gb")
    dev, srv = forward_s(model, "phone-mid"), forward_s(model, "a100-pcie-80gb")
    shares = [0.3, 0.7 * 0.6, 0.7 * 0.4]
    assert [x["share"] for x in r.exits] == pytest.approx(shares[:2])
    b1, b2 = branch_s(model, e1, phone), branch_s(model, e2, phone)
    # everything on the phone: each exit pays the layers and branches before it
    local = [dev[:e1 + 1].sum() + b1, dev[:e2 + 1].sum() + b1 + b2, dev.sum() + b1 + b2]
    rows = r.split["table"]
    assert rows[-1]["expected_latency_s"] == pytest.approx(np.dot(shares, local), rel=1e-12)
    # split after layer2.0: exit 1 on the phone, exit 2 and the output on the server
    s = names.index("layer2.0") + 1
    lte = hardware.link("lte")
    up = lte.latency_s + model.layers[s - 1].output_bytes / lte.up_Bps
    back = lte.latency_s + 4000 / lte.down_Bps
    c1, c2 = branch_s(model, e1, phone), branch_s(model, e2, a100)
    to_server = dev[:s].sum() + c1 + up
    paths = [dev[:e1 + 1].sum() + c1, to_server + srv[s:e2 + 1].sum() + c2 + back,
             to_server + srv[s:].sum() + c2 + back]
    assert rows[s]["expected_latency_s"] == pytest.approx(np.dot(shares, paths), rel=1e-12)
    assert r.latency_s == min(row["expected_latency_s"] for row in rows)


def test_halo_bytes_are_border_rows_times_width_channels_dtype():
    model = build_model(ModelSpec(preset="resnet50"), 2, 2)
    conv3x3 = model.layers[1].convs[1]  # layer1.0: 64 -> 64, 3x3, stride 1 on 56x56
    assert (conv3x3.kernel, conv3x3.stride, conv3x3.hw_in, conv3x3.c_in) == (3, 1, 56, 64)
    sent, received = halo_exchange(conv3x3, 4, 2, 2)
    # 3 boundaries, one row each way across each: 2 rows x 56 wide x 64 channels x 2 B x batch 2
    assert sent.sum() == received.sum() == 3 * 2 * 56 * 64 * 2 * 2
    assert sent.tolist() == [56 * 64 * 4, 2 * 56 * 64 * 4, 2 * 56 * 64 * 4, 56 * 64 * 4]
    stem = model.layers[0].convs[0]  # 7x7 stride 2: 3 rows above, 7 - 3 - 2 = 2 below
    assert halo_exchange(stem, 2, 1, 4)[0].sum() == 5 * 224 * 3 * 4
    pointwise = model.layers[1].convs[0]
    assert halo_exchange(pointwise, 8, 1, 4)[0].sum() == 0


def test_spatial_strategies_halo_pays_its_rows_and_fdsp_exchanges_nothing():
    r = dlsim.simulate(scenario(spatial={"device": "raspberry-pi-4", "link": "wifi",
                                         "devices": [1, 2, 4]}))
    model = build_model(ModelSpec(preset="resnet50"), 1, 4)
    rows = {(row["strategy"], row["devices"]): row for row in r.spatial["table"]}
    one = forward_s(model, "raspberry-pi-4").sum()
    for strategy in ("halo", "fdsp"):
        assert rows[strategy, 1]["latency_s"] == pytest.approx(one, rel=1e-12)
        assert rows[strategy, 1]["exchange_bytes"] == 0
    for k in (2, 4):
        assert rows["fdsp", k]["exchange_bytes"] == rows["fdsp", k]["exchange_s"] == 0
        expected = 0
        for shape in (s for layer in model.layers for s in layer.convs):
            strips = math.ceil(shape.hw_in / math.ceil(shape.hw_in / k))
            pad = (shape.kernel - 1) // 2
            rows_per_boundary = pad + max(shape.kernel - pad - shape.stride, 0)
            expected += (strips - 1) * rows_per_boundary * shape.hw_in * shape.c_in * 4
        assert rows["halo", k]["exchange_bytes"] == expected
        assert rows["halo", k]["latency_s"] > rows["fdsp", k]["latency_s"]
        assert rows["halo", k]["compute_s"] == rows["fdsp", k]["compute_s"]
    best = min(r.spatial["table"], key=lambda row: row["latency_s"])
    assert max(sp.end_s for sp in r.spans) == pytest.approx(best["latency_s"], rel=1e-12)
    assert {sp.device for sp in r.spans} == set(range(best["devices"]))


def test_hierarchy_exits_leave_at_their_tier():
    exits = [{"after": "layer1.2", "probability": 0.5}, {"after": "layer3.5", "probability": 0.5}]
    r = dlsim.simulate(scenario(exits=exits, hierarchy={
        "edge": {"device": "jetson-orin-nano", "link": "wifi", "first_layer": "layer2.0"},
        "cloud": {"device": "h100-sxm5-80gb", "link": "eth-25g", "first_layer": "layer4.0"}}))
    model = build_model(ModelSpec(preset="resnet50"), 1, 4)
    out = {layer.name: layer.output_bytes for layer in model.layers}
    rows = r.hierarchy["table"]
    assert [row["tier"] for row in rows] == ["device", "edge", "cloud"]
    assert [row["bytes"] for row in rows] == [
        0, out["layer1.2"] + 4000, out["layer1.2"] + out["layer3.5"] + 2 * 4000]
    assert r.hierarchy["expected_bytes"] == pytest.approx(
        0.25 * rows[1]["bytes"] + 0.25 * rows[2]["bytes"])


@pytest.mark.parametrize("inference,field", [
    ({"server": {"device": "a100-pcie-80gb", "link": "lte"},
      "exits": [{"after": "layer9.9", "probability": 0.5}]}, "inference.exits.0.after"),
    ({"server": {"device": "a100-pcie-80gb", "link": "lte"},
      "exits": [{"after": "fc", "probability": 0.5}]}, "inference.exits.0.after"),
    ({"server": {"device": "tpu-v9", "link": "lte"}}, "inference.server.device"),
    ({"server": {"device": "a100-pcie-80gb", "link": "carrier-pigeon"}},
     "inference.server.link"),
    ({"spatial": {"device": "raspberry-pi-4", "link": "wifi"}, "device": "phone-x"},
     "inference.device"),
    ({"hierarchy": {"edge": {"device": "jetson-orin-nano", "link": "wifi",
                             "first_layer": "layer4.0"},
                    "cloud": {"device": "a100-pcie-80gb", "link": "eth-25g",
                              "first_layer": "layer2.0"}}},
     "inference.hierarchy.cloud.first_layer"),
])
def test_bad_input_names_the_field(inference, field):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario(**inference))
    assert err.value.field == field


@pytest.mark.parametrize("inference,words", [
    ({"server": {"device": "a100-pcie-80gb", "link": "lte"},
      "exits": [{"after": "layer1.0", "probability": 1.5}]},
     ["inference.exits.0.probability", "less than or equal to 1"]),
    ({}, ["server", "hierarchy", "spatial"]),
    ({"server": {"device": "a100-pcie-80gb", "link": "lte"}, "objective": "energy"},
     ["radio"]),
])
def test_invalid_sections_are_scenario_errors(inference, words):
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario(**inference))
    assert all(w in err.value.message for w in words)


@pytest.mark.parametrize("name", ["edge-split-resnet50", "edge-early-exit-resnet50",
                                  "edge-spatial-vgg16", "edge-hierarchy-resnet50"])
def test_bundled_edge_scenarios_write_a_report(tmp_path, name):
    res = CliRunner().invoke(app, ["run", str(ROOT / f"scenarios/{name}.yaml"), "--out",
                                   str(tmp_path)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    summary = json.loads((tmp_path / name / "summary.json").read_text())
    assert summary["kind"] == "edge-inference" and summary["latency_s"] > 0
    html = (tmp_path / name / "index.html").read_text()
    for key, heading in (("split", "Where to split"), ("exits", "Early exits"),
                         ("hierarchy", "Device, edge"), ("spatial", "Spatial partition")):
        assert (heading in html) == (key in summary)


def test_the_energy_objective_picks_the_least_energy_split():
    r = dlsim.simulate(scenario(server={"device": "jetson-orin-nano", "link": "wifi"},
                                radio=RADIO, objective="energy"))
    energy = [row["energy_J"] for row in r.split["table"]]
    assert r.energy_J == min(energy)
    assert r.latency_s == r.split["table"][int(np.argmin(energy))]["latency_s"]


def test_an_inference_section_on_another_kind_is_refused():
    with pytest.raises(ScenarioError, match="edge-inference"):
        dlsim.simulate({"name": "t", "model": {"preset": "resnet50"},
                        "cluster": {"preset": "dgx-a100"}, "training": {"global_batch": 8},
                        "inference": {"device": "phone-mid",
                                      "server": {"device": "a100-pcie-80gb", "link": "lte"}}})


def test_cli_bad_edge_input_is_one_paragraph_and_exit_2(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: bad\nkind: edge-inference\nmodel: {preset: resnet50}\n"
                    "precision: fp32\ninference:\n  device: phone-mid\n"
                    "  server: {device: a100-pcie-80gb, link: lte}\n"
                    "  exits: [{after: layer7.0, probability: 0.5}]\n")
    res = CliRunner().invoke(app, ["run", str(path), "--out", str(tmp_path / "out")])
    assert res.exit_code == 2
    assert "inference.exits.0.after" in res.output and "Traceback" not in res.output
    assert not (tmp_path / "out").exists()


def test_a_sweep_over_links_reports_each_points_best_latency(tmp_path):
    res = CliRunner().invoke(app, ["sweep", str(ROOT / "scenarios/edge-split-resnet50.yaml"),
                                   "--vary", "inference.server.link=wifi,lte", "--out",
                                   str(tmp_path), "--json"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    rows = {row["inference.server.link"]: row["latency_s"] for row in json.loads(res.output)}
    for link in ("wifi", "lte"):
        point = dlsim.simulate(scenario(server={"device": "a100-pcie-80gb", "link": link}))
        assert rows[link] == pytest.approx(point.latency_s, rel=1e-12)
