"""Validation: simulated figures against published measurements (``shared/validation/``).

Each table function reads one CSV, simulates every row from the hardware, model and plan it
describes (never from the measured figure), and returns rows of predicted vs measured. Tables
the simulator cannot model yet are listed as such rather than skipped silently.
"""

from __future__ import annotations

import csv
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd

from dlsim.errors import ScenarioError
from dlsim.memory import memory_per_device
from dlsim.simulate import simulate
from dlsim.workload import Layer, Model

DEFAULT_DIR = Path(__file__).resolve().parents[2] / "shared" / "validation"

Row = dict[str, Any]


def _row(table: str, case: str, predicted: float, measured: float, unit: str) -> Row:
    return {"table": table, "case": case, "predicted": predicted, "measured": measured,
            "error_pct": 100.0 * (predicted - measured) / measured, "unit": unit}


def _read(directory: Path, name: str) -> list[dict[str, str]]:
    path = directory / name
    try:
        with path.open() as f:
            return list(csv.DictReader(f))
    except OSError as exc:
        raise ScenarioError(f"cannot read the validation table: {exc.strerror}.",
                            file=str(path)) from None


def zero_memory(directory: Path) -> list[Row]:
    """ZeRO (SC'20) Table 1: model-state GB per device, mixed-precision Adam (K = 12)."""
    rows = []
    for r in _read(directory, "zero_memory.csv"):
        psi = float(r["params_b"]) * 1e9
        model = Model("psi", (Layer("all", int(psi), (), (), 0.0),))
        plan = memory_per_device(model, "bf16", "adam", data=int(r["dp"]),
                                 zero_stage=int(r["stage"]))
        predicted = (plan.params + plan.grads + plan.optimizer) / 1e9
        rows.append(_row("zero_memory", f"{r['params_b']}B dp={r['dp']} stage={r['stage']}",
                         predicted, float(r["gb_per_device"]), "GB"))
    return rows


def nccl_allreduce(directory: Path) -> list[Row]:
    """nccl-tests all_reduce_perf bus bandwidth on one DGX A100 node, from link figures."""
    rows = []
    for r in _read(directory, "nccl_allreduce_busbw_8xA100.csv"):
        result = simulate({"name": "nccl", "kind": "collective",
                           "cluster": {"preset": "dgx-a100", "nodes": 1},
                           "collective": {"op": "allreduce", "algorithm": "ring",
                                          "size_bytes": float(r["size_bytes_approx"])}})
        rows.append(_row("nccl_allreduce_busbw_8xA100", r["size_label"],
                         result.busbw_GBps, float(r["busbw_gbps"]), "GB/s"))
    return rows


def ddp_v100(directory: Path) -> list[Row]:
    """PyTorch's DDP benchmark: ResNet seconds per iteration, batch 32 per GPU, fp32, SGD,
    25 MiB buckets, on DGX-1-style V100 machines (8 GPUs each, 4x 100 Gb/s InfiniBand)."""
    rows = []
    for r in _read(directory, "pytorch_ddp_benchmark_v100.csv"):
        gpus = int(r["gpus"])
        result = simulate({
            "name": "ddp", "model": {"preset": r["model"]},
            "cluster": {"preset": "dgx1-v100", "nodes": -(-gpus // 8)},
            "precision": "fp32", "parallelism": {"data": gpus},
            "training": {"global_batch": 32 * gpus, "optimizer": "sgd", "bucket_cap_mb": 25},
            "communication": {"data_parallel": "ring"}})
        rows.append(_row("pytorch_ddp_benchmark_v100", f"{r['model']} {gpus} GPUs",
                         result.step_time_s, float(r["sec_per_iter_p50"]), "s"))
    return rows


TABLES: dict[str, Callable[[Path], list[Row]]] = {
    "zero_memory": zero_memory,
    "nccl_allreduce_busbw_8xA100": nccl_allreduce,
    "pytorch_ddp_benchmark_v100": ddp_v100,
}


def host_validation(calibration: str | None = None, force: bool = False, repeats: int = 5,
                    progress: bool = True) -> pd.DataFrame:
    """Tables host-training and host-ddp: real torch training steps of models held out from
    calibration, measured on this host and predicted on its calibrated profile
    (dlsim/calibration/hostruns.py; needs torch)."""
    from dlsim.calibration.hostruns import run_host

    return pd.DataFrame([_row(table, case, predicted, measured, "s") for table, case,
                         predicted, measured in run_host(calibration, force, repeats, progress)])


def run_validation(directory: Path = DEFAULT_DIR) -> pd.DataFrame:
    """Every modelled table's rows: table, case, predicted, measured, error_pct, unit."""
    if not directory.is_dir():
        raise ScenarioError("the published measurements are not there; pass --data with the "
                            "folder that holds the validation CSV files.", file=str(directory))
    return pd.DataFrame([row for table in TABLES.values() for row in table(directory)])


def table_errors(rows: pd.DataFrame) -> pd.DataFrame:
    """Median and worst absolute percentage error per table."""
    grouped = rows.assign(abs_error_pct=rows["error_pct"].abs()).groupby("table", sort=False)
    return grouped["abs_error_pct"].agg(rows="size", median_abs_error_pct="median",
                                        worst_abs_error_pct="max").reset_index()
