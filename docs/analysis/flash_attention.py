"""Fit the fused attention constants of h100-sxm5-80gb.yaml and draw docs/img/flash-attention.png.

The fit (``--fit``): for each kernel family (FlashAttention-2: Dao 2023 Fig. 7 forward +
backward at head dims 64 and 128, FlashAttention-3 paper Fig. 5(e) forward at 256;
FlashAttention-3: Shah et al. 2024 Fig. 5 forward) of flashattention_h100.csv, every FP16/BF16
row with a head dim and one sequence length is predicted by ``dlsim.workload.attention``'s form
eff = forward_max[d] * s / (s + half) (x 3.5 r / (r + 2.5) for a forward+backward row, whose
time is F / e + 2.5 F / (r e)), r = ``backward_ratio``; seq_half and causal_seq_half are searched
on a grid of 5 (10 causal) and forward_max[d] is the geometric mean each (half, causal half)
implies, minimising the sum of squared relative errors. r is not fitted: the table has no
separate FlashAttention backward, so it is the mean backward/forward ratio of its cuDNN SDPA
rows (Hopper 422/553, 523/638; Blackwell 1083/1324, 1298/1698 = 0.79; quality low).

The picture: left, TFLOP/s against sequence length on H100, the table's points and dlsim's
prediction (fwd+bwd FA2 and PyTorch standard attention at head dim 128, FA3 forward at 64 and
128, causal and not); right, the step time of llama-3-8b on one DGX H100 with attention: eager,
sdpa and flash (dlsim run, 8-way data parallel, ZeRO-3, micro-batch 1 of 8,192 tokens; eager
also with selective recomputation, the only way its s x s scores fit in 80 GB).

Run: python docs/analysis/flash_attention.py [--fit]
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pandas as pd

import dlsim
from dlsim.data import VALIDATION
from dlsim.hardware import profiles as hardware
from dlsim.workload.attention import efficiency
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import attention_kernels, backward_of

OUT = Path(__file__).resolve().parents[1] / "img" / "flash-attention.png"
BACKWARD_RATIO = 0.79  # mean of the cuDNN SDPA rows' backward/forward, module docstring
FAMILIES = {"fa2": "FlashAttention-2", "fa3": "FlashAttention-3"}


def seq_len(text: str) -> int:
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def fa_rows(table: Path = VALIDATION / "flashattention_h100.csv") -> pd.DataFrame:
    """The FP16/BF16 FlashAttention-2/3 rows with one head dim and one sequence length."""
    rows = pd.read_csv(table, dtype=str).fillna("")
    rows = rows[(rows.kernel_family == "attention") & rows.implementation.isin(FAMILIES.values())
                & (rows.head_dim != "") & (rows.seq_len != "") & ~rows.seq_len.str.contains(",")
                & ~rows.precision.str.contains("FP8")]
    rows = rows[rows.value.str.lstrip("~").str.replace(".", "", regex=False).str.isdigit()]
    return pd.DataFrame({
        "family": [k for i in rows.implementation for k, v in FAMILIES.items() if v == i],
        "both": rows["pass"] == "forward+backward", "causal": rows.causal == "True",
        "head_dim": rows.head_dim.astype(int), "seq_len": rows.seq_len.map(seq_len),
        "tflops": rows.value.str.lstrip("~").astype(float)})


def both_passes(r: float) -> float:
    """Forward+backward throughput over the forward's: 3.5 / (1 + 2.5 / r)."""
    return 3.5 * r / (r + 2.5)


def fit(rows: pd.DataFrame, peak: float) -> dict[str, object]:
    best: tuple[float, dict[str, object]] | None = None
    k = [both_passes(BACKWARD_RATIO) if b else 1.0 for b in rows.both]
    for half in range(20, 800, 5):
        for causal_half in range(100, 4000, 10):
            halves = [causal_half if c else half for c in rows.causal]
            w = [s / (s + h) for s, h in zip(rows.seq_len, halves)]
            logs: dict[int, list[float]] = {}
            for d, v, wi, ki in zip(rows.head_dim, rows.tflops, w, k):
                logs.setdefault(d, []).append(math.log(v / (peak * wi * ki)))
            top = {d: math.exp(sum(x) / len(x)) for d, x in logs.items()}
            score = sum((peak * top[d] * wi * ki / v - 1) ** 2
                        for d, v, wi, ki in zip(rows.head_dim, rows.tflops, w, k))
            if best is None or score < best[0]:
                best = (score, {"forward_max": top, "seq_half": half,
                                "causal_seq_half": causal_half})
    assert best is not None
    return best[1]


def predicted_tflops(fit_: hardware.AttentionFit, peak: float, d: int, s: int, causal: bool,
                     both: bool) -> float:
    forward = efficiency(fit_, d, s, causal)
    if not both:
        return peak * forward
    return 3.5 * peak / (1 / forward + 2.5 / efficiency(fit_, d, s, causal, backward=True))


def eager_tflops(device: hardware.DeviceProfile, d: int, s: int, causal: bool) -> float:
    """dlsim's unfused attention (QK^T and AV, softmax) forward+backward, in the table's
    FLOPs (4·s²·d per head, half causal): total tokens 16k, hidden 2048, as Dao's Fig. 7."""
    heads, b = 2048 // d, 16384 // s
    forward = attention_kernels("eager", b, s, heads, d, d, 3 * b * s * 2048, causal, 2)
    seconds = sum(kernel_time_s(k, device, "bf16") for k in (*forward, *backward_of(forward)))
    flops = 3.5 * 4.0 * b * s * s * heads * d / (2 if causal else 1)
    return flops / seconds / 1e12


def step(attention: str, recompute: str) -> tuple[float, float]:
    """(step time s, memory per device GB) of llama-3-8b on one DGX H100."""
    result = dlsim.simulate({
        "name": f"llama-3-8b-{attention}", "model": {"preset": "llama-3-8b",
                                                     "attention": attention},
        "cluster": {"preset": "dgx-h100", "nodes": 1}, "precision": "bf16",
        "training": {"global_batch": 8, "microbatch": 1, "optimizer": "adam", "steps": 2},
        "parallelism": {"data": 8, "zero_stage": 3, "recompute": recompute}})
    return result.step_time_s, result.summary["memory_per_device_bytes"] / 1e9


def main() -> None:
    rows, device = fa_rows(), hardware.device("h100-sxm5-80gb")
    peak = device.peak_tflops["bf16"]
    kernels = device.attention_kernels
    if "--fit" in sys.argv:
        for family in FAMILIES:
            print(family, fit(rows[rows.family == family], peak))
    for family in FAMILIES:
        mine = rows[rows.family == family]
        errors = sorted(abs(predicted_tflops(kernels.fits[family], peak, r.head_dim, r.seq_len,
                                             r.causal, r.both) / r.tflops - 1)
                        for r in mine.itertuples())
        print(f"{family}: {len(errors)} rows, median {100 * errors[len(errors) // 2]:.1f} %, "
              f"worst {100 * errors[-1]:.1f} %")
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 4.4),
                                      gridspec_kw={"width_ratios": [1.6, 1]})
    lengths = [512 * 2 ** i for i in range(6)]
    series = [("fa2", True, 128, "C0", "FA2 fwd+bwd, d=128"),
              ("fa3", False, 128, "C1", "FA3 fwd, d=128"), ("fa3", False, 256, "C2",
                                                            "FA3 fwd, d=256")]
    for family, both, d, colour, label in series:
        for causal, style in ((False, "-"), (True, "--")):
            left.plot(lengths, [predicted_tflops(kernels.fits[family], peak, d, s, causal, both)
                                for s in lengths], style, color=colour,
                      label=label + (" causal" if causal else ""))
            seen = rows[(rows.family == family) & (rows.both == both) & (rows.head_dim == d)
                        & (rows.causal == causal)]
            left.plot(seen.seq_len, seen.tflops, "o" if not causal else "s", color=colour,
                      mfc="none" if causal else colour)
    table = pd.read_csv(VALIDATION / "flashattention_h100.csv", dtype=str)
    eager = table[(table.implementation == "PyTorch standard attention") & (table.head_dim ==
                                                                           "128")]
    for causal, style in ((False, "-"), (True, "--")):
        seen = eager[(eager.causal == str(causal)) & (eager.value != "OOM")]
        left.plot(lengths, [eager_tflops(device, 128, s, causal) for s in lengths], style,
                  color="C7", label="eager fwd+bwd, d=128" + (" causal" if causal else ""))
        left.plot(seen.seq_len.map(seq_len), seen.value.astype(float), "o" if not causal
                  else "s", color="C7", mfc="none" if causal else "C7")
    left.set(xscale="log", xlabel="sequence length", ylabel="TFLOP/s (FA convention)",
             title="H100 attention kernels: lines dlsim, points measured")
    left.set_xticks(lengths, [f"{s // 1024}k" if s >= 1024 else str(s) for s in lengths])
    left.legend(fontsize=7, ncol=2)
    left.grid(alpha=0.3)
    runs = {"eager": ("eager", "none"), "eager\n+selective": ("eager", "selective"),
            "sdpa": ("sdpa", "none"), "flash": ("flash", "none")}
    steps = {label: step(*run) for label, run in runs.items()}
    right.bar(list(steps), [t for t, _ in steps.values()], color=["C7", "C8", "C0", "C1"])
    for i, (label, (t, gb)) in enumerate(steps.items()):
        right.text(i, t, f"{t:.3f} s\n{gb:.0f} GB", ha="center", va="bottom", fontsize=8)
        print(f"llama-3-8b, 1x DGX H100, {label.replace(chr(10), ' ')}: step {t:.4f} s, "
              f"{gb:.1f} GB per GPU")
    right.set(ylabel="step time (s)", ylim=(0, 2.4),
              title="llama-3-8b, 8 H100, ZeRO-3, seq 8192, gb 8")
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
