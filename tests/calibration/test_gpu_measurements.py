"""The GPU microbenchmarks and training steps (run on the lent H200; here on the CPU, tiny):
FLOPs against their closed forms, the torch models against dlsim's parameter counts, and a
step measured end to end."""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

from dlsim.calibration import bench, gpusteps  # noqa: E402
from dlsim.contract.scenario import ModelSpec  # noqa: E402
from dlsim.workload.presets import build_model  # noqa: E402

TINY_LLAMA = {"kind": "transformer", "layers": 2, "hidden": 64, "heads": 4, "kv_heads": 2,
              "ffn_hidden": 128, "vocab": 100, "seq_len": 32, "mlp": "swiglu",
              "tied_embeddings": False}


def test_gpu_cases_are_the_networks_dlsim_models():
    """Each torch model has the parameter count dlsim gives its model block (built on the
    meta device: no storage). Llama 3.2 1B's 1,235,814,400 is its released total."""
    counts = {}
    for case in gpusteps.CASES:
        with torch.device("meta"):
            model = case.build()
        counts[case.name] = sum(p.numel() for p in model.parameters())
        assert counts[case.name] == build_model(ModelSpec(**case.model), case.batch,
                                                2).parameters, case.name
    assert counts["llama 16x2048 gqa8 s4096 (Llama 3.2 1B)"] == 1_235_814_400


@pytest.mark.parametrize("sdpa", [None, "flash"])
def test_a_training_step_is_measured_with_its_kernel_table(sdpa):
    case = gpusteps.GpuCase("tiny llama", TINY_LLAMA, 2)
    row = gpusteps.measure(case, repeats=2, device="cpu", sdpa=sdpa)
    assert row["step_s"] > 0 and row["params"] == build_model(
        ModelSpec(**TINY_LLAMA), 2, 2).parameters
    assert row["tokens_per_s"] == pytest.approx(2 * 32 / row["step_s"])
    assert row["kernels"] and all(k["device_us"] > 0 for k in row["kernels"])
    assert any("mm" in k["kernel"] for k in row["kernels"])


def test_fused_attention_counts_flashattentions_flops():
    """FlashAttention-2's convention, computed here: forward 4·s²·d·heads·batch, halved
    causal; backward 2.5x; batch x sequence = 16k tokens, hidden 2048."""
    d, s = 64, 128
    rows = list(bench.fused_attention([(d, s, True), (d, s, False)], "cpu", 1))
    b, heads = 16384 // s, 2048 // d
    full = 4.0 * s * s * d * heads * b
    flops = {(r.op, "causal" in r.shape): r.flops for r in rows}
    assert flops[("flash_fwd", True)] == full / 2 and flops[("flash_fwd", False)] == full
    assert flops[("flash_bwd", True)] == 2.5 * full / 2
    assert all(r.kind == "fused_attention" and r.dtype == "bf16" for r in rows)


def test_fp8_gemm_points_count_the_linear_layers_products():
    rows = bench._matmul_fp8(64, 128, 32, "cpu", 1)
    assert [r.op for r in rows] == ["matmul_fp8", "matmul_fp8_bwd"]
    assert rows[0].flops == 2 * 64 * 128 * 32 and rows[1].flops == 2 * rows[0].flops
    assert rows[0].bytes == 64 * 128 + 128 * 32 + 2 * 64 * 32   # fp8 in, bf16 out
    assert not bench.fp8_supported("cpu")


def test_the_gpu_grid_is_flashattentions_benchmark_and_the_cpu_grids_have_none():
    from dlsim.calibration.calibrate import FULL, GPU, QUICK

    assert not FULL.fused_attention and not QUICK.fused_attention
    assert {d for d, _, _ in GPU.fused_attention} == {64, 128, 256}
    assert {s for _, s, _ in GPU.fused_attention} == {512, 1024, 2048, 4096, 8192, 16384}
