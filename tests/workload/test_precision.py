"""FP8/FP4 as Transformer Engine runs them, and GEMM curves per dtype.

Closed forms are recomputed here from the cited figures and the rules in
dlsim/workload/precision.py: which kernels of a Llama-3 block run FP8, the cast kernels'
bytes, the FP8 weight cache in memory, and the per-dtype curves against their cited points.
"""

from __future__ import annotations

import numpy as np
import pytest

import dlsim
from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.hardware import profiles as hw
from dlsim.parallel.memory import memory_per_device
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import backward_of, gemm
from dlsim.workload.precision import cast_kernel, compute_dtype
from dlsim.workload.presets import build_model

H100 = hw.device("h100-sxm5-80gb")


def _llama_block():
    model = build_model(ModelSpec(preset="llama-3-8b"), 1, 2)
    return model, next(layer for layer in model.layers if layer.role == "block")


def test_te_placement_of_a_llama3_block():
    model, block = _llama_block()
    fp8 = {k.name for k in block.forward + block.backward if compute_dtype(k, "fp8") == "fp8"}
    bf16 = {k.name for k in block.forward + block.backward if compute_dtype(k, "fp8") == "bf16"}
    assert fp8 == {"qkv", "proj", "mlp_up", "mlp_down"}  # the linear layers, fwd and bwd
    assert {"attention", "softmax", "rmsnorm1", "rope"} <= bf16
    assert not fp8 & bf16
    embedding, head = model.layers[0], model.layers[-1]
    assert all(compute_dtype(k, "fp8") == "bf16" for k in embedding.forward + head.forward)
    assert "logits" in {k.name for k in head.forward}  # TE leaves the LM head in BF16
    # other precisions run every kernel as given
    assert all(compute_dtype(k, "bf16") == "bf16" for k in block.forward)
    assert all(compute_dtype(k, "fp4") == "fp4" for k in block.forward if k.name in fp8)


@pytest.mark.parametrize("precision,q", [("fp8", 1.0), ("fp4", 0.5625)])
def test_cast_bytes_over_forward_and_backward(precision, q):
    m, k, n = 8192.0, 4096.0, 14336.0
    fwd = gemm(m, k, n, 2, "mlp_up")
    (bwd,) = backward_of((fwd,))
    total = sum(cast_kernel(x, precision).bytes for x in (fwd, bwd))
    # read each 16-bit element once, write a low-precision copy and its transpose
    assert total == pytest.approx((2 + 2 * q) * (m * k + k * n + m * n), rel=1e-12)
    assert cast_kernel(gemm(m, k, n, 2, "logits"), precision) is None
    assert cast_kernel(fwd, "bf16") is None


def test_fp8_gemm_time_closed_form_on_h100():
    kern = gemm(8192, 8192, 10240, 2, "qkv")
    f = kern.flops / 1e9
    eff = 0.657 * f / (f + 8.03)  # the FP8 fit at its own 1979 TFLOP/s peak
    compute = kern.flops / (1979e12 * eff)
    cast = 2 * kern.bytes / 3 / (3350e9 * 0.866)
    expected = compute + cast + 2 * 4e-6  # the GEMM and its cast kernel each launch
    assert kernel_time_s(kern, H100, "fp8") == pytest.approx(expected, rel=1e-12)
    # the same GEMM in BF16 uses the BF16 curve (1.51 GFLOP half point at 989 TFLOP/s)
    bf16 = kern.flops / (989e12 * 0.745 * f / (f + 1.51)) + 4e-6
    assert kernel_time_s(kern, H100, "bf16") == pytest.approx(bf16, rel=1e-12)
    # a BF16-kept kernel costs the same in an FP8 run as in a BF16 run
    logits = gemm(8192, 8192, 128256, 2, "logits")
    assert kernel_time_s(logits, H100, "fp8") == kernel_time_s(logits, H100, "bf16")


def test_fp8_weight_cache_in_memory():
    model = build_model(ModelSpec(preset="llama-3-8b"), 1, 2)
    t = 4
    bf16 = memory_per_device(model, "bf16", "adam", tensor=t, stage_layers=range(len(model.layers)))
    fp8 = memory_per_device(model, "fp8", "adam", tensor=t, stage_layers=range(len(model.layers)))
    blocks = sum(layer.params for layer in model.layers if layer.role == "block")
    assert fp8.params - bf16.params == pytest.approx(2.0 * blocks / t, rel=1e-12)
    assert (fp8.grads, fp8.optimizer) == (bf16.grads, bf16.optimizer)
    # TE saves each linear layer's input as its 1-byte cast: the qkv and fc1 inputs (h a
    # token, on every tensor rank without sequence parallelism) and the AV output and the
    # SwiGLU output (h and ffn, split t ways) lose a byte an element
    tokens, h, f = 8192, 4096, 14336
    per_block = 2 * tokens * h + tokens * (h + f) / t
    assert bf16.activations - fp8.activations == 32 * per_block


# (device, dtype, GEMM m, n, k, published TFLOP/s, tolerance reached)
CITED = [
    ("h100-sxm5-80gb", "fp8", 1024, 1024, 1024, 274.1, 2e-3),   # Azure ND H100 v5 cuBLASLt
    ("h100-sxm5-80gb", "fp8", 8192, 8192, 8192, 1290.1, 2e-3),
    ("h200-sxm-141gb", "fp8", 1024, 1024, 1024, 290.8, 2e-3),   # Azure ND H200 v5 cuBLASLt
    ("h200-sxm-141gb", "fp8", 8192, 8192, 8192, 1300.6, 2e-3),
    ("b200-sxm-180gb", "bf16", 2048, 2048, 2048, 1006.0, 1e-3),  # pyptx.dev cuBLAS column
    ("b200-sxm-180gb", "bf16", 8192, 8192, 8192, 1610.0, 1e-3),
]


@pytest.mark.parametrize("name,dtype,m,n,k,published,tol", CITED)
def test_dtype_curves_reproduce_their_cited_points(name, dtype, m, n, k, published, tol):
    d = hw.device(name)
    f = 2.0 * m * n * k / 1e9
    top, half = d.efficiency.gemm_curve(dtype, d.peak_flops(dtype))
    assert d.peak_tflops[dtype] * top * f / (f + half) == pytest.approx(published, rel=tol)


@pytest.mark.parametrize("name", ["h100-sxm5-80gb", "h200-sxm-141gb", "h800-sxm5-80gb"])
def test_hopper_bf16_curve_is_the_h200_measurement(name):
    """The Hopper BF16 curve: the H200 calibration's half point, and a max that puts the
    curve through the median of that file's bf16 GEMMs of >= 100 GFLOP (to the rounding of
    the profile's three digits)."""
    from dlsim.calibration import store

    cal = store.load("calibration/cuda-nvidia-h200-16c-1t-20ac9250.json")
    d = hw.device(name)
    top, half = d.efficiency.gemm_curve("bf16", d.peak_flops("bf16"))
    assert half == pytest.approx(cal.curves["gemm.bf16"].half_gflop, abs=0.005)
    big = [m for m in cal.measurements if m.kind == "gemm" and m.dtype == "bf16"
           and m.flops >= 1e11]
    assert len(big) == 26
    ratios = [m.flops / m.median_s / (989e12 * (m.flops / 1e9) / (m.flops / 1e9 + half))
              for m in big]
    assert top == pytest.approx(float(np.median(ratios)), abs=5e-4)


def test_borrowed_curves_keep_the_fixed_per_kernel_time():
    b200 = hw.device("b200-sxm-180gb")
    top, half = b200.efficiency.gemm_curve("fp8", b200.peak_flops("fp8"))
    assert (top, half) == pytest.approx((0.722, 10.58 * 4500 / 2250))
    h100 = hw.device("h100-sxm5-80gb")  # fp8 has its own fit: not the BF16 curve scaled
    assert h100.efficiency.gemm_curve("fp8", h100.peak_flops("fp8")) == (0.657, 8.03)


def _scenario(device_preset: str, precision: str) -> dict:
    return {"name": "p", "model": {"preset": "llama-3-8b"},
            "cluster": {"preset": device_preset, "nodes": 1}, "precision": precision,
            "training": {"global_batch": 8, "microbatch": 1, "steps": 1},
            "parallelism": {"data": 1, "tensor": 8, "sequence_parallel": True,
                            "recompute": "full"}}


def test_fp4_refused_on_h100():
    with pytest.raises(ScenarioError) as err:
        dlsim.simulate(_scenario("dgx-h100", "fp4"))
    assert err.value.field == "precision"
    assert "fp4" in str(err.value)


def test_a100_bf16_kernels_use_the_unchanged_single_curve():
    a100 = hw.device("a100-sxm4-80gb")
    kern = gemm(4096, 4096, 4096, 2, "qkv")
    f = kern.flops / 1e9
    expected = kern.flops / (312e12 * 0.815 * f / (f + 2.43)) + a100.kernel_launch_s
    assert kernel_time_s(kern, a100, "bf16") == pytest.approx(expected, rel=1e-12)
