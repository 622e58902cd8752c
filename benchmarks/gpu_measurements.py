"""Measure a lent GPU once: real training steps (dlsim.calibration.gpusteps) and the full
`dlsim calibrate` grid (GEMMs in fp32/bf16/fp8, FlashAttention, memory-bound kernels, copies).

    python benchmarks/gpu_measurements.py OUT_DIR [steps,calibration,compiled,flash]

writes OUT_DIR/gpu_steps.json (eager), OUT_DIR/<fingerprint>.json (the calibration),
OUT_DIR/gpu_steps_compiled.json (each block through torch.compile) and a log. Each
stage is independent: one that fails is logged and the next runs. The committed results are
validation/gpu_training_steps.json and calibration/cuda-*.json (see docs/calibration.md).
"""

from __future__ import annotations

import json
import sys
import time
import traceback
from pathlib import Path


def _log(out: Path, text: str) -> None:
    print(text, flush=True)
    with open(out / "log.txt", "a") as f:
        f.write(text + "\n")


COMPILE_BUDGET_S = 200  # torch.compile's first steps compile: stop starting cases after this


def steps(out: Path, compiled: bool = False, sdpa: str | None = None) -> None:
    from dlsim.calibration import gpusteps

    rows = []
    started = time.perf_counter()
    name = ("gpu_steps_compiled.json" if compiled else
            f"gpu_steps_{sdpa}.json" if sdpa else "gpu_steps.json")
    for case in gpusteps.CASES:
        if compiled and time.perf_counter() - started > COMPILE_BUDGET_S:
            _log(out, f"case {case.name} (compiled) not run: over {COMPILE_BUDGET_S} s")
            continue
        try:
            row = gpusteps.measure(case, compiled=compiled, sdpa=sdpa)
        except Exception:  # noqa: BLE001 - one failed case must not cost the others
            _log(out, f"case {case.name} failed:\n{traceback.format_exc()}")
            continue
        rows.append(row)
        _log(out, f"{case.name}{' compiled' if compiled else ''} {sdpa or ''}: "
                  f"{row['step_s'] * 1e3:.1f} ms (iqr {row['iqr_s'] * 1e3:.2f}),"
                  f" {row['tokens_per_s']:.0f} tok/s, {row['peak_memory_GB']:.1f} GB, "
                  f"{row['params'] / 1e9:.3f} B params")
        (out / name).write_text(json.dumps(rows, indent=1))


def calibration(out: Path) -> None:
    from dlsim.calibration.calibrate import calibrate

    cal, path = calibrate(device="cuda", out_dir=out, progress=False)
    _log(out, f"calibration {path}: {cal.duration_s} s; " + ", ".join(
        f"{k} max {c.max:.3f} half {c.half_gflop:.2f} GFLOP ({c.median_abs_residual_pct:.1f}%)"
        for k, c in cal.curves.items()))


def main() -> None:
    out = Path(sys.argv[1])
    out.mkdir(parents=True, exist_ok=True)
    import torch

    _log(out, f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
              f"{torch.cuda.get_device_name(0)}, capability {torch.cuda.get_device_capability()}")
    def compiled(out: Path) -> None:
        steps(out, compiled=True)

    def flash(out: Path) -> None:
        steps(out, sdpa="flash")

    chosen = sys.argv[2].split(",") if len(sys.argv) > 2 else ["steps", "calibration",
                                                                 "compiled", "flash"]
    stages = {"steps": steps, "calibration": calibration, "compiled": compiled,
              "flash": flash}
    for stage in (stages[name] for name in chosen):
        started = time.perf_counter()
        try:
            stage(out)
        except Exception:  # noqa: BLE001
            _log(out, f"stage {stage.__name__} failed:\n{traceback.format_exc()}")
        _log(out, f"stage {stage.__name__}: {time.perf_counter() - started:.1f} s")


if __name__ == "__main__":
    main()
