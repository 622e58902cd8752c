"""Validation: simulated figures against published measurements (``validation/``).

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

from dlsim.contract.errors import ScenarioError
from dlsim.data import VALIDATION
from dlsim.parallel.memory import memory_per_device
from dlsim.simulate import simulate
from dlsim.workload.model import Layer, Model
from dlsim.workload.shapes import TRANSFORMER_SHAPES

# The tables bundled with dlsim (validation/, copied from the project's shared/validation/);
# an explicit directory (``dlsim validate --data DIR``) wins over them.
DEFAULT_DIR = VALIDATION

Row = dict[str, Any]


def _row(table: str, case: str, predicted: float, measured: float, unit: str) -> Row:
    return {"table": table, "case": case, "predicted": predicted, "measured": measured,
            "error_pct": 100.0 * (predicted - measured) / measured, "unit": unit}


class _Cell(str):
    """A CSV value that knows where it was read: a value that is not a number, converted to
    one, is an input error naming the file, line and column instead of a traceback."""

    where: str
    file: str

    def _number(self, kind: type[float] | type[int]) -> float | int:
        try:
            return kind(str(self))
        except ValueError:
            raise ScenarioError(f"{self.where}: {str(self)[:40]!r} is not a number.",
                                file=self.file) from None

    def __float__(self) -> float:
        return float(self._number(float))

    def __int__(self) -> int:
        return int(self._number(int))


class _Row(dict[str, _Cell]):
    """A CSV row; a column the table lacks is an input error naming the file."""

    def __init__(self, file: str, values: dict[str, _Cell]) -> None:
        super().__init__(values)
        self.file = file

    def __missing__(self, column: str) -> _Cell:
        raise ScenarioError(f"the table has no column '{column}'; its header is "
                            f"{', '.join(self)}.", file=self.file)


def _cell(text: str, file: str, where: str) -> _Cell:
    cell = _Cell(text)
    cell.file, cell.where = file, where
    return cell


def _read(directory: Path, name: str) -> list[dict[str, str]]:
    """A validation table's rows; a table that cannot be read, is not UTF-8 text, has no
    rows, or has a row with missing or extra values is an input error naming the file (a
    corrupt table must not silently drop out of the comparison)."""
    path = directory / name
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ScenarioError(f"cannot read the validation table: {exc.strerror}.",
                            file=str(path)) from None
    except UnicodeDecodeError as exc:
        raise ScenarioError(f"not a UTF-8 CSV file (byte at offset {exc.start} is not "
                            "UTF-8).", file=str(path)) from None
    try:
        reader = csv.DictReader(text.splitlines())
        rows = []
        for row in reader:
            if None in row or None in row.values():
                given = sum(v is not None for k, v in row.items() if k is not None) + len(
                    row.get(None) or [])  # DictReader's restkey
                raise ScenarioError(f"line {reader.line_num} has {given} values where the "
                                    f"header names {len(reader.fieldnames or [])} columns.",
                                    file=str(path))
            rows.append(_Row(str(path), {k: _cell(v, str(path), f"line {reader.line_num}, "
                                                  f"column '{k}'") for k, v in row.items()}))
    except csv.Error as exc:
        raise ScenarioError(f"not a valid CSV file: {exc}.", file=str(path)) from None
    if not rows:
        raise ScenarioError("the validation table has no rows.", file=str(path))
    return rows  # type: ignore[return-value]  # _Row is a dict of str


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


def megatron_flops(batch: int, seq: int, layers: int, hidden: int, vocab: int) -> float:
    """FLOPs of one iteration as Megatron-LM counts them, with the recomputed forward
    (Narayanan et al. SC'21, §5.1): 96·B·s·l·h²·(1 + s/6h + V/16lh)."""
    return (96 * batch * seq * layers * hidden ** 2
            * (1 + seq / (6 * hidden) + vocab / (16 * layers * hidden)))


# Micro-batch size and layers per virtual stage of each Table 1 row, from the paper's own
# reproduction script (NVIDIA/Megatron-LM examples/sc21/run_table_1.sh: MBS and
# --num-layers-per-virtual-pipeline-stage; every row uses --recompute-method uniform).
SC21_PLANS = {"1.7": (16, None), "7.5": (16, None), "39.1": (4, None), "145.6": (2, 5),
              "529.6": (1, 1)}
# A row needing more pipeline passes than this (stages x micro-batches x chunks) takes
# minutes to simulate and is listed, not simulated (the 529.6B row: 35 x 280 x 3 = 29,400).
SC21_MAX_PASSES = 20_000


def megatron_sc21(directory: Path) -> list[Row]:
    """Megatron-LM SC'21 Table 1: TFLOP/s per A100 of GPT models under tensor, pipeline
    (interleaved 1F1B) and data parallelism with full recomputation, on DGX A100 nodes."""
    rows = []
    for r in _read(directory, "megatron_sc21_table1.csv"):
        t, p, gpus, batch = (int(r[k]) for k in ("tp", "pp", "gpus", "global_batch"))
        layers, hidden = int(r["layers"]), int(r["hidden"])
        micro, per_chunk = SC21_PLANS[r["params_b"]]
        chunks = layers // p // per_chunk if per_chunk else 1
        data = gpus // (t * p)
        case = f"{r['params_b']}B t={t} p={p} d={data} b={micro} v={chunks}"
        measured = float(r["tflops_per_gpu"])
        if p * batch // (data * micro) * chunks > SC21_MAX_PASSES:
            rows.append(_row("megatron_sc21_table1", case + " (not simulated: too many "
                             "passes)", float("nan"), measured, "TFLOP/s"))
            continue
        result = simulate({
            "name": "megatron-sc21", "model": {"preset": f"megatron-{r['params_b']}b"},
            "cluster": {"preset": "dgx-a100", "nodes": gpus // 8}, "precision": "bf16",
            "training": {"global_batch": batch, "microbatch": micro, "optimizer": "adam"},
            "parallelism": {"data": data, "tensor": t, "pipeline": p, "recompute": "full",
                            "schedule": "interleaved" if chunks > 1 else "1f1b",
                            "virtual_stages": chunks}})
        shape = TRANSFORMER_SHAPES[f"megatron-{r['params_b']}b"]
        seq, vocab = shape.seq_len, shape.vocab
        flops = megatron_flops(batch, seq, layers, hidden, vocab)
        rows.append(_row("megatron_sc21_table1", case,
                         flops / result.step_time_s / gpus / 1e12, measured, "TFLOP/s"))
    return rows


def megatron_tp_scaling(directory: Path) -> list[Row]:
    """Megatron-LM's README (Sep 2020): iteration time of GPT models, tensor parallel over
    1-8 A100s of one DGX A100, batch 16 in one micro-batch, fp16. The README's TFLOP/s
    equal the 96·B·s·l·h² count of these times, so activations were recomputed (full)."""
    rows = []
    for r in _read(directory, "megatron_2020_tp_scaling_dgxa100.csv"):
        t = int(r["tp"])
        result = simulate({
            "name": "megatron-2020", "cluster": {"preset": "dgx-a100", "nodes": 1},
            "model": {"kind": "transformer", "layers": int(r["layers"]),
                      "hidden": int(r["hidden"]), "heads": int(r["heads"]),
                      "seq_len": int(r["seq_len"]), "vocab": int(r["vocab"])},
            "precision": "fp16",
            "training": {"global_batch": int(r["batch"]), "optimizer": "adam"},
            "parallelism": {"data": 1, "tensor": t, "recompute": "full"}})
        rows.append(_row("megatron_2020_tp_scaling_dgxa100", f"{r['case']} t={t}",
                         result.step_time_s * 1e3, float(r["iter_time_ms"]), "ms"))
    return rows


# Per-GPU micro-batch of NVIDIA's BERT recipe (validation README): (seq_len, precision).
DLE_BERT_MICROBATCH = {(128, "tf32"): 128, (128, "fp16"): 256, (512, "tf32"): 16,
                       (512, "fp16"): 32}
DLE_ACCUMULATION = 16  # gradient accumulation: the optimizer's share of a step is then ~1%


def dle_bert_large(directory: Path) -> list[Row]:
    """BERT-large pre-training sequences/s on one DGX A100 (NVIDIA DeepLearningExamples),
    TF32 and AMP (fp16), data parallel over 1 or 8 GPUs with DDP buckets. Modelled as a
    24-layer, 1024-wide, 16-head encoder with a vocabulary-wide output layer on every token
    (the recipe predicts only the masked ~15%: about 9% more head work than it runs) and
    Adam for LAMB (the same state and memory traffic, without LAMB's norms); the recipe
    accumulates gradients to global batches of 65,536 / 32,768, so the optimizer step is
    amortised: ``DLE_ACCUMULATION`` micro-batches per step."""
    rows = []
    for r in _read(directory, "dle_bert_large_dgxa100_1node.csv"):
        gpus, seq = int(r["gpus"]), int(r["seq_len"])
        for precision, column in (("tf32", "tf32_seq_per_s"), ("fp16", "amp_seq_per_s")):
            micro = DLE_BERT_MICROBATCH[(seq, precision)]
            result = simulate({
                "name": "dle-bert", "cluster": {"preset": "dgx-a100", "nodes": 1},
                "model": {"kind": "transformer", "layers": 24, "hidden": 1024, "heads": 16,
                          "seq_len": seq, "vocab": 30522},
                "precision": precision,
                "training": {"global_batch": gpus * micro * DLE_ACCUMULATION,
                             "microbatch": micro, "optimizer": "adam"},
                "parallelism": {"data": gpus}})
            rows.append(_row("dle_bert_large_dgxa100", f"{gpus} GPU seq {seq} {precision}",
                             result.throughput_samples_per_s, float(r[column]), "seq/s"))
    return rows


def gpipe_table2(directory: Path) -> list[Row]:
    """GPipe Table 2 (TPU, throughput normalised to K=2, M=1) is listed, not simulated: dlsim
    has no AmoebaNet model or TPU v3 profile, and the paper adjusted the batch size per row
    to fit memory without printing it, so the baseline each row divides by is unknown."""
    return [_row("gpipe_table2_tpu", f"{r['model']} K={r['K']} M={r['M']} (not simulated: "
                 "batch per row unknown)", float("nan"), float(r["normalized_throughput"]),
                 "x") for r in _read(directory, "gpipe_table2_tpu.csv")]


TABLES: dict[str, Callable[[Path], list[Row]]] = {
    "zero_memory": zero_memory,
    "nccl_allreduce_busbw_8xA100": nccl_allreduce,
    "pytorch_ddp_benchmark_v100": ddp_v100,
    "megatron_sc21_table1": megatron_sc21,
    "megatron_2020_tp_scaling_dgxa100": megatron_tp_scaling,
    "dle_bert_large_dgxa100": dle_bert_large,
    "gpipe_table2_tpu": gpipe_table2,
}


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
