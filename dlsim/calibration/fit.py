"""Fits of measured kernel and collective times: the curves a calibration file stores.

Compute kinds use the saturating efficiency of the cost model, eff(f) = max * f / (f + f_half)
at f FLOP per kernel. Its time, launch + f / (peak * eff(f)) = launch + (f + f_half) / R with
R = max * peak, is affine in f, so the fit is a least squares of an affine time with a
non-negative intercept (f_half >= 0): the curve is then monotone non-decreasing in problem
size, as the amortisation of fixed per-kernel work says it must be. The fit minimises the
log of predicted over measured time; residuals are stored as predicted / measured - 1. The
ring all-reduce fit is the same least squares on Thakur et al.'s alpha-beta cost (IJHPCA
2005, §4):
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


def fit_affine(x: np.ndarray, time_s: np.ndarray, offset_s: float = 0.0) -> AffineFit:
    """Least squares of log error for t = offset + a + b x with a >= 0, b > 0.

    The log of predicted / measured weighs a prediction twice too slow and twice too fast
    alike, which the relative error does not (it cannot fall below -100%), so kernels whose
    speeds spread over an order of magnitude get an unbiased middle. Solved by scipy's
    bounded trust-region least squares in units of the median time and size.
    """
    from scipy.optimize import least_squares

    x, t = np.asarray(x, dtype=float), np.asarray(time_s, dtype=float)
    if len(x) < 2 or np.any(t <= 0) or np.ptp(x) == 0:
        raise ValueError("an affine fit needs at least two points of different size with "
                         "positive times")
    t_unit, x_unit = float(np.median(t)), float(np.median(x)) or float(np.max(x))

    def predicted(p: np.ndarray) -> np.ndarray:
        return offset_s + t_unit * (p[0] + p[1] * x / x_unit)

    def log_residuals(p: np.ndarray) -> np.ndarray:
        return np.log(predicted(p) / t)

    free, *_ = np.linalg.lstsq(np.column_stack([np.ones_like(x), x / x_unit]) * t_unit / t[:, None],
                               (t - offset_s) / t, rcond=None)
    start = np.maximum(free, [0.0, 1e-6])
    fit = least_squares(log_residuals, start, bounds=([0.0, 1e-12], np.inf),
                        xtol=1e-14, ftol=1e-14, gtol=1e-14)
    if fit.x[1] <= 1e-9:
        raise ValueError("measured times do not grow with problem size; cannot fit a rate")
    intercept = t_unit * fit.x[0] if fit.x[0] > 1e-9 else 0.0  # on the bound, not 1e-30
    return AffineFit(intercept, t_unit * fit.x[1] / x_unit,
                     100.0 * (predicted(fit.x) / t - 1.0))


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


@dataclass(frozen=True)
class FusedAttentionFit:
    """A fused attention kernel's constants in ``dlsim.workload.attention``'s form (forward
    efficiency forward_max[d]·s/(s + half) of the 16-bit peak, ``half`` the causal one when
    masked, the backward at ``backward_ratio`` times it) with the residuals in %."""

    forward_max: dict[int, float]
    seq_half: float
    causal_seq_half: float
    backward_ratio: float
    residuals_pct: np.ndarray


def fit_fused_attention(head_dim: np.ndarray, seq_len: np.ndarray, causal: np.ndarray,
                        backward: np.ndarray, flops: np.ndarray, time_s: np.ndarray,
                        peak_flops: float, launch_s: float = 0.0) -> FusedAttentionFit:
    """The constants that predict kernels taking ``time_s`` = launch + flops / (peak · eff):
    least squares of the log of predicted over measured time (as ``fit_affine``), in log
    parameters so that every constant stays positive, forward_max at most 1 and the
    backward ratio at most 2 (``hardware.profiles.AttentionFit``'s bounds)."""
    from scipy.optimize import least_squares

    d, s = np.asarray(head_dim, dtype=int), np.asarray(seq_len, dtype=float)
    masked, back = np.asarray(causal, dtype=bool), np.asarray(backward, dtype=bool)
    f, t = np.asarray(flops, dtype=float), np.asarray(time_s, dtype=float)
    dims = sorted(set(d.tolist()))
    if len(t) < len(dims) + 3 or not masked.any() or masked.all() or not back.any():
        raise ValueError("a fused attention fit needs forward and backward points, causal "
                         "and not, more than its constants")
    column = np.array([dims.index(x) for x in d])

    def predicted(p: np.ndarray) -> np.ndarray:
        top = np.exp(p[column])
        half = np.exp(np.where(masked, p[len(dims) + 1], p[len(dims)]))
        eff = top * s / (s + half) * np.where(back, np.exp(p[len(dims) + 2]), 1.0)
        return launch_s + f / (peak_flops * eff)

    measured_eff = f / (peak_flops * np.maximum(t - launch_s, 1e-12))
    start = np.array([np.log(min(measured_eff[column == i].max(), 1.0)) for i in
                      range(len(dims))] + [np.log(500.0), np.log(1000.0), np.log(0.8)])
    upper = np.array([0.0] * len(dims) + [np.inf, np.inf, np.log(2.0)])

    def log_residuals(p: np.ndarray) -> np.ndarray:
        return np.log(predicted(p) / t)

    fit = least_squares(log_residuals, np.minimum(start, upper - 1e-9),
                        bounds=(-np.inf, upper), xtol=1e-14, ftol=1e-14, gtol=1e-14)
    p = fit.x
    return FusedAttentionFit({dim: float(np.exp(p[i])) for i, dim in enumerate(dims)},
                             float(np.exp(p[len(dims)])), float(np.exp(p[len(dims) + 1])),
                             float(np.exp(p[len(dims) + 2])),
                             100.0 * (predicted(p) / t - 1.0))
