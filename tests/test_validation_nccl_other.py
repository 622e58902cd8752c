"""``dlsim validate``'s nccl_h100_other_sources table: NVLS and Ring bus bandwidth on H100,
H200 and B200 nodes, fitted on NVIDIA's DGX H100 sample only. The bounds are the errors
reached (rounded up in the third digit), so a change that makes any of them worse fails."""

from __future__ import annotations

import pandas as pd
import pytest

from dlsim.validation import DEFAULT_DIR, TABLES


@pytest.fixture(scope="module")
def rows() -> pd.DataFrame:
    return pd.DataFrame(TABLES["nccl_h100_other_sources"](DEFAULT_DIR))


def _abs_error(rows: pd.DataFrame, *marks: str) -> pd.Series:
    picked = rows.predicted.notna()
    for mark in marks:
        picked &= rows.case.str.contains(mark, regex=False)
    return rows[picked].error_pct.abs()


def test_every_row_is_simulated_or_listed_with_its_reason(rows):
    assert len(rows) == 125
    listed = rows[rows.predicted.isna()]
    assert len(listed) == 79 and listed.case.str.contains("not simulated: ").all()


def test_the_fitted_rows_are_the_dgx_h100_sample_from_4_mib(rows):
    fitted = rows[rows.case.str.contains("(fitted)", regex=False)]
    assert len(fitted) == 13 and fitted.case.str.startswith("NVIDIA H100").all()
    error = fitted.error_pct.abs()
    assert error.median() <= 1.11 and error.max() <= 8.57  # reached 1.10 / 8.565 (4 MiB)


@pytest.mark.parametrize("hardware, algorithm, median, worst", [
    ("H200", "auto", 0.46, 1.72), ("H200", "ring", 1.52, 1.69),
    ("B200", "auto", 2.59, 6.76), ("B200", "ring", 5.98, 6.67)])
def test_held_out_h200_and_b200_tables_within_the_target(rows, hardware, algorithm, median,
                                                         worst):
    """The 8 GiB tables on 4-8 GPUs, NCCL's default pick (NVLS from 5 GPUs) and NVLS off:
    the issue's target is 10%; the errors reached are the bounds."""
    error = _abs_error(rows, f"8x {hardware} ", f" {algorithm} (held out)")
    assert len(error) == 5
    assert error.median() <= median and error.max() <= worst


def test_b200_torch_sweep_is_reported_with_its_error(rows):
    """torch's all_reduce_bench.py on p6-b200 (one node): within 2.3% at 8-16 GiB, 11% at
    1-4 GiB and far slower than NVLS at 4-64 MiB (76 GB/s at 4 MiB, where nccl-tests on an
    H100 reaches 135): not nccl-tests, so outside the target; bounds are the errors reached."""
    error = rows[rows.case.str.contains("torch bench")].set_index("case").error_pct
    assert len(error) == 13
    big = [c for c in error.index if " 8 GiB" in c or " 16 GiB" in c]
    assert error[big].abs().max() <= 2.21
    assert error.abs().max() <= 143.7
