"""``dlsim calibrate``: measure this host with torch, fit the cost model's curves, and write
``calibration/<fingerprint>.json``.

The grids cover the kernel sizes of small-to-medium training steps; ``quick`` measures a
subset with fewer repeats. Fits (fit.py): per kind and dtype the saturating efficiency,
for memory-bound kernels one effective bandwidth, for the loopback all-reduce a ring's
latency and bandwidth. Efficiencies are relative to the device's peak: on a CPU the nominal
peak of the threads used, on a GPU the peak of its hardware profile; a fitted asymptote
above that peak raises it (and the file says so).
"""

from __future__ import annotations

import datetime as dt
import os
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from dlsim.calibration import bench
from dlsim.calibration.fit import (
    fit_affine,
    fit_fused_attention,
    fit_ring_allreduce,
    fit_saturating,
)
from dlsim.calibration.gpu_names import profile_for_gpu
from dlsim.calibration.store import (
    AttentionFitRecord,
    Calibration,
    CurveFit,
    LinkFit,
    Measurement,
    save,
)
from dlsim.contract.errors import ScenarioError
from dlsim.hardware import profiles as hardware


@dataclass(frozen=True)
class Grid:
    """The sizes measured; ``quick`` is a subset that runs in well under two minutes."""

    matmul: list[tuple[int, int, int]]
    conv: list[tuple[int, int, int, int, int, int]]
    attention: list[tuple[int, int, int, int]]
    memory: list[int]
    allreduce_bytes: list[int]
    repeats: int
    fused_attention: list[tuple[int, int, bool]] = field(default_factory=list)  # CUDA only
    optimizer: list[int] = field(default_factory=list)  # AdamW steps over n parameters


FULL = Grid(
    matmul=[(m, k, n) for m in (32, 128, 512, 2048)
            for k, n in ((256, 256), (256, 1024), (1024, 256), (1024, 1024), (1024, 4096),
                         (4096, 1024))],
    conv=[(2, 3, 64, 224, 7, 2), (2, 64, 64, 56, 1, 1), (2, 64, 64, 56, 3, 1),
          (2, 64, 256, 56, 1, 1), (2, 256, 64, 56, 1, 1), (2, 128, 128, 28, 3, 1),
          (2, 512, 128, 28, 1, 1), (2, 256, 256, 14, 3, 1), (2, 1024, 256, 14, 1, 1),
          (2, 512, 512, 7, 3, 1), (2, 2048, 512, 7, 1, 1), (8, 32, 64, 32, 3, 1)],
    attention=[(1, 4, 64, 128), (4, 4, 128, 256), (8, 4, 128, 256), (2, 8, 256, 512),
               (4, 8, 512, 512), (2, 12, 1024, 768)],
    memory=[4 ** i * 1024 for i in range(1, 8)],          # 4 Ki .. 16 Mi elements
    allreduce_bytes=[4 ** i * 1024 for i in range(1, 9)],  # 4 KiB .. 64 MiB
    repeats=7,
)
QUICK = Grid(
    matmul=[(64, 256, 1024), (64, 1024, 1024), (512, 256, 1024), (512, 1024, 1024)],
    conv=[(2, 64, 64, 56, 3, 1), (2, 256, 64, 56, 1, 1), (2, 256, 256, 14, 3, 1),
          (2, 512, 512, 7, 3, 1)],
    attention=[(4, 4, 128, 256), (8, 4, 128, 256), (2, 8, 256, 512)],
    memory=[16 * 1024, 256 * 1024, 4 * 1024 * 1024],
    allreduce_bytes=[4096, 65536, 1 << 20, 4 << 20],
    repeats=3,
)
# A GPU: GEMMs from launch-bound to the transformer shapes of 8k-token micro-batches (Llama 3
# 8B's 4096 x 14336), memory-bound sweeps up to 4 GB (past the 60 MB L2), convolutions at
# batch 32, FlashAttention-2's benchmark grid (head dims 64/128/256, 512 to 16k tokens,
# causal and not), AdamW steps up to 1 Gi parameters and, on FP8 tensor cores, the GEMMs
# again in FP8.
GPU = Grid(
    matmul=[(m, k, n) for m in (256, 1024, 4096, 16384)
            for k, n in ((1024, 1024), (2048, 8192), (4096, 4096), (4096, 14336),
                         (14336, 4096), (8192, 8192))],
    conv=[(32, *shape[1:]) for shape in FULL.conv],
    attention=FULL.attention,
    memory=[4 ** i * 1024 for i in range(3, 11)],          # 64 Ki .. 1 Gi elements
    allreduce_bytes=[4 ** i * 1024 for i in range(1, 11)],  # 4 KiB .. 1 GiB copies
    repeats=7,
    fused_attention=[(d, s, causal) for d in (64, 128, 256)
                     for s in (512, 1024, 2048, 4096, 8192, 16384) for causal in (False, True)],
    optimizer=[4 ** i * 1024 for i in range(6, 11)],       # 4 Mi .. 1 Gi parameters
)


def default_threads(device: str) -> int:
    """Half the host's CPUs: the calibrated device is what one of two data-parallel ranks
    gets, so `dlsim validate` can run two ranks side by side without oversubscribing."""
    return 1 if device == "cuda" else max(1, (os.cpu_count() or 2) // 2)


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and not torch.cuda.is_available():
        raise ScenarioError("--device cuda was asked for, but torch sees no CUDA device "
                            f"(torch {torch.__version__}); use --device cpu.", field="--device")
    if device not in ("cpu", "cuda"):
        raise ScenarioError(f"--device must be auto, cpu or cuda (got {device!r}).",
                            field="--device")
    return device


def _profile_for(host_name: str, device: str) -> hardware.DeviceProfile:
    """The hardware profile a calibration overlays: cpu-host for CPUs, the GPU's own."""
    return hardware.device("cpu-host" if device == "cpu" else profile_for_gpu(host_name))


def _steps(grid: Grid, device: str, dtypes: list[str], threads: int, ranks: list[int],
           backends: list[str]) -> list[tuple[str, int, Callable[[], Iterator[Measurement]]]]:
    r = grid.repeats
    steps = [("launch overhead", 4, lambda: bench.launch_overhead(device, r * 3))]
    for d in dtypes:
        steps.append((f"matmul {d}", 2 * len(grid.matmul),
                      partial(bench.matmul, grid.matmul, d, device, r)))
    steps += [("conv2d", 2 * len(grid.conv), lambda: bench.conv2d(grid.conv, device, r)),
              ("attention", 2 * len(grid.attention),
               lambda: bench.attention(grid.attention, device, r)),
              ("memory-bound", 5 * len(grid.memory),
               lambda: bench.memory_bound(grid.memory, device, r))]
    if bench.fp8_supported(device):
        steps.append(("matmul fp8", 2 * len(grid.matmul),
                      partial(bench.matmul_fp8, grid.matmul, device, r)))
    for backend in backends:
        steps.append((f"{backend} attention", 2 * len(grid.fused_attention),
                      partial(bench.fused_attention, grid.fused_attention, device, r,
                              backend)))
    if grid.optimizer:
        steps.append(("optimizer", len(grid.optimizer),
                      partial(bench.optimizer_steps, grid.optimizer, device, r)))
    if device == "cuda":
        steps.append(("host<->device", 2 * len(grid.allreduce_bytes),
                      lambda: bench.host_device_copies(grid.allreduce_bytes, r)))
    backend = "nccl" if device == "cuda" else "gloo"
    if ranks:  # wall-clock timings that wait on other processes: three times the repeats
        steps.append((f"all-reduce {backend}", 2 * len(ranks) * len(grid.allreduce_bytes),
                      lambda: bench.allreduce(ranks, grid.allreduce_bytes, 3 * r, threads,
                                              backend)))
    return steps


def measure(grid: Grid, device: str, dtypes: list[str], threads: int, ranks: list[int],
            progress: bool, backends: list[str] | None = None) -> list[Measurement]:
    """Run every microbenchmark of ``grid`` with a progress bar (``backends``: the fused
    attention backends to time on its fused-attention grid)."""
    torch.manual_seed(0)
    steps = _steps(grid, device, dtypes, threads, ranks, backends or [])
    rows: list[Measurement] = []
    columns = (TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
               TimeElapsedColumn())
    with Progress(*columns, disable=not progress, transient=False) as bar:
        task = bar.add_task("calibrating", total=sum(n for _, n, _ in steps))
        for label, _, run in steps:
            bar.update(task, description=label)
            for m in run():
                rows.append(m)
                bar.advance(task)
    return rows


def _curve(points: list[Measurement], launch_s: float, peak_flops: float) -> CurveFit:
    f = fit_saturating(np.array([p.flops for p in points]),
                       np.array([p.median_s for p in points]), launch_s)
    res = f.residuals_pct
    # a rate at the nominal peak can come out a rounding error above it (1 + 2e-16)
    return CurveFit(max=min(f.rate_flops / peak_flops, 1.0), half_gflop=f.half_gflop,
                    rate_tflops=f.rate_flops / 1e12, points=len(points),
                    residuals_pct=[round(float(x), 3) for x in res],
                    median_abs_residual_pct=float(np.median(np.abs(res))))


def _memory(rows: list[Measurement]) -> dict:
    """Per-kernel overhead and memory bandwidth. The cost model charges every kernel one
    launch overhead and a memory-bound kernel bytes / (bandwidth x efficiency): the overhead
    is a one-element op's dispatch plus the fixed time memory-bound kernels show beyond it
    (the intercept of their affine fit); the bandwidth is a DRAM-sized copy's (STREAM copy),
    and the efficiency the fitted rate of all memory-bound kernels relative to it."""
    dispatch = float(np.median([m.median_s for m in rows if m.kind == "launch"]))
    mem = [m for m in rows if m.kind == "memory"]
    affine = fit_affine(np.array([m.bytes for m in mem]), np.array([m.median_s for m in mem]),
                        dispatch)
    effective = 1.0 / affine.slope
    largest = max((m for m in mem if m.op == "copy"), key=lambda m: m.bytes)
    stream = max(largest.bytes / largest.median_s, effective)
    out = {"kernel_launch_us": (dispatch + affine.intercept) * 1e6,
           "memory_bandwidth_GBps": stream / 1e9, "memory_efficiency": effective / stream,
           "memory_residuals_pct": [round(float(x), 3) for x in affine.residuals_pct]}
    steps = [m for m in rows if m.kind == "optimizer"]
    if len(steps) >= 2:  # the optimizer's own rate: multi-tensor kernels, not a copy's
        adam = fit_affine(np.array([m.bytes for m in steps]),
                          np.array([m.median_s for m in steps]), dispatch)
        out |= {"optimizer_efficiency": min(1.0, 1.0 / adam.slope / stream),
                "optimizer_residuals_pct": [round(float(x), 3) for x in adam.residuals_pct]}
    return out


# torch's SDPA backends (bench.SDPA_BACKENDS) -> the kernel family a profile names
ATTENTION_FAMILY = {"flash": "fa2", "cudnn": "cudnn"}


def _attention_fits(rows: list[Measurement], peak_16bit: float, launch_s: float
                    ) -> dict[str, AttentionFitRecord]:
    """One fit per fused backend measured, from the shapes bench.fused_attention wrote."""
    fits = {}
    for backend, family in ATTENTION_FAMILY.items():
        points = [m for m in rows if m.kind == "fused_attention"
                  and m.op.split("_")[0] == backend]
        if not points:
            continue
        shapes = [dict(re.findall(r"([a-z])(\d+)", m.shape)) for m in points]
        f = fit_fused_attention(np.array([int(x["d"]) for x in shapes]),
                                np.array([int(x["s"]) for x in shapes]),
                                np.array(["causal" in m.shape for m in points]),
                                np.array([m.op.endswith("_bwd") for m in points]),
                                np.array([m.flops for m in points]),
                                np.array([m.median_s for m in points]), peak_16bit, launch_s)
        res = f.residuals_pct
        fits[family] = AttentionFitRecord(
            backend=backend, forward_max={d: round(v, 4) for d, v in f.forward_max.items()},
            seq_half=round(f.seq_half, 1), causal_seq_half=round(f.causal_seq_half, 1),
            backward_ratio=round(f.backward_ratio, 4), points=len(points),
            residuals_pct=[round(float(x), 3) for x in res],
            median_abs_residual_pct=float(np.median(np.abs(res))))
    return fits


def _link(points: list[Measurement]) -> LinkFit:
    ring = fit_ring_allreduce(np.array([m.ranks for m in points]),
                              np.array([m.bytes for m in points]),
                              np.array([m.median_s for m in points]))
    return LinkFit(backend=points[0].op.split("_")[-1], ranks=sorted({m.ranks for m in points}),
                   latency_us=ring.latency_s * 1e6, bandwidth_GBps=ring.bandwidth_Bps / 1e9,
                   residuals_pct=[round(float(x), 3) for x in ring.residuals_pct],
                   median_abs_residual_pct=float(np.median(np.abs(ring.residuals_pct))))


def fit(rows: list[Measurement], nominal_tflops: dict[str, float], peak_source: str
        ) -> dict:
    """Fitted fields of a Calibration from raw measurements."""
    out = _memory(rows)
    launch_s = out["kernel_launch_us"] * 1e-6
    rates: dict[str, list[Measurement]] = {}
    for m in rows:
        if m.kind in ("gemm", "conv", "attention"):
            rates.setdefault(f"{m.kind}.{m.dtype}", []).append(m)
    raw = {k: fit_saturating(np.array([p.flops for p in v]),
                             np.array([p.median_s for p in v]), launch_s).rate_flops
           for k, v in rates.items()}
    peak = dict(nominal_tflops)
    for key, rate in raw.items():
        dtype = key.split(".")[1]
        if rate / 1e12 > peak.get(dtype, 0.0):
            peak[dtype] = rate / 1e12
            peak_source += f"; {dtype} peak raised to the fitted {key} asymptote"
    out |= {"peak_tflops": peak, "peak_source": peak_source, "link": None,
            "allreduce_link": None,
            "curves": {k: _curve(v, launch_s, peak[k.split(".")[1]] * 1e12)
                       for k, v in rates.items()},
            # fractions of the nominal 16-bit peak, as the profile's published fits are
            "attention_fits": _attention_fits(rows, nominal_tflops["bf16"] * 1e12, launch_s)
            if "bf16" in nominal_tflops else {}}
    try:
        for field, op in (("allreduce_link", "allreduce_"), ("link", "ddp_bucket_")):
            points = [m for m in rows if m.kind == "allreduce" and m.op.startswith(op)]
            if points:
                out[field] = _link(points)
    except ValueError as exc:  # e.g. too few sizes to see a bandwidth
        out["skipped"] = {"allreduce": f"no link fitted: {exc}"}
    return out


def calibrate(device: str = "auto", quick: bool = False, threads: int | None = None,
              out_dir: Path = Path("calibration"), progress: bool = True,
              grid: Grid | None = None, max_ranks: int = 4) -> tuple[Calibration, Path]:
    """Measure, fit and save; returns the calibration and the file written."""
    device = resolve_device(device)
    threads = threads or default_threads(device)
    load = list(os.getloadavg())
    started = time.perf_counter()
    host = bench.host_info(device, threads)
    profile = _profile_for(host.name, device)
    if device == "cpu":
        nominal, source = bench.cpu_peak_tflops(host)
        nominal_tflops: dict[str, float] = {"fp32": nominal}
    else:
        nominal_tflops = dict(profile.peak_tflops.items())
        source = f"the {profile.name} hardware profile's published peaks"
    dtypes = ["fp32"]
    skipped = {}
    if bench.bf16_native(device):
        dtypes.append("bf16")
    else:
        skipped["bf16"] = ("torch.cuda.is_bf16_supported() is False" if device == "cuda" else
                           "no native bf16 arithmetic on this CPU (no avx512_bf16 or amx_bf16 "
                           "flag): torch emulates it, far below fp32")
    gpus = torch.cuda.device_count() if device == "cuda" else 0
    top = min(max_ranks, gpus if device == "cuda" else (os.cpu_count() or 1) // threads)
    ranks = list(range(2, top + 1))
    if not ranks:
        skipped["allreduce"] = "fewer than two ranks fit on this host"
    grid = grid or (QUICK if quick else GPU if device == "cuda" else FULL)
    backends = []  # the fused attention backends torch runs here
    for backend in (("flash", "cudnn") if device == "cuda" else ("flash",)
                    ) if grid.fused_attention else ():
        if bench.sdpa_backend_runs(backend, device):
            backends.append(backend)
        else:
            skipped[f"{backend} attention"] = (f"torch {torch.__version__} cannot run SDPA's "
                                               f"{backend} backend on {host.name}")
    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        clock = bench.clock_for(device)
        rows = measure(grid, device, dtypes, threads, ranks, progress, backends)
    finally:
        torch.set_num_threads(previous)
    fitted = fit(rows, nominal_tflops, source)
    calibration = Calibration(
        fingerprint=bench.fingerprint(host), profile=profile.name, host=host,
        date=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        load_average=[round(x, 2) for x in load], quick=quick, clock=clock,
        duration_s=round(time.perf_counter() - started, 1),
        skipped=skipped | fitted.pop("skipped", {}),
        measurements=[m for m in rows if m.kind != "allreduce"],
        allreduce=[m for m in rows if m.kind == "allreduce"], **fitted)
    return calibration, save(calibration, out_dir)


def refit(path: str | Path) -> tuple[Calibration, Path]:
    """A calibration file's measurements fitted again by this version's fits (a fit added or
    changed after the device was measured), written back in place; nothing is re-measured."""
    from dlsim.calibration.store import load

    old = load(path)
    profile = hardware.device(old.profile)
    if old.host.kind == "cpu":  # the nominal peak bench.cpu_peak_tflops stated
        source = old.peak_source.split(";")[0]
        per_cycle = re.search(r"x (\d+) fp32 FLOP/cycle", source)
        if per_cycle is None:
            raise ScenarioError("this calibration does not state its nominal CPU peak; "
                                "measure it again with dlsim calibrate.", file=str(path),
                                field="peak_source")
        nominal: dict[str, float] = {"fp32": old.host.threads * old.host.clock_MHz * 1e6
                                     * int(per_cycle.group(1)) / 1e12}
    else:
        nominal = dict(profile.peak_tflops.items())
        source = f"the {profile.name} hardware profile's published peaks"
    fitted = fit([*old.measurements, *old.allreduce], nominal, source)
    skipped = old.skipped | fitted.pop("skipped", {})
    calibration = old.model_copy(update=fitted | {"skipped": skipped})
    return calibration, save(calibration, Path(path).parent)
