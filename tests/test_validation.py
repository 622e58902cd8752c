"""`dlsim validate`: rows and per-table errors, pinned at the error reached so far.

The bounds below are the errors the simulator actually reaches today (stated, not chosen so
that anything passes), rounded up at the second decimal; a change that makes a prediction
worse fails here.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.validation import MODERN, TABLES, run_validation, table_errors

# the Hopper-era tables take minutes: tests/validation/test_modern.py runs them
A100_ERA = [name for name in TABLES if name not in MODERN]


@pytest.fixture(scope="module")
def rows():
    return run_validation(tables=A100_ERA)


def test_zero_memory_table_within_printed_rounding(rows):
    zero = rows[rows.table == "zero_memory"]
    assert len(zero) == 54
    # worst case 7.5B, dp=1024, stage 3: 16*7.5/1024 = 0.1172 GB printed as 0.12 (2.3%)
    assert zero.error_pct.abs().max() < 2.4


def test_nccl_busbw_error_does_not_grow(rows):
    nccl = rows[rows.table == "nccl_allreduce_busbw_8xA100"]
    assert len(nccl) == 24
    large = nccl[nccl.measured >= 36.22]  # rows from 1 MiB up
    # reached on 2026-11-23 with NCCL's protocol model (dlsim.network.protocol) and its Ampere
    # LL cap (87.7 GB/s bus bandwidth, tuning.cc llMaxBws): >= 1 MiB median 19.8%, worst
    # 51.4% (16 MiB; mid sizes come out fast: NCCL's own tuner model, which this follows, is
    # that optimistic there); was 29.5% / 51.4% without the LL cap, 32.1% / 54.3% with
    # per-hop link latencies
    assert large.error_pct.abs().median() <= 19.78
    assert large.error_pct.abs().max() <= 51.39
    # the large-message plateau comes from NVLink payload efficiency (20 of 25 GB/s per link);
    # reached: worst 4.42%
    huge = nccl[nccl.measured >= 228]
    assert huge.error_pct.abs().max() <= 4.42


def test_nccl_small_messages_are_latency_bound(rows):
    """Below 1 MiB the measured time is flat (busbw doubles with the size) and so is the
    prediction. The level is not reached: NCCL's LL latency (6.6 + 14 x 0.6 us) plus a 4 us
    launch is 19 us against the 43 us measured on the Azure VM, so small sizes come out
    2.1-2.4x fast (worst 135.6%; the earlier per-hop Simple latencies were 2x slow)."""
    nccl = rows[rows.table == "nccl_allreduce_busbw_8xA100"].set_index("case")
    small = ["1K", "2K", "4K", "8K", "16K", "32K", "65K"]
    size = {"1K": 1024, "65K": 66560}
    time_ratio = {col: (size["65K"] / nccl.loc["65K", col]) / (size["1K"] / nccl.loc["1K", col])
                  for col in ("predicted", "measured")}
    assert time_ratio["measured"] < 1.1
    assert time_ratio["predicted"] < 1.1
    assert nccl.loc[small].error_pct.abs().max() <= 135.54


def test_ddp_benchmark_error_does_not_grow(rows):
    ddp = rows[rows.table == "pytorch_ddp_benchmark_v100"]
    assert len(ddp) == 10
    # reached on 2026-11-23 from published figures (V100 borrows the A100 efficiency curve,
    # its half-efficiency point scaled to the V100's fp32 peak): median 5.9%, worst 9.5%
    # (resnet50 on 8 GPUs); all predictions fast. Within the 10% the issue asks for.
    assert ddp.error_pct.abs().median() <= 5.90
    assert ddp.error_pct.abs().max() <= 9.53
    # the shape: 16 GPUs cost little more than 1, as measured (0.104 vs 0.100 s)
    r50 = ddp[ddp.case.str.startswith("resnet50")].set_index("case").predicted
    assert r50["resnet50 16 GPUs"] / r50["resnet50 1 GPUs"] < 1.05


def test_megatron_sc21_table1_error_does_not_grow(rows):
    """TFLOP/s per A100 with t, p (interleaved), d and full recomputation, micro-batch and
    virtual stages from the paper's run_table_1.sh."""
    sc21 = rows[rows.table == "megatron_sc21_table1"]
    assert len(sc21) == 5
    simulated = sc21.dropna(subset=["predicted"])
    # the 529.6B row (35 stages x 280 micro-batches x 3 chunks) is listed, not simulated
    assert len(simulated) == 4 and sc21.predicted.isna().iloc[-1]
    # reached on 2026-11-23: 1.7B -1.6%, 7.5B -2.6%, 39.1B +3.4%, 145.6B +9.7%
    # (median 3.0%, worst 9.7%): large pipelines come out fast
    assert simulated.error_pct.abs().median() <= 2.99
    assert simulated.error_pct.abs().max() <= 9.73


def test_megatron_tp_scaling_error_does_not_grow(rows):
    tp = rows[rows.table == "megatron_2020_tp_scaling_dgxa100"]
    assert len(tp) == 4
    # reached on 2026-11-23: -4.6%, -9.3%, -13.1%, -15.5% for t = 1, 2, 4, 8 (median 11.2%,
    # worst 15.5%): all fast, more so the more the tensor all-reduces weigh
    assert tp.error_pct.abs().median() <= 11.20
    assert tp.error_pct.abs().max() <= 15.49
    # the shape: as the model grows 8x over 8x the GPUs, iteration time varies no more
    # than measured (1,343 / 1,026 ms = 1.31x)
    assert tp.predicted.max() / tp.predicted.min() < 1.31


def test_dle_bert_error_does_not_grow(rows):
    """BERT-large pre-training sequences/s on one DGX A100, TF32 and AMP, 1 and 8 GPUs."""
    bert = rows[rows.table == "dle_bert_large_dgxa100"]
    assert len(bert) == 8
    # reached on 2026-11-23: seq 128 +12% to +24% (fast), seq 512 -36% to -40% (slow: the
    # A100 profile's attention runs at plain PyTorch's published 46 TFLOP/s, the recipe's
    # fused kernels do better, and attention weighs 4x more at s = 512); median 29.8%
    assert bert.error_pct.abs().median() <= 29.78
    assert bert.error_pct.abs().max() <= 39.61
    # 8 GPUs over 1: the data-parallel speed-up is within 2.5% of measured in every row
    # (reached: 1.1% to 2.3%, all slightly better than measured)
    by = bert.assign(gpus=bert.case.str[0], what=bert.case.str[6:]).set_index(["what", "gpus"])
    scale = by.xs("8", level="gpus")[["predicted", "measured"]] / by.xs("1", level="gpus")[
        ["predicted", "measured"]]
    ratio = scale.predicted / scale.measured
    assert ((ratio - 1).abs() <= 0.025).all(), ratio


def test_h200_training_step_errors_do_not_grow(rows):
    """Real torch steps on one H200 (eager and torch.compile'd, bf16 autocast, fused AdamW,
    SDPA on cuDNN), held out from every fit, predicted with training.autocast. Reached on
    2026-12-04: every row too fast, the profile -8.5% to -25.2% (median 17.3%), with the
    H200's calibration -7.1% to -24.0% (median 16.1%); compiled rows are closer, the rest is
    plain PyTorch's unfused elementwise kernels, its other copies and the fused AdamW's rate,
    which dlsim does not price (docs/questions/30-h200-training-steps.md)."""
    for table, median, worst in (("h200_training_steps", 17.29, 25.17),
                                 ("h200_training_steps_calibrated", 16.06, 24.01)):
        steps = rows[rows.table == table]
        assert len(steps) == 8 and (steps.error_pct < 0).all()
        assert steps.error_pct.abs().median() <= median and steps.error_pct.abs().max() <= worst
        error = {tuple(c.split(" ", 1)): e for c, e in zip(steps.case, steps.error_pct)}
        assert all(abs(error["compiled", case]) < abs(error["eager", case])
                   for recipe, case in error if recipe == "compiled")
    memory = rows[rows.table == "h200_training_memory"]
    # torch's allocator peak against dlsim's memory per device, with autocast's fp32 weights
    # and 16-bit copies: the 8B blocks -2.9% to -4.9%, the smaller models -22% to -27%
    # (eager PyTorch saves more activations than TE's fused kernels): median 13.4%
    assert memory.error_pct.abs().median() <= 13.39 and memory.error_pct.abs().max() <= 26.92


def test_h200_measurements_repeat_across_machines():
    """Run 1 and run 2 measured the eager steps on two lent machines: within 1.5%."""
    from dlsim.data import VALIDATION
    from dlsim.validation.reading import read_table

    eager = [r for r in read_table(VALIDATION, "h200_training_steps.csv")
             if r["recipe"] == "eager"]
    by_run = {(r["run"], r["case"]): float(r["step_s"]) for r in eager}
    cases = {r["case"] for r in eager}
    assert len(cases) == 4
    assert all(abs(by_run[("2", c)] / by_run[("1", c)] - 1) < 0.015 for c in cases)


def test_gpipe_table_is_listed_not_simulated(rows):
    gpipe = rows[rows.table == "gpipe_table2_tpu"]
    assert len(gpipe) == 18 and gpipe.predicted.isna().all()
    assert gpipe.case.str.contains("not simulated").all()


def test_per_table_summary(rows):
    summary = table_errors(rows)
    assert list(summary.table) == ["zero_memory", "nccl_allreduce_busbw_8xA100",
                                   "pytorch_ddp_benchmark_v100", "megatron_sc21_table1",
                                   "megatron_2020_tp_scaling_dgxa100",
                                   "dle_bert_large_dgxa100", "gpipe_table2_tpu",
                                   "nccl_h100_other_sources", "multi_ring_closed_forms",
                                   "h200_training_steps", "h200_training_steps_calibrated",
                                   "h200_training_memory"]
    assert summary.rows.tolist() == [54, 24, 10, 5, 4, 8, 18, 125, 2, 8, 8, 8]
    nccl = rows[rows.table == "nccl_allreduce_busbw_8xA100"].error_pct.abs()
    row = summary.set_index("table").loc["nccl_allreduce_busbw_8xA100"]
    assert row.median_abs_error_pct == pytest.approx(nccl.median())
    assert row.worst_abs_error_pct == pytest.approx(nccl.max())


def test_validate_cli_json_and_report(tmp_path):
    fast = [arg for name in A100_ERA for arg in ("--table", name)]
    res = CliRunner().invoke(app, ["validate", "--json", "--out", str(tmp_path), *fast])
    assert res.exit_code == 0, res.output
    records = json.loads(res.output)
    assert set(records[0]) == {"table", "case", "predicted", "measured", "error_pct"}
    assert (tmp_path / "validation" / "index.html").exists()


def test_validate_unknown_table_is_a_clear_error():
    res = CliRunner().invoke(app, ["validate", "--table", "nemo"])
    assert res.exit_code == 2 and "--table" in res.output and "nemo_performance" in res.output


def test_validate_missing_data_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["validate", "--data", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--data" in res.output
