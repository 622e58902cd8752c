"""Calibration files: what ``dlsim calibrate`` measured and fitted on one device, and how it
overlays a hardware profile.

A file is ``calibration/<fingerprint>.json``. It holds the device's identity (fingerprint,
CPU model or GPU name, cores, threads, driver and torch versions, date, load average), every
raw measurement (median and IQR of its repeats) and the fitted curves with their residuals.
Simulations only look it up (as Vidur caches its profiles); nothing is re-measured. A
calibration is never applied silently to a device it was not measured on: its ``profile``
must be the simulated device profile, and measuring code checks the host fingerprint.
This module needs no torch.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dlsim.contract.errors import ScenarioError
from dlsim.data import ROOT
from dlsim.hardware.profiles import AttentionFit, Curve, DeviceProfile

FORMAT_VERSION = 1


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class HostInfo(_Record):
    """Who measured: enough to recognise the same device again, and to reproduce the run."""

    kind: str                    # cpu or cuda
    name: str                    # CPU model or GPU name
    cores: int                   # logical CPUs of the host
    threads: int                 # torch.set_num_threads during the measurements
    isa: str = ""                # torch.backends.cpu.get_cpu_capability(), e.g. AVX2
    clock_MHz: float = 0.0       # /proc/cpuinfo at calibration time
    driver: str = ""             # CUDA driver / runtime, empty on CPU
    torch: str
    python: str
    platform: str


class Measurement(_Record):
    """One microbenchmark point: the median and interquartile range of its repeats."""

    op: str                      # matmul, matmul_bwd, conv2d, sdpa, copy, launch, ...
    kind: str                    # the cost model's kind: gemm, conv, attention, memory, ...
    dtype: str
    shape: str
    flops: float = 0.0           # counted as dlsim.workload.model counts them
    bytes: float = 0.0
    ranks: int = 1               # processes taking part (collectives)
    median_s: float = Field(gt=0)
    iqr_s: float = Field(ge=0)
    repeats: int = Field(ge=1)


class CurveFit(_Record):
    """A fitted efficiency curve (the cost model's form) with its residuals."""

    max: float = Field(gt=0, le=1)
    half_gflop: float = Field(ge=0)
    rate_tflops: float = Field(gt=0)       # the asymptote, max * peak
    points: int
    residuals_pct: list[float]
    median_abs_residual_pct: float


class AttentionFitRecord(_Record):
    """A fused attention backend's fitted constants (``fit.fit_fused_attention``; the form of
    ``hardware.profiles.AttentionFit``) with its residuals."""

    backend: str                 # torch's SDPA backend measured: flash (FA2) or cudnn
    forward_max: dict[int, float]
    seq_half: float = Field(gt=0)
    causal_seq_half: float = Field(gt=0)
    backward_ratio: float = Field(gt=0, le=2)
    points: int
    residuals_pct: list[float]
    median_abs_residual_pct: float


class LinkFit(_Record):
    """Loopback all-reduce across local processes, as a link: per-step latency and
    bandwidth of a ring (fit.fit_ring_allreduce). ``link`` is fitted to DDP's per-bucket
    work (copy the gradients into the bucket, all-reduce, divide by the world size, copy
    back: PyTorch's default reducer), ``allreduce_link`` to the bare collective."""

    backend: str
    ranks: list[int]
    latency_us: float = Field(ge=0)
    bandwidth_GBps: float = Field(gt=0)
    residuals_pct: list[float]
    median_abs_residual_pct: float


class Calibration(_Record):
    version: int = FORMAT_VERSION
    fingerprint: str
    profile: str                 # the hardware profile this calibration overlays
    host: HostInfo
    date: str                    # ISO 8601, UTC
    load_average: list[float]    # 1, 5 and 15 minute load when the run started
    quick: bool
    clock: str                   # cpu: process CPU time (one thread on a CPU); wall otherwise
    duration_s: float
    peak_tflops: dict[str, float]
    peak_source: str             # how the peak was derived
    memory_bandwidth_GBps: float = Field(gt=0)
    memory_efficiency: float = Field(gt=0, le=1)
    memory_residuals_pct: list[float]
    kernel_launch_us: float = Field(ge=0)
    # AdamW's step over the memory bandwidth above (None: not measured)
    optimizer_efficiency: float | None = Field(default=None, gt=0, le=1)
    optimizer_residuals_pct: list[float] = Field(default_factory=list)
    curves: dict[str, CurveFit]  # "<kind>.<dtype>" -> curve
    # fused attention kernel family (fa2, cudnn) -> its fit, overlaying the profile's fits
    attention_fits: dict[str, AttentionFitRecord] = Field(default_factory=dict)
    link: LinkFit | None = None            # DDP's per-bucket all-reduce: what training pays
    allreduce_link: LinkFit | None = None  # the bare all-reduce, as nccl-tests would time it
    skipped: dict[str, str] = Field(default_factory=dict)   # what was not measured, and why
    measurements: list[Measurement]
    allreduce: list[Measurement] = Field(default_factory=list)


def resolve(path: str | Path) -> Path:
    """A calibration path as given, or relative to dlsim's bundled data (where calibration/
    is: the checkout, or the installed package; dlsim/data.py)."""
    p = Path(path)
    if p.exists() or p.is_absolute():
        return p
    return ROOT / p


def load(path: str | Path) -> Calibration:
    """Read and validate a calibration file; problems are input errors naming the file."""
    p = resolve(path)
    try:
        return Calibration.model_validate(json.loads(p.read_text()))
    except OSError as exc:
        raise ScenarioError(f"cannot read the calibration file: {exc.strerror}.",
                            file=str(path)) from None
    except (json.JSONDecodeError, ValidationError) as exc:
        raise ScenarioError(f"not a dlsim calibration file: {exc}".rstrip(".") + ".",
                            file=str(path)) from None


def save(calibration: Calibration, directory: Path) -> Path:
    """Write ``directory/<fingerprint>.json`` atomically (temporary file, then rename)."""
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"{calibration.fingerprint}.json"
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=directory)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(calibration.model_dump_json(indent=1) + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def check_fingerprint(calibration: Calibration, fingerprint: str, force: bool = False,
                      path: str | None = None, field: str | None = None) -> None:
    """Refuse a calibration measured on another device unless ``force``."""
    if force or calibration.fingerprint == fingerprint:
        return
    raise ScenarioError(
        f"this calibration was measured on another device: {calibration.host.name} "
        f"({calibration.host.cores} cores, {calibration.host.threads} threads, fingerprint "
        f"{calibration.fingerprint}), not on this one (fingerprint {fingerprint}); its "
        f"efficiency curves describe that device only. Run `dlsim calibrate` here to "
        f"measure this device, or pass --force to use it anyway.", file=path, field=field)


def overlay(device: DeviceProfile, calibration: Calibration, force: bool = False,
            path: str | None = None, field: str | None = None) -> DeviceProfile:
    """``device`` with the measured peak, memory bandwidth, launch overhead, curves and
    fused attention fits.

    The calibration must have been made for this profile (``calibration.profile``); another
    profile is refused unless ``force``, since it describes different silicon.
    """
    if device.name != calibration.profile and not force:
        raise ScenarioError(
            f"this calibration describes {calibration.host.name} (fingerprint "
            f"{calibration.fingerprint}) as profile '{calibration.profile}', but the scenario "
            f"simulates '{device.name}'; a calibration is never applied to another device. "
            f"Use device '{calibration.profile}', calibrate the device you mean, or set "
            f"force_calibration: true (--force) to apply it anyway.", file=path, field=field)
    eff = device.efficiency.model_copy(update={
        "memory": calibration.memory_efficiency,
        "optimizer": calibration.optimizer_efficiency,
        "curves": {k: Curve(max=c.max, half_gflop=c.half_gflop)
                   for k, c in calibration.curves.items()}})
    kernels = device.attention_kernels
    measured = {family: AttentionFit(forward_max=f.forward_max, seq_half=f.seq_half,
                                     causal_seq_half=f.causal_seq_half,
                                     backward_ratio=f.backward_ratio)
                for family, f in calibration.attention_fits.items()}
    return device.model_copy(update={
        "attention_kernels": kernels.model_copy(update={"fits": kernels.fits | measured}),
        "display_name": f"{calibration.host.name} (calibrated {calibration.date[:10]})",
        "peak_tflops": calibration.peak_tflops,
        "memory_bandwidth_GBps": calibration.memory_bandwidth_GBps,
        "kernel_launch_us": calibration.kernel_launch_us,
        "efficiency": eff})
