"""Scaling analysis: Amdahl and USL fits recover the parameters of their own closed forms,
Karp-Flatt recovers Amdahl's serial fraction, and a sweep table is grouped and fitted."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlsim.results.scaling import fit_amdahl, fit_usl, karp_flatt, scaling_analysis

P = np.array([1, 2, 4, 8, 16, 32, 64, 128], dtype=float)


@settings(max_examples=40, deadline=None)
@given(f=st.floats(0.0, 0.999))
def test_amdahl_fit_recovers_f_exactly(f):
    speedup = 1.0 / ((1.0 - f) + f / P)  # Amdahl 1967, written out here independently
    fit = fit_amdahl(P, speedup)
    assert fit.f == pytest.approx(f, abs=1e-9)
    assert fit.limit == pytest.approx(1.0 / (1.0 - f), rel=1e-9)
    if fit.f > 0:
        assert fit.p_half == pytest.approx(f / (1.0 - f), rel=1e-9, abs=1e-9)
    else:  # nothing to halve
        assert fit.p_half is None
    if f > 0.01:  # half the limit is reached at p_half
        assert 1.0 / ((1.0 - f) + f / fit.p_half) == pytest.approx(fit.limit / 2, rel=1e-9)
    assert fit.r2 is None or fit.r2 == pytest.approx(1.0, abs=1e-9)


@settings(max_examples=40, deadline=None)
@given(sigma=st.floats(0.0, 0.9), kappa=st.one_of(st.just(0.0), st.floats(1e-6, 1e-2)))
def test_usl_fit_recovers_sigma_kappa_and_peak(sigma, kappa):
    capacity = P / (1 + sigma * (P - 1) + kappa * P * (P - 1))  # Gunther's USL
    fit = fit_usl(P, capacity)
    assert fit.sigma == pytest.approx(sigma, abs=1e-9)
    assert fit.kappa == pytest.approx(kappa, abs=1e-9)
    if kappa > 0:
        peak = np.sqrt((1 - sigma) / kappa)
        assert fit.p_peak == pytest.approx(peak, rel=1e-6)
        # the peak is a maximum of the closed form
        at = lambda q: q / (1 + sigma * (q - 1) + kappa * q * (q - 1))  # noqa: E731
        assert at(peak) >= max(at(peak * 0.99), at(peak * 1.01))
    elif sigma > 0:
        assert fit.p_peak is None  # throughput rises towards 1/sigma without a peak


def test_usl_fit_keeps_parameters_non_negative():
    capacity = P ** 1.05  # superlinear: the unconstrained fit would make sigma negative
    fit = fit_usl(P, capacity)
    assert fit.sigma >= 0 and fit.kappa >= 0
    assert fit.sigma == 0.0 or fit.kappa == 0.0


@settings(max_examples=30, deadline=None)
@given(f=st.floats(0.0, 0.99))
def test_karp_flatt_recovers_amdahl_serial_fraction(f):
    speedup = 1.0 / ((1.0 - f) + f / P)
    e = karp_flatt(P, speedup)
    assert np.isnan(e[0])
    np.testing.assert_allclose(e[1:], 1.0 - f, atol=1e-9)


def test_scaling_analysis_groups_and_uses_smallest_count_as_base():
    n = np.array([2, 4, 8, 16, 32])
    rows = []
    for algo, (sigma, kappa) in {"ring": (0.05, 0.001), "ps": (0.5, 0.0)}.items():
        p = n / n[0]
        capacity = p / (1 + sigma * (p - 1) + kappa * p * (p - 1))
        for devices, c in zip(n, capacity):
            rows.append({"cluster.devices": devices, "collective.algorithm": algo,
                         "devices": devices, "size_bytes": 1e6, "time_s": devices * 1e6 / c})
    rows.append({"cluster.devices": 64, "collective.algorithm": "ring", "devices": np.nan,
                 "size_bytes": np.nan, "time_s": np.nan, "error": "bad point"})
    table = pd.DataFrame(rows)
    groups = scaling_analysis(table, ["cluster.devices", "collective.algorithm"])
    assert [g.label for g in groups] == ["algorithm=ring", "algorithm=ps"]
    ring, ps = groups
    assert ring.base_devices == 2 and list(ring.points["devices"]) == list(n)
    assert ring.usl.sigma == pytest.approx(0.05, abs=1e-9)
    assert ring.usl.kappa == pytest.approx(0.001, abs=1e-9)
    assert ring.fit_row()["n_peak_devices"] == pytest.approx(
        2 * np.sqrt(0.95 / 0.001), rel=1e-6)
    assert ps.usl.sigma == pytest.approx(0.5, abs=1e-9) and ps.usl.p_peak is None
    np.testing.assert_allclose(ring.points["efficiency"], ring.points["speedup"] / (n / 2))


def test_no_scaling_without_a_device_count():
    table = pd.DataFrame({"training.global_batch": [8, 16], "devices": [8, 8],
                          "throughput_samples_per_s": [1.0, 2.0]})
    assert scaling_analysis(table, ["training.global_batch"]) == []


def test_one_device_count_is_no_curve_and_two_give_amdahl_only():
    def table(devices):
        return pd.DataFrame({"cluster.nodes": devices, "devices": devices,
                             "throughput_samples_per_s": [100.0 * d ** 0.9 for d in devices]})
    assert scaling_analysis(table([8]), ["cluster.nodes"]) == []
    (two,) = scaling_analysis(table([8, 16]), ["cluster.nodes"])
    assert two.usl is None and two.fit_row()["usl_sigma"] is None
    s = 2 ** 0.9  # one point fixes f exactly: 1/S = (1 - f) + f/2
    assert two.amdahl.f == pytest.approx(2 * (1 - 1 / s), rel=1e-12)


def test_r2_is_reported_only_when_points_outnumber_parameters():
    """Amdahl has one parameter and USL two; the base point (speed-up 1) fits any law, so a
    fit through one (Amdahl) or two (USL) more points is exact by construction and its
    R² = 1 says nothing."""
    noisy = np.array([1.0, 1.7, 2.9, 4.1, 5.6])  # not on any one Amdahl or USL curve
    p = np.array([1.0, 2.0, 4.0, 8.0, 16.0])
    assert fit_amdahl(p[:2], noisy[:2]).r2 is None  # two device counts
    assert fit_amdahl(p[:3], noisy[:3]).r2 is not None
    assert fit_usl(p[:3], noisy[:3]).r2 is None  # three device counts
    assert fit_usl(p[:4], noisy[:4]).r2 is not None
    assert fit_amdahl(p, noisy).r2 < 1.0
