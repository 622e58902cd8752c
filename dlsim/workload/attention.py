"""Fused attention kernels: FlashAttention-2/3 and torch SDPA, priced from a published fit.

Unfused (``eager``) attention runs QK^T, softmax and AV as separate kernels, the s x s scores
in memory, at the profile's constant ``efficiency.attention``. A fused kernel (Dao et al.,
FlashAttention-2, arXiv 2307.08691; Shah et al., FlashAttention-3, arXiv 2407.08608) tiles
Q, K and V through on-chip memory and keeps only the output and one logsumexp per row, so
its efficiency depends on the work per thread block, which grows with the sequence length
s and the head dim d:

    eff(d, s) = forward_max[d] * s / (s + half),  half = seq_half, or causal_seq_half masked

of the 16-bit peak in the forward pass and ``backward_ratio`` times that in the backward.
FLOPs are the FlashAttention papers' convention: 4·s²·d per head forward (2·s²·(d_qk + d_v)
for unequal query/key and value dims), half of it causal, because the kernel skips the
masked tiles (eager computes the whole square); the backward is 2.5x the forward (it
recomputes QK^T: five matrix products against the forward's two). ``forward_max`` is
interpolated linearly in log2(d) between the fitted head dims and held beyond them. The
constants are the device profile's ``attention_kernels.fits`` (h100-sxm5-80gb.yaml: fitted
by docs/analysis/flash_attention.py to shared/validation/flashattention_h100.csv).

A sliding window of w keys (Mistral 7B, gpt-oss's banded layers of 128: Beltagy et al.
2020, Longformer §3.1; FlashAttention-2's ``window_size`` since flash-attn 2.3 skips the key
tiles outside the band) leaves each query the w keys up to itself: s·w − w²/2 pairs in the
same convention (s²/2 at w = s), so a 128-token band over 4,096 tokens is 1/16 of the causal
work. Its efficiency is the fit's at ``seq_len`` = w: each query tile walks w keys, as in a
causal sequence of w tokens (an approximation: the fit has no banded points). Unfused
attention masks the whole square and does no less work.

``sdpa`` is torch.nn.functional.scaled_dot_product_attention: on CUDA with 16-bit inputs
it dispatches to its FlashAttention-2 backend (PyTorch 2.2 release notes, Jan 2024: "SDPA
now supports FlashAttention-2"), so the profile maps it to the fa2 fit. Fused kernels run
in 16 bit only: an fp32 run gets eager attention unless it asks for a fused one, which is
an input error.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from dlsim.contract.errors import ScenarioError
from dlsim.hardware.profiles import AttentionFit, AttentionKernel, DeviceProfile

if TYPE_CHECKING:
    from dlsim.contract.scenario import ModelSpec

BACKWARD_FLOPS = 2.5  # FlashAttention backward: five matrix products against two forward
FUSED_DTYPES = ("fp16", "bf16", "fp8")  # fp8 runs still keep attention in 16 bit


@dataclass(frozen=True)
class FusedAttention:
    """What a fused attention kernel's efficiency depends on (``Kernel.fused``)."""

    kernel: AttentionKernel  # flash or sdpa
    head_dim: float  # (d_qk + d_v) / 2: their mean where queries and values differ (MLA)
    seq_len: int
    causal: bool
    backward: bool = False


def fused_flops(b: int, s: int, heads: int, d_qk: int, d_v: int, causal: bool,
                window: int | None = None) -> float:
    """Forward FLOPs of fused attention: 2·b·a·(d_qk + d_v) per query-key pair, s² pairs,
    s²/2 causal, s·w − w²/2 causal within a sliding window of w < s keys."""
    per_pair = 2.0 * b * heads * (d_qk + d_v)
    if window is not None and window < s:
        if not causal:
            raise ValueError("a sliding window is built for causal attention only")
        return per_pair * (s * window - window * window / 2)
    return per_pair * s * s / (2 if causal else 1)


def forward_max(fit: AttentionFit, head_dim: float) -> float:
    """``fit.forward_max`` at ``head_dim``: log2-linear between fitted dims, held outside."""
    dims = sorted(fit.forward_max)
    if head_dim <= dims[0]:
        return fit.forward_max[dims[0]]
    for lo, hi in zip(dims, dims[1:]):
        if head_dim <= hi:
            w = math.log2(head_dim / lo) / math.log2(hi / lo)
            return fit.forward_max[lo] * (1 - w) + fit.forward_max[hi] * w
    return fit.forward_max[dims[-1]]


def fit_of(device: DeviceProfile, kernel: AttentionKernel) -> AttentionFit:
    family = device.attention_kernels.family(kernel)
    if family is None:
        raise ScenarioError(f"device {device.name} has no published {kernel} attention "
                            f"kernel; use attention: {_available(device)}.",
                            field="model.attention")
    return device.attention_kernels.fits[family]


def peak_16bit(device: DeviceProfile) -> float:
    """The 16-bit tensor peak the fits are fractions of (bf16, else fp16), FLOP/s."""
    return device.peak_flops("bf16" if "bf16" in device.peak_tflops else "fp16")


def efficiency(fit: AttentionFit, head_dim: float, seq_len: int, causal: bool,
               backward: bool = False) -> float:
    """Fraction of the 16-bit peak a kernel of ``fit`` reaches (module docstring)."""
    half = fit.causal_seq_half if causal else fit.seq_half
    eff = forward_max(fit, head_dim) * seq_len / (seq_len + half)
    return eff * (fit.backward_ratio if backward else 1.0)


def fused_efficiency(call: FusedAttention, device: DeviceProfile) -> float:
    """Fraction of the 16-bit peak ``call`` reaches on ``device``."""
    return efficiency(fit_of(device, call.kernel), call.head_dim, call.seq_len, call.causal,
                      call.backward)


def attention_kernel(spec: ModelSpec, device: DeviceProfile | None,
                     dtype: str) -> AttentionKernel:
    """The attention kernel a run uses: the scenario's ``attention`` kernel, else the
    device's default (eager without a device, in fp32, or where no fused kernel is
    published); a fused kernel the device lacks, or in fp32, is an input error."""
    requested = spec.attention.kernel if spec.attention is not None else None
    if requested is None:
        if device is None or dtype not in FUSED_DTYPES:
            return "eager"
        return device.attention_kernels.default
    if requested != "eager":
        if dtype not in FUSED_DTYPES:
            raise ScenarioError(f"attention: {requested} runs in 16 bit; precision {dtype} "
                                "needs attention: eager.", field="model.attention")
        if device is not None:
            fit_of(device, requested)
    return requested


def _available(device: DeviceProfile) -> str:
    kernels = device.attention_kernels
    return " or ".join(k for k in ("flash", "sdpa") if kernels.family(k)) + (
        " or eager" if kernels.flash or kernels.sdpa else "eager")
