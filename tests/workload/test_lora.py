"""LoRA's adapter kernels (``dlsim.workload.lora``): memory-bound sweeps of the adapted
matrices' activations, beside their GEMMs, in 16 bit, split over tensor ranks as the GEMM
they adapt is."""

from __future__ import annotations

from dataclasses import replace

import pytest

import dlsim
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hardware
from dlsim.parallel.tensor import shard_model
from dlsim.workload import lora
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.lora import lora_workload
from dlsim.workload.presets import build_model

# Llama-2-70B at 8,192 tokens, MLPerf's LoRA targets (rank 16 on q, k, v and o)
H, Q, KV, SEQ, R = 8192, 8192, 1024, 8192, 16
TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj"]


def _block(model):
    return next(layer for layer in model.layers if layer.role == "block")


def _kernels(layer, backward=False):
    return {k.name: k for k in (layer.backward if backward else layer.forward)
            if "_lora_" in k.name}


def test_adapter_bytes_are_the_closed_form():
    """Per block and micro-batch of T tokens at 2 bytes: q, k and v's adapters share the
    QKV GEMM's input (one read, T·h) and write their 8,192 + 2·1,024 outputs and add them to
    the GEMM's (3 sweeps); o's reads its T·8,192 input and adds T·h. Backward: dY twice, and
    the input plus dX read and written."""
    model = build_model(ModelSpec(preset="llama-2-70b", seq_len=SEQ), 1, 2)
    block = _block(lora_workload(model, R, TARGETS))
    t, qkv_out = SEQ, Q + 2 * KV
    fwd, bwd = _kernels(block), _kernels(block, backward=True)
    assert fwd["qkv_lora_in"].bytes == 2 * t * (H + 3 * R)
    assert fwd["qkv_lora_out"].bytes == 2 * t * (3 * R + 3 * qkv_out)
    assert fwd["proj_lora_in"].bytes == 2 * t * (Q + R)
    assert fwd["proj_lora_out"].bytes == 2 * t * (R + 3 * H)
    assert bwd["qkv_lora_out"].bytes == 2 * t * (2 * qkv_out + 3 * R)
    assert bwd["qkv_lora_in"].bytes == 2 * t * (3 * H + 3 * R)
    assert fwd["qkv_lora_in"].flops == 2 * t * H * 3 * R
    # beside the GEMM each adapts, in forward and in backward
    names = [k.name for k in block.forward]
    assert names[names.index("qkv") + 1:names.index("qkv") + 3] == ["qkv_lora_in",
                                                                   "qkv_lora_out"]
    assert [k.name for k in block.backward].index("proj_lora_out") == names.index(
        "proj") + 1


def test_adapters_split_as_the_gemm_they_adapt():
    """t = 4: the column-parallel QKV's adapter reads the whole input on every rank and
    writes a quarter of the outputs; the row-parallel projection's reads a quarter."""
    model = build_model(ModelSpec(preset="llama-2-70b", seq_len=SEQ), 1, 2)
    whole, split = (_kernels(_block(m)) for m in (
        lora_workload(model, R, TARGETS), shard_model(lora_workload(model, R, TARGETS), 4,
                                                      sequence_parallel=True)))
    assert split["qkv_lora_in"].bytes == whole["qkv_lora_in"].bytes
    for name in ("qkv_lora_out", "proj_lora_in", "proj_lora_out"):
        assert split[name].bytes == pytest.approx(whole[name].bytes / 4)


def test_adapters_run_in_16_bit_under_fp8():
    """A memory-bound kernel: no FP8 cast, the same time in an fp8 and a bf16 run."""
    device = hardware.device("h100-sxm5-80gb")
    block = _block(lora_workload(build_model(ModelSpec(preset="llama-2-70b", seq_len=SEQ), 1,
                                             2), R, TARGETS))
    for kernel in _kernels(block).values():
        assert kernel_time_s(kernel, device, "fp8") == kernel_time_s(kernel, device, "bf16")
        assert kernel_time_s(kernel, device, "bf16") == pytest.approx(
            kernel.bytes / (device.memory_bandwidth_Bps * device.efficiency.memory)
            + device.kernel_launch_s)


def test_a_lora_step_pays_its_adapters(monkeypatch):
    """One H100, Llama-3-8B at 2,048 tokens: the LoRA step less the same step with
    adapters that move nothing is the adapters' memory time, forward and backward, of every
    block (one device, one stream: kernel times add)."""
    device = hardware.device("h100-sxm5-80gb")
    scenario = {"name": "l", "model": {"preset": "llama-3-8b", "seq_len": 2048},
                "cluster": {"preset": "dgx-h100", "nodes": 1}, "precision": "bf16",
                "training": {"global_batch": 1, "microbatch": 1,
                             "lora": {"rank": R, "targets": TARGETS}},
                "parallelism": {"data": 1}}
    step = dlsim.simulate(scenario).step_time_s
    model = lora_workload(build_model(ModelSpec(preset="llama-3-8b", seq_len=2048), 1, 2), R,
                          TARGETS)
    memory = sum(k.bytes for layer in model.layers for k in (*layer.forward, *layer.backward)
                 if "_lora_" in k.name) / (device.memory_bandwidth_Bps
                                          * device.efficiency.memory)
    real = lora.adapter_kernels

    def weightless(*args):
        return tuple(tuple(replace(k, flops=0.0, bytes=0.0) for k in pair)
                     for pair in real(*args))
    monkeypatch.setattr(lora, "adapter_kernels", weightless)
    assert step - dlsim.simulate(scenario).step_time_s == pytest.approx(memory, rel=1e-9)
    assert memory / step > 0.03  # what leaving them out missed: 32 blocks' sweeps
