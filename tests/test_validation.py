"""`dlsim validate`: rows and per-table errors, pinned at the error reached so far.

The bounds below are the errors the simulator actually reaches today (stated, not chosen so
that anything passes); a change that makes a prediction worse fails here. Issue 4's protocol
and latency model is expected to tighten the nccl-tests bounds to 15% for >= 1 MiB.
"""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from dlsim.cli import app
from dlsim.validation import run_validation, table_errors


@pytest.fixture(scope="module")
def rows():
    return run_validation()


def test_zero_memory_table_within_printed_rounding(rows):
    zero = rows[rows.table == "zero_memory"]
    assert len(zero) == 54
    # worst case 7.5B, dp=1024, stage 3: 16*7.5/1024 = 0.1172 GB printed as 0.12 (2.3%)
    assert zero.error_pct.abs().max() < 2.4


def test_nccl_busbw_error_does_not_grow(rows):
    nccl = rows[rows.table == "nccl_allreduce_busbw_8xA100"]
    assert len(nccl) == 24
    large = nccl[nccl.measured >= 36.22]  # rows from 1 MiB up
    # reached on 2026-11-23 from link figures alone: >= 1 MiB median 32.1%, worst 54.3%;
    # all sizes median 50.2%, worst 56.1%
    assert large.error_pct.abs().median() <= 32.2
    assert large.error_pct.abs().max() <= 54.4
    assert nccl.error_pct.abs().max() <= 56.2


def test_ddp_benchmark_error_does_not_grow(rows):
    ddp = rows[rows.table == "pytorch_ddp_benchmark_v100"]
    assert len(ddp) == 10
    # reached on 2026-11-23 from published figures (V100 uses the A100 efficiency curve until
    # calibrated): median 14.8%, worst 20.0% (resnet101 on 1 GPU); all predictions slow
    assert ddp.error_pct.abs().median() <= 14.8
    assert ddp.error_pct.abs().max() <= 20.0
    # the shape: 16 GPUs cost little more than 1, as measured (0.104 vs 0.100 s)
    r50 = ddp[ddp.case.str.startswith("resnet50")].set_index("case").predicted
    assert r50["resnet50 16 GPUs"] / r50["resnet50 1 GPUs"] < 1.05


def test_per_table_summary(rows):
    summary = table_errors(rows)
    assert list(summary.table) == ["zero_memory", "nccl_allreduce_busbw_8xA100",
                                   "pytorch_ddp_benchmark_v100"]
    assert summary.rows.tolist() == [54, 24, 10]
    nccl = rows[rows.table == "nccl_allreduce_busbw_8xA100"].error_pct.abs()
    row = summary.set_index("table").loc["nccl_allreduce_busbw_8xA100"]
    assert row.median_abs_error_pct == pytest.approx(nccl.median())
    assert row.worst_abs_error_pct == pytest.approx(nccl.max())


def test_validate_cli_json_and_report(tmp_path):
    res = CliRunner().invoke(app, ["validate", "--json", "--out", str(tmp_path)])
    assert res.exit_code == 0, res.output
    records = json.loads(res.output)
    assert set(records[0]) == {"table", "case", "predicted", "measured", "error_pct"}
    assert (tmp_path / "validation" / "index.html").exists()


def test_validate_missing_data_is_a_clear_error(tmp_path):
    res = CliRunner().invoke(app, ["validate", "--data", str(tmp_path / "nope")])
    assert res.exit_code == 2 and "--data" in res.output
