"""The fused attention kernel model (dlsim.workload.attention) against the FlashAttention
tables it was fitted to, and its closed forms: causal work halved, head-dim and pass
efficiencies, Korthikanti et al.'s activations without the 5as/h term, the contract.

Calibration residuals (h100-sxm5-80gb.yaml's fits against every FP16/BF16 row of
validation/flashattention_h100.csv with one head dim and sequence length): FlashAttention-2,
30 rows (Dao 2023 Fig. 7 forward+backward at d 64 and 128, Shah 2024 Fig. 5(e) forward at
d 256), median 2.0 %, worst 8.5 %; FlashAttention-3, 12 forward rows (Shah 2024 Fig. 5),
median 3.1 %, worst 6.2 %. These are residuals of a fit, not held-out errors."""

from __future__ import annotations

import csv
import math
import statistics
from pathlib import Path

import pytest

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec, load_scenario
from dlsim.hardware import profiles as hardware
from dlsim.parallel.data_parallel import pass_times_s
from dlsim.parallel.memory import stored_activations
from dlsim.workload.attention import attention_kernel, efficiency, forward_max
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.decoder import decoder_layers
from dlsim.workload.model import attention_kernels, backward_of, transformer_layers
from dlsim.workload.shapes import llama

TABLE = Path(__file__).resolve().parents[2] / "validation" / "flashattention_h100.csv"
H100 = hardware.device("h100-sxm5-80gb")
FAMILY = {"FlashAttention-2": "fa2", "FlashAttention-3": "fa3"}


def _rows(family: str) -> list[tuple[bool, bool, int, int, float]]:
    """(forward+backward, causal, head dim, seq len, TFLOP/s) of one family's rows."""
    out = []
    with TABLE.open() as f:
        for r in csv.DictReader(f):
            value = r["value"].lstrip("~")
            if (r["kernel_family"] != "attention" or FAMILY.get(r["implementation"]) != family
                    or not r["head_dim"] or not r["seq_len"] or "," in r["seq_len"]
                    or "FP8" in r["precision"] or not value.replace(".", "").isdigit()):
                continue
            s = r["seq_len"]
            seq = int(s[:-1]) * 1024 if s.endswith("k") else int(s)
            out.append((r["pass"] == "forward+backward", r["causal"] == "True",
                        int(r["head_dim"]), seq, float(value)))
    return out


def _predicted(family: str, both: bool, causal: bool, d: int, s: int) -> float:
    """TFLOP/s in the table's convention: a forward+backward row takes F/e_f + 2.5F/e_b."""
    fit, peak = H100.attention_kernels.fits[family], H100.peak_tflops["bf16"]
    forward = efficiency(fit, d, s, causal)
    if not both:
        return peak * forward
    return 3.5 * peak / (1 / forward + 2.5 / efficiency(fit, d, s, causal, backward=True))


@pytest.mark.parametrize("family, count, median, worst",
                         [("fa2", 30, 0.021, 0.086), ("fa3", 12, 0.032, 0.063)])
def test_fit_residuals_against_the_flashattention_tables(family, count, median, worst):
    rows = _rows(family)
    errors = [abs(_predicted(family, both, c, d, s) / v - 1) for both, c, d, s, v in rows]
    assert len(rows) == count
    assert statistics.median(errors) <= median
    assert max(errors) <= worst


def test_causal_fused_kernels_do_half_the_work_eager_the_whole_square():
    b, s, a, d = 2, 4096, 32, 128
    full = 4.0 * b * s * s * a * d
    eager = attention_kernels("eager", b, s, a, d, d, 0.0, True, 2)
    flash = attention_kernels("flash", b, s, a, d, d, 0.0, True, 2)
    dense = attention_kernels("flash", b, s, a, d, d, 0.0, False, 2)
    assert [k.name for k in eager] == ["attention", "softmax"]
    assert eager[0].flops == full and eager[1].flops == b * a * s * s
    assert [k.name for k in flash] == ["attention"]  # the softmax is inside the kernel
    assert flash[0].flops == full / 2 and dense[0].flops == full
    fit = H100.attention_kernels.fits["fa3"]
    causal_eff = fit.forward_max[128] * s / (s + fit.causal_seq_half)
    assert efficiency(fit, d, s, True) == pytest.approx(causal_eff, rel=1e-12)
    assert efficiency(fit, d, s, True) < efficiency(fit, d, s, False)


def test_head_dim_128_against_64_and_interpolation_between():
    fit = H100.attention_kernels.fits["fa3"]
    s = 8192
    ratio = efficiency(fit, 128, s, False) / efficiency(fit, 64, s, False)
    assert ratio == pytest.approx(0.682 / 0.527, rel=1e-12)
    mid = 0.682 + (0.780 - 0.682) * math.log2(160 / 128)  # MLA's (192 + 128) / 2
    assert forward_max(fit, 160) == pytest.approx(mid, rel=1e-12)
    assert forward_max(fit, 32) == 0.527 and forward_max(fit, 512) == 0.780  # held


def test_backward_is_two_and_a_half_forwards_at_its_own_efficiency():
    b, s, a, d = 1, 8192, 32, 128
    forward = attention_kernels("flash", b, s, a, d, d, 3.0 * b * s * a * d, True, 2)
    backward = backward_of(forward)
    assert backward[0].flops == 2.5 * forward[0].flops
    assert backward[0].fused is not None and backward[0].fused.backward
    launch = H100.kernel_launch_s
    fwd = kernel_time_s(forward[0], H100, "bf16") - launch
    bwd = kernel_time_s(backward[0], H100, "bf16") - launch
    assert bwd / fwd == pytest.approx(2.5 / 0.79, rel=1e-9)
    # fp8 runs keep attention in 16 bit: the same time at twice the nominal peak
    assert kernel_time_s(forward[0], H100, "fp8") == pytest.approx(fwd + launch, rel=1e-12)


def test_activations_without_the_score_term():
    """Korthikanti et al. 2022 Eq. 2, s·b·h·(34 + 5as/h) bytes per GPT block at 16 bit; with
    fused attention 34·s·b·h + 4·a·s·b (an fp32 logsumexp per row, no s x s tensors), which
    selective recomputation leaves as it is."""
    layers, h, a, s, b = 2, 1024, 16, 2048, 2
    eager = transformer_layers("g", layers, h, a, s, 51200, b, 2).layers[1]
    flash = transformer_layers("g", layers, h, a, s, 51200, b, 2, attention="flash").layers[1]
    assert stored_activations(eager, 1, "none") == pytest.approx(s * b * h * (34 + 5 * a * s / h))
    assert stored_activations(eager, 1, "selective") == pytest.approx(34 * s * b * h)
    fused = 34 * s * b * h + 4 * a * s * b
    assert stored_activations(flash, 1, "none") == pytest.approx(fused)
    assert stored_activations(flash, 1, "selective") == pytest.approx(fused)
    assert stored_activations(flash, 1, "full") == stored_activations(eager, 1, "full")


def test_decoder_keeps_a_logsumexp_and_selective_recompute_adds_no_time():
    shape = llama(2, 4096, 32, 8, 14336, 8192, 128256)
    b, a, s = 1, 32, 8192
    eager, flash = (decoder_layers("l", shape, b, 2, k).layers[1] for k in ("eager", "flash"))
    # the softmax output (2 bytes per score) against an fp32 logsumexp per row and head
    assert eager.activation_bytes - flash.activation_bytes == 2 * a * s * s * b - 4 * a * s * b
    assert flash.block is not None and flash.block.attention_core == 0.0
    none, selective = (pass_times_s(flash, H100, "bf16", r) for r in ("none", "selective"))
    assert selective == none
    e_none, e_sel = (pass_times_s(eager, H100, "bf16", r) for r in ("none", "selective"))
    assert e_sel[1] > e_none[1]


def test_default_kernel_by_device_and_precision():
    spec = ModelSpec(preset="llama-3-8b")
    assert attention_kernel(spec, H100, "bf16") == "flash"
    assert attention_kernel(spec, hardware.device("a100-sxm4-80gb"), "bf16") == "eager"
    assert attention_kernel(spec, H100, "fp32") == "eager"
    assert attention_kernel(spec, hardware.device("v100-sxm2-32gb"), "fp16") == "eager"
    assert attention_kernel(ModelSpec(preset="llama-3-8b", attention="sdpa"), H100,
                            "bf16") == "sdpa"


def _scenario(model: dict, cluster: str = "dgx-h100", precision: str = "bf16") -> dict:
    return {"name": "s", "model": model, "cluster": {"preset": cluster, "nodes": 1},
            "precision": precision, "training": {"global_batch": 8, "microbatch": 1},
            "parallelism": {"data": 8}}


def test_contract_takes_a_kernel_string_or_mapping_beside_a_preset():
    for given in ("eager", {"kernel": "sdpa"}):
        scenario = load_scenario(_scenario({"preset": "llama-3-70b", "attention": given}))
        assert scenario.model.attention is not None
        assert scenario.model.attention.kernel in ("eager", "sdpa")
    mla = load_scenario(_scenario({"kind": "transformer", "layers": 2, "hidden": 256,
                                   "heads": 4, "seq_len": 64, "vocab": 100, "mlp": "swiglu",
                                   "attention": {"kind": "mla", "kv_lora_rank": 32,
                                                 "qk_nope_head_dim": 32,
                                                 "qk_rope_head_dim": 16, "v_head_dim": 32,
                                                 "kernel": "flash"}}))
    assert mla.model.attention is not None and mla.model.attention.kernel == "flash"


def test_bad_kernel_is_an_input_error_naming_attention():
    with pytest.raises(ScenarioError) as err:
        load_scenario(_scenario({"preset": "llama-3-8b", "attention": "flashy"}))
    text = str(err.value)
    assert "attention" in text and "flashy" in text and "flash, sdpa, eager" in text
    with pytest.raises(ScenarioError) as err:
        load_scenario(_scenario({"preset": "llama-3-8b", "attention": {"kind": "mla"}}))
    assert "attention" in str(err.value)


@pytest.mark.parametrize("cluster, precision, says", [
    ("dgx1-v100", "fp16", "no published flash attention kernel"),
    ("dgx-h100", "fp32", "runs in 16 bit")])
def test_fused_kernel_where_none_runs_is_refused(cluster, precision, says):
    from dlsim.simulate import simulate

    with pytest.raises(ScenarioError) as err:
        simulate(_scenario({"preset": "gpt2-124m", "attention": "flash"}, cluster, precision))
    assert err.value.field == "model.attention" and says in str(err.value)


def test_kernel_beside_an_mla_hf_config_keeps_its_latent_attention():
    """``attention: eager`` beside DeepSeek-V3's config.json sets the kernel and keeps the
    imported kind: mla with its ranks."""
    root = Path(__file__).resolve().parents[2]
    spec = ModelSpec.model_validate({"hf_config": str(root / "examples/hf/deepseek-v3.json"),
                                     "attention": "eager"})
    assert spec.attention is not None
    assert spec.attention.kind == "mla" and spec.attention.kernel == "eager"
    assert spec.attention.kv_lora_rank == 512
