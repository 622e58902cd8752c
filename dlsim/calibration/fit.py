"""Fits of measured kernel and collective times: the curves a calibration file stores.

Compute kinds use the saturating efficiency of the cost model, eff(f) = max * f / (f + f_half)
at f FLOP per kernel. Its time, launch + f / (peak * eff(f)) = launch + (f + f_half) / R with
R = max * peak, is affine in f, so the fit is a linear least squares on the time with a
non-negative intercept (f_half >= 0): the curve is then monotone non-decreasing in problem
size, as the amortisation of fixed per-kernel work says it must be. Residuals are relative
to the measured time, the error a prediction makes. The ring all-reduce fit is the same
least squares on Thakur et al.'s alpha-beta cost (IJHPCA 2005, §4):
t = 2(N-1) alpha + 2(N-1)/N * G / B.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class AffineFit:
    """t = intercept + slope * x, with the residuals (predicted / measured - 1) in %."""

    intercept: float
    slope: float
    residuals_pct: np.ndarray


def fit_affine(x: np.ndarray, time_s: np.ndarray, offset_s: float = 0.0,
               intercept: bool = True) -> AffineFit:
    """Least squares of relative error for t = offset + a + b x with a >= 0, b > 0.

    Rows are scaled by 1/t so that every point weighs by its relative error. When the free
    intercept comes out negative (or ``intercept`` is False), the constrained optimum has
    a = 0 (the problem is convex), and b is the one-variable least squares.
    """
    x, t = np.asarray(x, dtype=float), np.asarray(time_s, dtype=float)
    if len(x) < 2 or np.any(t <= 0) or np.ptp(x) == 0:
        raise ValueError("an affine fit needs at least two points of different size with "
                         "positive times")
    target = (t - offset_s) / t
    design = np.column_stack([1.0 / t, x / t])
    (a, b), *_ = np.linalg.lstsq(design, target, rcond=None)
    if a < 0 or not intercept:
        a, b = 0.0, float(design[:, 1] @ target / (design[:, 1] @ design[:, 1]))
    if b <= 0:
        raise ValueError("measured times do not grow with problem size; cannot fit a rate")
    predicted = offset_s + a + b * x
    return AffineFit(float(a), float(b), 100.0 * (predicted / t - 1.0))


@dataclass(frozen=True)
class SaturatingFit:
    """eff(f) = rate_flops / peak * f / (f + half_gflop): ``rate_flops`` is the asymptote."""

    rate_flops: float
    half_gflop: float
    residuals_pct: np.ndarray


def fit_saturating(flops: np.ndarray, time_s: np.ndarray, launch_s: float) -> SaturatingFit:
    """Fit the cost model's saturating efficiency to kernels of ``flops`` that took
    ``time_s`` each, of which ``launch_s`` is the per-kernel overhead the cost model adds."""
    f = fit_affine(flops, time_s, launch_s)
    return SaturatingFit(1.0 / f.slope, f.intercept / f.slope / 1e9, f.residuals_pct)


@dataclass(frozen=True)
class RingFit:
    """Per-step latency and bandwidth of a ring all-reduce over a link."""

    latency_s: float
    bandwidth_Bps: float
    residuals_pct: np.ndarray


def fit_ring_allreduce(ranks: np.ndarray, size_bytes: np.ndarray,
                       time_s: np.ndarray) -> RingFit:
    """alpha and B from all-reduce times of G bytes over N ranks (one or several N)."""
    n = np.asarray(ranks, dtype=float)
    g = np.asarray(size_bytes, dtype=float)
    t = np.asarray(time_s, dtype=float)
    steps = 2.0 * (n - 1.0)
    # divide by the step count: t / steps = alpha + (G / N) / B, affine in G / N
    f = fit_affine(g / n, t / steps)
    return RingFit(f.intercept, 1.0 / f.slope, f.residuals_pct)


def fit_bandwidth(size_bytes: np.ndarray, time_s: np.ndarray, launch_s: float) -> AffineFit:
    """A memory-bound kernel's time as the cost model has it, launch + bytes / bandwidth
    (no intercept of its own): ``1 / slope`` is the effective bandwidth in B/s."""
    return fit_affine(size_bytes, time_s, launch_s, intercept=False)
