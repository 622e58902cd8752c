"""Draw docs/img/fp8-vs-bf16.png: Llama 3 70B on 64 H100 (NeMo's t4 p8 v5 recipe), BF16 vs FP8.

Left: the simulated step (scenarios/llama3-70b-fp8.yaml at each precision) split into compute,
exposed communication and pipeline bubble. Right: what one tensor rank computes for one
Llama-3 70B block and one micro-batch (forward + backward, sequence parallel, t = 4), by
kernel group: the linear layers' GEMMs (FP8 under Transformer Engine), their cast kernels,
attention (batched products and softmax, BF16 either way) and the other memory-bound kernels.
Prints the numbers the docs page quotes.

Run: python docs/analysis/fp8_vs_bf16.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

import dlsim  # noqa: E402
from dlsim.contract.scenario import ModelSpec  # noqa: E402
from dlsim.hardware import profiles as hw  # noqa: E402
from dlsim.parallel.tensor import shard_model  # noqa: E402
from dlsim.workload.attention import attention_kernel  # noqa: E402
from dlsim.workload.costmodel import roofline_s  # noqa: E402
from dlsim.workload.precision import HIGH_PRECISION, cast_kernel, compute_dtype  # noqa: E402
from dlsim.workload.presets import build_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img" / "fp8-vs-bf16.png"
SCENARIO = ROOT / "scenarios" / "llama3-70b-fp8.yaml"
PRECISIONS = ("bf16", "fp8")
GROUPS = ("linear GEMMs", "FP8 casts", "attention", "other")


def step(precision: str) -> dict[str, float]:
    data = yaml.safe_load(SCENARIO.read_text())
    data.pop("sweep")
    summary = dlsim.simulate(data | {"precision": precision}).summary
    return {k: summary["breakdown_s"][k] for k in ("compute", "exposed_comm", "bubble")} | {
        "step": summary["step_time_s"]}


def block_groups(precision: str) -> dict[str, float]:
    """Seconds one tensor rank spends on one block and micro-batch, by kernel group."""
    device = hw.device("h100-sxm5-80gb")
    spec = ModelSpec(preset="llama-3-70b")
    kernel_of_run = attention_kernel(spec, device, precision)  # flash on H100, as the run
    model = shard_model(build_model(spec, 1, 2, kernel_of_run), 4, True)
    block = next(layer for layer in model.layers if layer.role == "block")
    out = dict.fromkeys(GROUPS, 0.0)
    for kernel in block.forward + block.backward:
        dtype = compute_dtype(kernel, precision)
        group = ("linear GEMMs" if kernel.kind == "gemm" else
                 "attention" if kernel.name in ("attention", "softmax") else "other")
        out[group] += roofline_s(kernel, device, dtype)
        cast = cast_kernel(kernel, precision)
        if cast is not None:
            out["FP8 casts"] += roofline_s(cast, device, HIGH_PRECISION)
    return out


def main() -> None:
    steps = {p: step(p) for p in PRECISIONS}
    blocks = {p: block_groups(p) for p in PRECISIONS}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    for parts, axis, keys, scale, unit in (
            (steps, left, ("compute", "exposed_comm", "bubble"), 1.0, "s"),
            (blocks, right, GROUPS, 1e3, "ms")):
        bottom = [0.0] * len(PRECISIONS)
        for key in keys:
            values = [parts[p][key] * scale for p in PRECISIONS]
            axis.bar([p.upper() for p in PRECISIONS], values, bottom=bottom, label=key)
            bottom = [b + v for b, v in zip(bottom, values, strict=True)]
        axis.set_ylabel(unit)
        axis.legend(fontsize=8)
    left.set_title("step, Llama 3 70B on 64 H100 (t4 p8 v5, gbs 256)")
    right.set_title("one block, one micro-batch, one tensor rank (fwd + bwd)")
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    for p in PRECISIONS:
        tokens = 256 * 8192 / steps[p]["step"] / 64
        print(p, {k: round(v, 3) for k, v in steps[p].items()}, f"{tokens:.0f} tokens/s/GPU",
              {k: round(v * 1e3, 2) for k, v in blocks[p].items()})
    print("speed-up", steps["bf16"]["step"] / steps["fp8"]["step"])


if __name__ == "__main__":
    main()
