"""Validation: simulated figures against published measurements (``validation/``).

Each table function reads one CSV, simulates every row from the hardware, model and plan it
describes (never from the measured figure), and returns rows of predicted vs measured. Rows
the simulator cannot express are listed with the reason rather than skipped silently. The
A100-era tables are ``a100``, the Hopper-era ones (NeMo / Megatron-Bridge, MoE Parallel
Folding, MLPerf Training) ``modern``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import pandas as pd

from dlsim.contract.errors import ScenarioError
from dlsim.data import VALIDATION
from dlsim.validation import a100, gpu_steps, modern, multi_ring, nccl_other
from dlsim.validation.reading import Row, row

# The tables bundled with dlsim (validation/, copied from the project's shared/validation/);
# an explicit directory (``dlsim validate --data DIR``) wins over them.
DEFAULT_DIR = VALIDATION

TABLES: dict[str, Callable[[Path], list[Row]]] = {
    "zero_memory": a100.zero_memory,
    "nccl_allreduce_busbw_8xA100": a100.nccl_allreduce,
    "pytorch_ddp_benchmark_v100": a100.ddp_v100,
    "megatron_sc21_table1": a100.megatron_sc21,
    "megatron_2020_tp_scaling_dgxa100": a100.megatron_tp_scaling,
    "dle_bert_large_dgxa100": a100.dle_bert_large,
    "gpipe_table2_tpu": a100.gpipe_table2,
    "nccl_h100_other_sources": nccl_other.nccl_other_sources,
    "multi_ring_closed_forms": multi_ring.multi_ring_closed_forms,
    "nemo_performance": modern.nemo_performance,
    "megatron_core_moe": modern.megatron_core_moe,
    "mlperf_training_v40_v41": modern.mlperf_training,
    "h200_training_steps": gpu_steps.h200_training_steps,
    "h200_training_steps_calibrated": gpu_steps.h200_training_steps_calibrated,
    "h200_training_memory": gpu_steps.h200_training_memory,
}
# The Hopper-era tables: whole H100 training jobs, minutes of simulation between them
MODERN = ("nemo_performance", "megatron_core_moe", "mlperf_training_v40_v41")


def host_validation(calibration: str | None = None, force: bool = False, repeats: int = 5,
                    progress: bool = True) -> pd.DataFrame:
    """Tables host-training and host-ddp: real torch training steps of models held out from
    calibration, measured on this host and predicted on its calibrated profile
    (dlsim/calibration/hostruns.py; needs torch)."""
    try:
        from dlsim.calibration.hostruns import run_host
    except ImportError as exc:
        raise ScenarioError(f"--host runs torch training steps, and {exc.name} is not "
                            "installed: pip install 'dlsim[calibrate]'.") from None
    return pd.DataFrame([row(table, case, predicted, measured, "s") for table, case,
                         predicted, measured in run_host(calibration, force, repeats, progress)])


def run_validation(directory: Path = DEFAULT_DIR,
                   tables: Iterable[str] | None = None) -> pd.DataFrame:
    """The rows of ``tables`` (default: every modelled table): table, case, predicted,
    measured, error_pct, unit; an unknown table name is an input error naming them all."""
    if not directory.is_dir():
        raise ScenarioError("the published measurements are not there; pass --data with the "
                            "folder that holds the validation CSV files.", file=str(directory))
    names = list(TABLES) if tables is None else list(tables)
    unknown = [name for name in names if name not in TABLES]
    if unknown:
        raise ScenarioError(f"no validation table {unknown[0]!r}; the tables are "
                            f"{', '.join(TABLES)}.", field="--table")
    return pd.DataFrame([row for name in names for row in TABLES[name](directory)])


def table_errors(rows: pd.DataFrame) -> pd.DataFrame:
    """Median and worst absolute percentage error per table."""
    grouped = rows.assign(abs_error_pct=rows["error_pct"].abs()).groupby("table", sort=False)
    return grouped["abs_error_pct"].agg(rows="size", median_abs_error_pct="median",
                                        worst_abs_error_pct="max").reset_index()
