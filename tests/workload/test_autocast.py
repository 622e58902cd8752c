"""PyTorch AMP (``training.autocast``): the weight casts and the 16-bit weight copies against
their closed forms, computed here, and the recipes autocast is refused with."""

from __future__ import annotations

import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.parallel.memory import memory_per_device
from dlsim.workload.autocast import autocast_workload, cast_elements
from dlsim.workload.presets import build_model

LLAMA = {"kind": "transformer", "layers": 2, "hidden": 512, "heads": 8, "kv_heads": 2,
         "ffn_hidden": 1536, "vocab": 8000, "seq_len": 256, "mlp": "swiglu",
         "tied_embeddings": False}
GPT = {"kind": "transformer", "layers": 2, "hidden": 512, "heads": 8, "seq_len": 256,
       "vocab": 8000}


def _matrix_elements(h, heads, kv, ffn, vocab, layers):
    """q, k, v, o, gate, up and down of each block, and the untied output layer."""
    d = h // heads
    return layers * (h * heads * d + 2 * h * kv * d + heads * d * h + 3 * h * ffn) + h * vocab


def test_a_decoder_casts_its_matrices_and_its_output_layer_not_its_embedding():
    model = build_model(ModelSpec(**LLAMA), 1, 2)
    cast = cast_elements(model)
    assert cast[0] == 0  # the embedding lookup is not autocast
    assert sum(cast) == _matrix_elements(512, 8, 2, 1536, 8000, 2)


def test_a_tied_gpt_casts_its_embedding_for_the_logits():
    model = build_model(ModelSpec(**GPT), 1, 2)
    cast = cast_elements(model)
    h, s, v = 512, 256, 8000
    assert cast[0] == v * h + s * h  # the tied weight (and the positions, 3 % here)
    assert cast[1] == 12 * h * h  # a GPT block's matrices: qkv 3h², proj h², MLP 8h²


def test_casts_move_twelve_bytes_a_weight_per_micro_batch():
    model = build_model(ModelSpec(**LLAMA), 1, 2)
    amp = autocast_workload(model)

    def moved(m):
        return sum(k.bytes for layer in m.layers for k in layer.forward + layer.backward)
    assert moved(amp) - moved(model) == pytest.approx(12.0 * sum(cast_elements(model)))


def _scenario(autocast: bool, **training) -> dict:
    return {"name": "amp", "model": LLAMA, "precision": "bf16",
            "cluster": {"device": "h200-sxm-141gb", "devices_per_node": 1,
                        "intra_node": "pcie"},
            "parallelism": {"data": 1},
            "training": {"global_batch": 4, "microbatch": 2, "optimizer": "adam",
                         "autocast": autocast, **training}}


def test_a_step_pays_the_casts_of_every_micro_batch():
    """One H200, two micro-batches: the step grows by 2 x (forward + backward cast) of every
    layer that casts, each a copy kernel of 6 bytes an element at the memory's rate plus
    its launch."""
    from dlsim.hardware import profiles as hardware

    device = hardware.device("h200-sxm-141gb")
    rate = device.memory_bandwidth_Bps * device.efficiency.memory
    casts = [n for n in cast_elements(build_model(ModelSpec(**LLAMA), 2, 2)) if n]
    expected = 2 * 2 * sum(6.0 * n / rate + device.kernel_launch_s for n in casts)
    plain, amp = (dlsim.simulate(_scenario(flag)).step_time_s for flag in (False, True))
    assert amp - plain == pytest.approx(expected, rel=1e-9)


def test_memory_holds_fp32_weights_no_master_copy_and_the_16_bit_copies():
    model = build_model(ModelSpec(**LLAMA), 2, 2)
    p = model.parameters
    plain = memory_per_device(model, "bf16", "adam", stage_layers=range(len(model.layers)),
                              grad_dtype="fp32")
    amp = memory_per_device(model, "bf16", "adam", stage_layers=range(len(model.layers)),
                            grad_dtype="fp32", autocast=True)
    assert amp.params - plain.params == pytest.approx(2.0 * p)       # 4 bytes, not 2
    assert amp.grads == plain.grads == pytest.approx(4.0 * p)
    assert amp.optimizer - plain.optimizer == pytest.approx(-4.0 * p)  # 8 bytes, not 12
    assert amp.activations - plain.activations == pytest.approx(
        2.0 * sum(cast_elements(model)))
    summary = dlsim.simulate(_scenario(True)).summary
    assert summary["autocast"] and summary["grad_dtype"] == "fp32"


@pytest.mark.parametrize("change,field", [
    ({"precision": "fp32"}, "training.autocast"),
    ({"parallelism": {"data": 1, "tensor": 2}}, "training.autocast"),
    ({"parallelism": {"data": 1, "zero_stage": 1}}, "training.autocast"),
    ({"training": {"global_batch": 4, "autocast": True, "grad_dtype": "bf16"}},
     "training.grad_dtype"),
])
def test_autocast_outside_plain_pytorch_is_refused_naming_the_field(change, field):
    scenario = _scenario(True) | change
    if "tensor" in str(change):
        scenario["cluster"] = {"device": "h200-sxm-141gb", "devices_per_node": 2,
                               "intra_node": "pcie"}
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(scenario)
    assert err.value.field == field
