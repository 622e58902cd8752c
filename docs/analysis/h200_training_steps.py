"""Where a real single-GPU training step goes on an H200, kernel by kernel, against dlsim, and
how the profile's published kernel fits fare on that GPU's microbenchmarks.

Left: for each model of validation/h200_training_steps.csv, the step split into GEMMs, fused
attention, the optimizer, casts/copies and other elementwise kernels, as torch.profiler timed
them (validation/h200_raw/run2: eager and torch.compile'd; the kernel tables hold each step's
top 40 kernels, 97-99 % of it) beside dlsim's prediction on the h200-sxm-141gb profile split
the same way (its kernels by kind). Printed: the same numbers, and the profile's fits (BF16 and
FP8 GEMM curves, FlashAttention-2 from the FA2 paper) against the calibration file's points.

Run: python docs/analysis/h200_training_steps.py   (writes docs/img/h200-training-steps.png)
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dlsim.calibration import store  # noqa: E402
from dlsim.contract.scenario import ModelSpec  # noqa: E402
from dlsim.data import ROOT, VALIDATION  # noqa: E402
from dlsim.hardware import profiles as hardware  # noqa: E402
from dlsim.workload.attention import efficiency  # noqa: E402
from dlsim.workload.autocast import autocast_workload  # noqa: E402
from dlsim.workload.costmodel import kernel_time_s, optimizer_time_s  # noqa: E402
from dlsim.workload.presets import build_model  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "h200-training-steps.png"
RAW = VALIDATION / "h200_raw" / "run2"
CALIBRATION = ROOT / "calibration" / "cuda-nvidia-h200-16c-1t-20ac9250.json"
PARTS = ("GEMM", "attention", "optimizer", "casts and copies", "other elementwise")
COLOURS = ("#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3")


def measured_parts(kernels: list[dict]) -> Counter:
    """A kernel table's device time in ms by part, from the kernel names."""
    parts: Counter = Counter()
    for k in kernels:
        name = k["kernel"]
        part = ("GEMM" if "nvjet" in name or "gemm" in name.lower() else
                "attention" if "sdpa" in name or "flash" in name or "fmha" in name else
                "optimizer" if "FusedOptimizer" in name or "multi_tensor" in name else
                "casts and copies" if "copy" in name.lower() else "other elementwise")
        parts[part] += k["device_us"] / 1e3
    return parts


def predicted_parts(model: dict, batch: int) -> Counter:
    """dlsim's kernels on the shipped h200 profile, in ms by part (attention: sdpa, under
    training.autocast: its weight casts are the copy kernels)."""
    device = hardware.device("h200-sxm-141gb")
    built = build_model(ModelSpec(**model, attention="sdpa"), batch, 2, "sdpa")
    parts: Counter = Counter()
    for layer in autocast_workload(built).layers:
        for kernel in layer.forward + layer.backward:
            part = {"gemm": "GEMM", "attention": "attention",
                    "copy": "casts and copies"}.get(kernel.kind, "other elementwise")
            parts[part] += kernel_time_s(kernel, device, "bf16") * 1e3
    parts["optimizer"] = optimizer_time_s(built.parameters, "adam", device) * 1e3
    return parts


def kernel_fits() -> list[str]:
    """The profile's published fits against the H200's own microbenchmarks."""
    cal = store.load(CALIBRATION)
    device = hardware.device("h200-sxm-141gb")
    lines = []
    for dtype in ("bf16", "fp8"):
        top, half = device.efficiency.gemm_curve(dtype, device.peak_flops(dtype))
        errors = []
        for m in cal.measurements:
            if m.kind == "gemm" and m.dtype == dtype and m.flops >= 1e11:
                predicted = m.flops / (device.peak_flops(dtype) * top * m.flops / 1e9 /
                                       (m.flops / 1e9 + half))
                errors.append(100 * (predicted / m.median_s - 1))
        lines.append(f"{dtype} GEMM curve of the profile on the {len(errors)} points of >= 100 "
                     f"GFLOP: median {np.median(errors):+.1f}%, {min(errors):+.1f}% to "
                     f"{max(errors):+.1f}%")
    fa2 = device.attention_kernels.fits["fa2"]
    errors = []
    for m in cal.measurements:
        if m.kind == "fused_attention" and m.op.startswith("flash"):
            shape = dict(re.findall(r"([a-z])(\d+)", m.shape))
            eff = efficiency(fa2, int(shape["d"]), int(shape["s"]), "causal" in m.shape,
                             m.op.endswith("_bwd"))
            errors.append(100 * (m.flops / (device.peak_flops("bf16") * eff) / m.median_s - 1))
    lines.append(f"fa2 fit (FA2 paper, H100) on the H200's 72 torch-FA2 points: median "
                 f"|error| {np.median(np.abs(errors)):.1f}%, {min(errors):+.1f}% to "
                 f"{max(errors):+.1f}%")
    return lines


def main() -> None:
    eager = json.loads((RAW / "gpu_steps.json").read_text())
    compiled = json.loads((RAW / "gpu_steps_compiled.json").read_text())
    fig, ax = plt.subplots(figsize=(10, 4.6))
    width, x = 0.26, np.arange(len(eager))
    for i, r in enumerate(eager):
        bars = [("eager", measured_parts(r["kernels"]), r["step_s"]),
                ("compiled", measured_parts(compiled[i]["kernels"]), compiled[i]["step_s"]),
                ("dlsim", predicted_parts(r["model"], r["batch"]), None)]
        for j, (label, parts, step) in enumerate(bars):
            bottom = 0.0
            for part, colour in zip(PARTS, COLOURS):
                ax.bar(x[i] + (j - 1) * width, parts[part], width, bottom=bottom,
                       color=colour, label=part if i == 0 and j == 0 else None)
                bottom += parts[part]
            total = step * 1e3 if step else bottom
            ax.text(x[i] + (j - 1) * width, total + 3, f"{label}\n{total:.0f}", ha="center",
                    fontsize=7)
            print(f"{r['case']:45s} {label:8s} step {total:6.1f} ms  " + "  ".join(
                f"{p} {parts[p]:.1f}" for p in PARTS))
    ax.set_xticks(x, [r["case"].replace(" (", "\n(") for r in eager], fontsize=8)
    ax.set_ylabel("time per training step (ms)")
    ax.set_ylim(0, max(r["step_s"] for r in eager) * 1e3 * 1.25)
    ax.set_title("One H200, bf16 autocast, fused AdamW, SDPA on cuDNN: measured "
                 "(torch.profiler, eager and compiled) vs dlsim (h200 profile, autocast)",
                 fontsize=9)
    ax.legend(fontsize=8, ncols=5, loc="upper left", frameon=False)
    fig.tight_layout()
    fig.savefig(OUT, dpi=130)
    for line in kernel_fits():
        print(line)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
