"""Real single-GPU torch training steps measured on a lent H200 (``h200_training_steps.csv``,
written by benchmarks/gpu_measurements.py from ``dlsim.calibration.gpusteps``; the raw output
of each run, kernel tables included, is under validation/h200_raw/) against dlsim's prediction
for the same model on one ``h200-sxm-141gb``.

The steps are what a plain PyTorch user runs: bf16 autocast over fp32 weights (so the
scenario says ``training.autocast: true``), fused AdamW, ``scaled_dot_product_attention``
(torch 2.11 on Hopper: cuDNN's fused attention, so it says ``attention: sdpa``). ``eager``
rows run every operator as torch launches it; ``compiled`` rows put each block through
torch.compile, whose fused elementwise kernels are closer to the Megatron-Core /
Transformer Engine kernels dlsim prices. Rows of the last run
that measured each recipe are predicted (run 1 repeated run 2's eager steps within 1.5 %); the
``eager-fa2`` rows (SDPA held to FlashAttention-2) are kept in the table as data: no scenario
names torch's FA2 backend on Hopper now that ``sdpa`` is cuDNN.

Three tables: ``h200_training_steps`` predicts with the profile as shipped (published figures
and the kernel fits measured on this GPU, each stated in the profile),
``h200_training_steps_calibrated`` with the committed calibration of that GPU (what a user
gets after ``dlsim calibrate`` there), ``h200_training_memory`` the peak memory torch's allocator
held against dlsim's memory per device.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dlsim.simulate import simulate
from dlsim.validation.reading import Row, read_table, row

FILE = "h200_training_steps.csv"
CALIBRATION = "calibration/cuda-nvidia-h200-16c-1t-20ac9250.json"
PREDICTED = ("eager", "compiled")
SHAPE = ("layers", "hidden", "heads", "kv_heads", "ffn_hidden", "vocab", "seq_len")


def _scenario(r: dict[str, str], calibration: str | None) -> dict[str, Any]:
    model: dict[str, Any] = {"kind": "transformer", "attention": "sdpa",
                             **{k: int(r[k]) for k in SHAPE if r[k]}}
    if r["mlp"]:
        model |= {"mlp": r["mlp"], "tied_embeddings": r["tied_embeddings"] == "True"}
    cluster: dict[str, Any] = {"device": "h200-sxm-141gb", "devices_per_node": 1,
                               "intra_node": "pcie"}
    if calibration:
        cluster["calibration"] = calibration
    return {"name": f"h200 {r['case']}", "model": model, "cluster": cluster,
            "precision": "bf16", "parallelism": {"data": 1},
            "training": {"global_batch": int(r["batch"]), "optimizer": "adam",
                         "autocast": True}}


def _latest(directory: Path) -> list[dict[str, str]]:
    """Each predicted recipe's rows from the last run that measured it."""
    rows = read_table(directory, FILE)
    last = {recipe: max(int(r["run"]) for r in rows if r["recipe"] == recipe)
            for recipe in PREDICTED}
    return [r for r in rows if r["recipe"] in last and int(r["run"]) == last[r["recipe"]]]


def _steps(directory: Path, table: str, calibration: str | None) -> list[Row]:
    return [row(table, f"{r['recipe']} {r['case']} b{r['batch']}",
                simulate(_scenario(r, calibration)).step_time_s, float(r["step_s"]), "s")
            for r in _latest(directory)]


def h200_training_steps(directory: Path) -> list[Row]:
    return _steps(directory, "h200_training_steps", None)


def h200_training_steps_calibrated(directory: Path) -> list[Row]:
    return _steps(directory, "h200_training_steps_calibrated", CALIBRATION)


def h200_training_memory(directory: Path) -> list[Row]:
    return [row("h200_training_memory", f"{r['recipe']} {r['case']} b{r['batch']}",
                simulate(_scenario(r, None)).summary["memory_per_device_bytes"] / 1e9,
                float(r["peak_memory_GB"]), "GB")
            for r in _latest(directory)]
