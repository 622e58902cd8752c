"""Measure a lent GPU once: real training steps (dlsim.calibration.gpusteps) and the full
`dlsim calibrate` grid (GEMMs in fp32/bf16/fp8, FlashAttention, memory-bound kernels, copies).

    python benchmarks/gpu_measurements.py OUT_DIR [steps,calibration,compiled,flash]
    python benchmarks/gpu_measurements.py --collect OUT_DIR... > validation/h200_training_steps.csv

writes OUT_DIR/gpu_steps.json (eager), OUT_DIR/<fingerprint>.json (the calibration),
OUT_DIR/gpu_steps_compiled.json (each block through torch.compile),
OUT_DIR/gpu_steps_flash.json (SDPA held to FlashAttention-2) and a log. Each stage is
independent: one that fails is logged and the next runs. ``--collect`` turns the OUT_DIRs
of several runs into one table. The committed results are validation/h200_training_steps.csv
(raw run outputs in validation/h200_raw/) and calibration/cuda-*.json (docs/calibration.md).
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


RECIPES = {"gpu_steps.json": "eager", "gpu_steps_compiled.json": "compiled",
           "gpu_steps_flash.json": "eager-fa2"}
COLUMNS = ["run", "recipe", "case", "layers", "hidden", "heads", "kv_heads", "ffn_hidden",
           "vocab", "seq_len", "mlp", "tied_embeddings", "batch", "params", "step_s", "iqr_s",
           "repeats", "tokens_per_s", "peak_memory_GB", "power_median_W", "power_samples"]


def _power(path: Path) -> list[tuple[float, float]]:
    """(unix time, board W) of an ``nvidia-smi --query-gpu=timestamp,power.draw`` log (UTC)."""
    import datetime as dt

    samples = []
    for line in path.read_text().splitlines():
        stamp, watts, *_ = (x.strip() for x in line.split(","))
        try:
            when = dt.datetime.strptime(stamp, "%Y/%m/%d %H:%M:%S.%f")
        except ValueError:
            continue
        samples.append((when.replace(tzinfo=dt.timezone.utc).timestamp(),
                        float(watts.split()[0])))
    return samples


def collect(runs: list[Path]) -> str:
    """The rows of several measured runs (OUT_DIRs, numbered in order) as one CSV, with the
    board power nvidia-smi sampled over each eager case's timed window (warm-up included;
    a compiled case's window holds its compilation, so it gets none)."""
    import csv
    import io
    import statistics

    table = io.StringIO()
    writer = csv.DictWriter(table, COLUMNS, lineterminator="\n")
    writer.writeheader()
    for number, run in enumerate(runs, start=1):
        power = _power(run / "power.csv") if (run / "power.csv").exists() else []
        for name, recipe in RECIPES.items():
            if not (run / name).exists():
                continue
            for r in json.loads((run / name).read_text()):
                window = [w for t, w in power if r["started_unix_s"] <= t <= r["ended_unix_s"]]
                window = window if recipe != "compiled" else []
                writer.writerow({**{k: r["model"].get(k, "") for k in COLUMNS[3:12]},
                                 "run": number, "recipe": recipe, "case": r["case"],
                                 "batch": r["batch"], "params": r["params"],
                                 "step_s": f"{r['step_s']:.6f}", "iqr_s": f"{r['iqr_s']:.6f}",
                                 "repeats": r["repeats"],
                                 "tokens_per_s": f"{r['tokens_per_s']:.1f}",
                                 "peak_memory_GB": f"{r['peak_memory_GB']:.3f}",
                                 "power_median_W": f"{statistics.median(window):.1f}"
                                 if window else "", "power_samples": len(window)})
    return table.getvalue()


def main() -> None:
    if sys.argv[1] == "--collect":
        print(collect([Path(p) for p in sys.argv[2:]]), end="")
        return
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
