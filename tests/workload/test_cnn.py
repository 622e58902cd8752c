"""CNN models against their published sizes: parameters (the released torchvision weights)
and multiply-accumulates (torchvision's model docs list GFLOPS = GMACs at 224x224)."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.workload.presets import build_model


@pytest.mark.parametrize("preset,params,gmacs", [
    ("resnet50", 25_557_032, 4.09), ("resnet101", 44_549_160, 7.80),
    ("vgg16", 138_357_544, 15.47)])
def test_cnn_parameters_and_macs(preset, params, gmacs):
    model = build_model(ModelSpec(preset=preset), 1, 4)
    assert model.parameters == params
    macs = sum(k.flops for layer in model.layers for k in layer.forward
               if k.kind != "elementwise") / 2
    assert macs / 1e9 == pytest.approx(gmacs, abs=0.005)


def test_backward_is_twice_forward_for_convolutions_but_the_first():
    """Input and weight gradients, except the first convolution's: its input is the data."""
    model = build_model(ModelSpec(preset="resnet50"), 8, 4)
    fwd = sum(k.flops for layer in model.layers for k in layer.forward if k.kind == "conv")
    bwd = sum(k.flops for layer in model.layers for k in layer.backward if k.kind == "conv")
    conv1 = 2.0 * 3 * 64 * 7 * 7 * 112 * 112 * 8
    assert bwd == 2 * fwd - conv1


def test_cnn_training_scenario_runs():
    r = dlsim.simulate({"name": "r", "model": {"kind": "cnn", "preset": "resnet50"},
                        "cluster": {"preset": "dgx1-v100"}, "precision": "fp32",
                        "training": {"global_batch": 256, "optimizer": "sgd"}})
    assert r.parameters == 25_557_032 and r.fits_in_memory


def test_cnn_kind_needs_a_preset():
    with pytest.raises(ScenarioError, match="preset"):
        dlsim.simulate({"name": "r", "model": {"kind": "cnn"}, "cluster": {"preset": "dgx1-v100"},
                        "training": {"global_batch": 8}})
