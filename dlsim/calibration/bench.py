"""Torch microbenchmarks on the host: timing, the device fingerprint, and the kernels the cost
model distinguishes (GEMM, convolution, attention, memory-bound, launch overhead, host<->device
copies, all-reduce across local processes).

Timing follows the usual discipline of microbenchmarks: warm-up calls first (allocator,
thread pool, autotuning), a CUDA synchronise around every sample, several repeats, and the
median with the interquartile range as the spread; single-threaded CPU work is timed in
process CPU time (``clock_for``), so that a shared host's other processes do not count. A
sample repeats a short kernel ``inner`` times so that it lasts at least ``MIN_SAMPLE_S``, far
above the clock's resolution.
FLOPs and bytes are counted as ``dlsim.workload.model`` counts them, so that a fitted efficiency
means the same thing in the simulator.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import socket
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from dlsim.calibration.store import HostInfo, Measurement

MIN_SAMPLE_S = 2e-3
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class Timing:
    median_s: float
    iqr_s: float
    repeats: int


def clock_for(device: str) -> str:
    """``cpu`` (process CPU time) for single-threaded work on a CPU, else ``wall``.

    One torch thread runs every op, forward and backward, on the calling thread, so its CPU
    time is the wall time it would take on a core of its own, without the time other
    processes held the core: on a shared host that is the quantity to measure. Multi-threaded
    work, GPUs and anything that waits on another process (collectives, DDP) need the wall
    clock.
    """
    return "cpu" if device == "cpu" and torch.get_num_threads() == 1 else "wall"


def time_call(fn: Callable[[], object], device: str, repeats: int, warmup: int = 2,
              inner: int | None = None, clock: str | None = None,
              graph: bool = False) -> Timing:
    """Median and IQR of ``repeats`` samples of ``fn``, per call, on ``clock`` (default
    ``clock_for(device)``). Collectives pass ``inner`` so that every rank makes the same
    number of calls. ``graph`` (CUDA, for an ``fn`` without autograd): the ``inner`` calls
    are captured in one CUDA graph and replayed, so that a short kernel is timed on the GPU
    rather than by the host's dispatch of it."""
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    now = time.process_time if (clock or clock_for(device)) == "cpu" else time.perf_counter
    for _ in range(warmup):
        fn()
    sync()
    start = now()
    fn()
    sync()
    once = now() - start
    inner = inner or max(1, int(MIN_SAMPLE_S / max(once, 1e-9)))
    sample = None
    if graph and device == "cuda":
        try:
            sample = _graphed(fn, inner)
        except RuntimeError:  # not capturable: time it eagerly
            torch.cuda.synchronize()
    samples = []
    for _ in range(repeats):
        sync()
        start = now()
        if sample is not None:
            sample()
        else:
            for _ in range(inner):
                fn()
        sync()
        samples.append((now() - start) / inner)
    q1, med, q3 = np.percentile(samples, [25, 50, 75])
    return Timing(float(med), float(q3 - q1), repeats)


def _graphed(fn: Callable[[], object], calls: int) -> Callable[[], None]:
    """``calls`` calls of ``fn`` captured in a CUDA graph (side-stream warm-up first, as
    torch.cuda.graphs asks), as one replay."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        fn()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls):
            fn()
    return graph.replay


# --- the device ---------------------------------------------------------------------------

def _cpuinfo(key: str) -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return ""
    match = re.search(rf"^{key}\s*:\s*(.+)$", text, re.MULTILINE)
    return match.group(1).strip() if match else ""


def cpu_flags() -> set[str]:
    return set(_cpuinfo("flags").split())


def host_info(device: str, threads: int) -> HostInfo:
    cuda = device == "cuda"
    name = (torch.cuda.get_device_name(0) if cuda
            else _cpuinfo("model name") or platform.processor() or "unknown CPU")
    driver = f"CUDA {torch.version.cuda}" if cuda else ""
    clock = _cpuinfo("cpu MHz")
    return HostInfo(kind=device, name=name, cores=os.cpu_count() or 1, threads=threads,
                    isa=torch.backends.cpu.get_cpu_capability(),
                    clock_MHz=float(clock) if clock else 0.0, driver=driver,
                    torch=torch.__version__, python=platform.python_version(),
                    platform=platform.platform())


def fingerprint(host: HostInfo) -> str:
    """A readable, stable id of the measured device: kind, name, cores, threads and ISA.
    Versions are recorded in the file but are not the device, so they are not in the id."""
    key = json.dumps([host.kind, host.name, host.cores, host.threads, host.isa])
    slug = re.sub(r"[^a-z0-9]+", "-", host.name.lower()).strip("-")[:40]
    digest = hashlib.sha256(key.encode()).hexdigest()[:8]
    return f"{host.kind}-{slug}-{host.cores}c-{host.threads}t-{digest}"


def cpu_peak_tflops(host: HostInfo) -> tuple[float, str]:
    """Nominal fp32 peak of ``threads`` cores: cores x clock x FLOP per cycle, the FLOP per
    cycle from the vector ISA (two FMA pipes: AVX-512 16 lanes, AVX2 8 lanes, x 2 x 2)."""
    flags = cpu_flags()
    per_cycle = 64 if "avx512f" in flags else 32 if {"avx2", "fma"} <= flags else 8
    peak = host.threads * host.clock_MHz * 1e6 * per_cycle / 1e12
    return peak, (f"nominal: {host.threads} threads x {host.clock_MHz:g} MHz x {per_cycle} "
                  f"fp32 FLOP/cycle ({host.isa}, two FMA pipes assumed)")


def bf16_native(device: str) -> bool:
    if device == "cuda":
        return torch.cuda.is_bf16_supported()
    return bool({"avx512_bf16", "amx_bf16"} & cpu_flags())


# --- microbenchmarks: each yields Measurements ----------------------------------------------

def _point(op: str, kind: str, dtype: str, shape: str, flops: float, nbytes: float,
           t: Timing) -> Measurement:
    return Measurement(op=op, kind=kind, dtype=dtype, shape=shape, flops=flops, bytes=nbytes,
                       median_s=t.median_s, iqr_s=t.iqr_s, repeats=t.repeats)


def matmul(shapes: list[tuple[int, int, int]], dtype: str, device: str,
           repeats: int) -> Iterator[Measurement]:
    """A linear layer's (m x k)(k x n) products, 2mkn FLOPs; its backward (input and weight
    gradients, two products of the same size) is measured as one point of 4mkn FLOPs, as the
    cost model charges it (workload.backward_of)."""
    for shape in shapes:
        yield from _matmul(*shape, dtype, device, repeats)


def _matmul(m: int, k: int, n: int, dtype: str, device: str, repeats: int) -> list[Measurement]:
    """In nn.Linear's layouts, the products the cost model's GEMMs stand for: forward x W^T
    with W stored (n x k), backward dX = dY W and dW = dY^T X (cuBLAS picks its kernel by
    layout; the H200 calibration of 2026-12-04 timed a @ b, g @ b^T and a^T @ g)."""
    dt = DTYPES[dtype]
    size = torch.finfo(dt).bits // 8
    x = torch.randn(m, k, dtype=dt, device=device)
    w = torch.randn(n, k, dtype=dt, device=device)
    g = torch.randn(m, n, dtype=dt, device=device)
    flops, nbytes, shape = 2.0 * m * k * n, size * (m * k + k * n + m * n), f"{m}x{k}x{n}"
    return [_point("linear", "gemm", dtype, shape, flops, nbytes,
                   time_call(lambda: F.linear(x, w), device, repeats, graph=True)),
            _point("linear_bwd", "gemm", dtype, shape, 2 * flops, 2 * nbytes,
                   time_call(lambda: (g @ w, g.T @ x), device, repeats, graph=True))]


def conv2d(shapes: list[tuple[int, int, int, int, int, int]], device: str,
           repeats: int) -> Iterator[Measurement]:
    """Convolutions (batch, c_in, c_out, input size, kernel, stride), 'same' padding; FLOPs
    2 Cin Cout k^2 Hout Wout per image as dlsim.workload.cnn counts them; backward (input and weight
    gradients) as one point of twice the FLOPs."""
    for shape in shapes:
        yield from _conv2d(*shape, device, repeats)


def _conv2d(b: int, c_in: int, c_out: int, hw: int, k: int, stride: int, device: str,
            repeats: int) -> list[Measurement]:
    x = torch.randn(b, c_in, hw, hw, device=device, requires_grad=True)
    conv = torch.nn.Conv2d(c_in, c_out, k, stride, (k - 1) // 2, bias=False).to(device)
    hw_out = (hw + 2 * ((k - 1) // 2) - k) // stride + 1
    pixels = b * hw_out * hw_out
    flops = 2.0 * c_in * c_out * k * k * pixels
    nbytes = 4.0 * (c_in * c_out * k * k + pixels * (c_in + c_out))
    shape = f"b{b} {c_in}->{c_out} {hw}px k{k} s{stride}"
    with torch.no_grad():
        forward = time_call(lambda: conv(x), device, repeats, graph=True)
    y = conv(x)
    grad = torch.randn_like(y)
    backward = time_call(lambda: torch.autograd.grad(y, (x, conv.weight), grad,
                                                     retain_graph=True), device, repeats)
    return [_point("conv2d", "conv", "fp32", shape, flops, nbytes, forward),
            _point("conv2d_bwd", "conv", "fp32", shape, 2 * flops, 2 * nbytes, backward)]


def attention(shapes: list[tuple[int, int, int, int]], device: str,
              repeats: int) -> Iterator[Measurement]:
    """Causal scaled_dot_product_attention (batch, heads, seq, hidden); FLOPs 4 b s^2 h for
    QK^T and AV, as dlsim.workload.model counts them (no saving for the causal mask)."""
    for shape in shapes:
        yield from _attention(*shape, device, repeats)


def _attention(b: int, heads: int, s: int, h: int, device: str,
               repeats: int) -> list[Measurement]:
    q, k, v = (torch.randn(b, heads, s, h // heads, device=device, requires_grad=True)
               for _ in range(3))
    flops = 4.0 * b * s * s * h
    nbytes = 4.0 * (4 * b * s * h + 2 * b * heads * s * s)
    shape = f"b{b} a{heads} s{s} h{h}"
    forward, backward = _sdpa_passes(q, k, v, True, device, repeats)
    return [_point("sdpa", "attention", "fp32", shape, flops, nbytes, forward),
            _point("sdpa_bwd", "attention", "fp32", shape, 2 * flops, 2 * nbytes, backward)]


def _sdpa_passes(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, device: str,
                 repeats: int) -> tuple[Timing, Timing]:
    """scaled_dot_product_attention's forward (no autograd, graph-captured on a GPU) and
    backward (``autograd.grad`` of a random output gradient) timings."""
    def sdpa() -> torch.Tensor:
        return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    with torch.no_grad():
        forward = time_call(sdpa, device, repeats, graph=True)
    out = sdpa()
    grad = torch.randn_like(out)
    backward = time_call(lambda: torch.autograd.grad(out, (q, k, v), grad, retain_graph=True),
                         device, repeats)
    return forward, backward


def memory_bound(sizes: list[int], device: str, repeats: int) -> Iterator[Measurement]:
    """Copy, add, layernorm, softmax and GeLU over ``sizes`` fp32 elements (rows of 1024);
    bytes = elements x 4 x tensor sweeps (2 for one input and one output, 3 for add)."""
    for n in sizes:
        yield from _memory_bound(n, device, repeats)


def _memory_bound(n: int, device: str, repeats: int) -> list[Measurement]:
    x = torch.randn(max(1, n // 1024), min(n, 1024), device=device)
    y, out = torch.randn_like(x), torch.empty_like(x)
    width = x.shape[-1]
    ops = {"copy": (2, lambda: out.copy_(x)), "add": (3, lambda: torch.add(x, y, out=out)),
           "layernorm": (2, lambda: F.layer_norm(x, (width,))),
           "softmax": (2, lambda: torch.softmax(x, -1)), "gelu": (2, lambda: F.gelu(x))}
    # a captured copy_ becomes a graph memcpy node: on the H200 measured here it ran at
    # 2.7 TB/s from 1 GB up, against 4.1 TB/s for the same copy launched eagerly
    return [_point(name, "memory", "fp32", f"{x.numel()}", float(x.numel()),
                   4.0 * sweeps * x.numel(),
                   time_call(fn, device, repeats, graph=name != "copy"))
            for name, (sweeps, fn) in ops.items()]


def optimizer_steps(sizes: list[int], device: str, repeats: int) -> Iterator[Measurement]:
    """torch's AdamW step (fused on a GPU, foreach on a CPU) over one fp32 tensor of ``n``
    parameters: 28 bytes a parameter as the cost model counts Adam (read parameter,
    gradient, m and v; write parameter, m and v)."""
    for n in sizes:
        p = torch.zeros(n, device=device, requires_grad=True)
        p.grad = torch.randn(n, device=device)
        opt = torch.optim.AdamW([p], lr=1e-4, fused=device == "cuda")
        yield _point("adamw", "optimizer", "fp32", str(n), 0.0, 28.0 * n,
                     time_call(opt.step, device, repeats))
        del opt, p


def launch_overhead(device: str, repeats: int) -> Iterator[Measurement]:
    """Per-operator cost of kernels on one element, where the work is nothing. On a CPU that
    is torch's dispatch; on a GPU the eager loop would time the host's dispatch too (about
    16 us an op on the H200 guest measured here), which a training step hides by queueing
    ahead, so the calls are replayed from a CUDA graph (``time_call``): the GPU's own time
    per kernel."""
    x = torch.ones(1, device=device)
    for name, fn in {"add": lambda: x + x, "mul": lambda: x * x, "relu": lambda: x.relu(),
                     "mm": lambda: torch.mm(x.view(1, 1), x.view(1, 1))}.items():
        yield _point(f"launch_{name}", "launch", "fp32", "1", 0.0, 0.0,
                     time_call(fn, device, repeats, graph=True))


def host_device_copies(sizes: list[int], repeats: int) -> Iterator[Measurement]:
    """Pinned host -> device and device -> host copies (CUDA only)."""
    for n in sizes:
        yield from _copies(n, repeats)


def _copies(n: int, repeats: int) -> list[Measurement]:
    host = torch.empty(n, dtype=torch.uint8).pin_memory()
    dev = torch.empty(n, dtype=torch.uint8, device="cuda")
    return [_point("h2d", "copy", "uint8", str(n), 0.0, float(n),
                   time_call(lambda: dev.copy_(host, non_blocking=True), "cuda", repeats)),
            _point("d2h", "copy", "uint8", str(n), 0.0, float(n),
                   time_call(lambda: host.copy_(dev, non_blocking=True), "cuda", repeats))]


# --- all-reduce across local processes ------------------------------------------------------

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _allreduce_worker(rank: int, world: int, port: int, backend: str, sizes: list[int],
                      repeats: int, threads: int, out: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(threads)
    device = "cuda" if backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    rows = []
    for n in sizes:
        grad, bucket = torch.ones(n // 4, device=device), torch.empty(n // 4, device=device)

        def bare(x: torch.Tensor = grad) -> None:
            dist.all_reduce(x)

        def ddp_bucket(g: torch.Tensor = grad, b: torch.Tensor = bucket) -> None:
            b.copy_(g)
            dist.all_reduce(b)
            b.div_(world)
            g.copy_(b)

        for op, fn in (("allreduce", bare), ("ddp_bucket", ddp_bucket)):
            dist.barrier()
            t = time_call(fn, device, repeats, inner=1, clock="wall")
            # every rank's median; the collective ends when the slowest rank's does
            med = torch.tensor([t.median_s, t.iqr_s], dtype=torch.float64)
            dist.all_reduce(med, op=dist.ReduceOp.MAX)
            rows.append([op, n, float(med[0]), float(med[1])])
    if rank == 0:
        Path(out).write_text(json.dumps(rows))
    dist.destroy_process_group()


def allreduce(world_sizes: list[int], sizes: list[int], repeats: int,
              threads: int, backend: str = "gloo") -> Iterator[Measurement]:
    """All-reduce of ``sizes`` bytes (fp32) over ``world`` local processes (loopback): the
    bare collective, and as DDP's reducer runs it on a bucket (copy in, all-reduce, divide
    by the world size, copy out; gradient_as_bucket_view=False, PyTorch's default)."""
    import torch.multiprocessing as mp

    for world in world_sizes:
        with tempfile.TemporaryDirectory() as tmp:
            out = str(Path(tmp) / "rows.json")
            mp.spawn(_allreduce_worker, args=(world, free_port(), backend, sizes, repeats,
                                              threads, out), nprocs=world)
            rows = json.loads(Path(out).read_text())
        for op, n, median, iqr in rows:
            yield Measurement(op=f"{op}_{backend}", kind="allreduce", dtype="fp32",
                              shape=f"{world} ranks", bytes=float(n), ranks=world,
                              median_s=median,
                              iqr_s=iqr, repeats=repeats)


# --- Hopper and newer: FP8 GEMMs and fused attention ---------------------------------------

def fp8_supported(device: str) -> bool:
    """FP8 tensor cores (compute capability 8.9 and newer) and torch's ``_scaled_mm``."""
    return (device == "cuda" and hasattr(torch, "_scaled_mm")
            and torch.cuda.get_device_capability() >= (8, 9))


def matmul_fp8(shapes: list[tuple[int, int, int]], device: str,
               repeats: int) -> Iterator[Measurement]:
    """FP8 (E4M3) products through cuBLASLt (``torch._scaled_mm``, per-tensor scales, bf16
    output), as Transformer Engine runs a linear layer's GEMMs: the forward with fast
    accumulation, the backward's two products (input and weight gradients, one point of
    4mkn FLOPs) with split accumulation, TE's defaults for fprop and for dgrad/wgrad
    (``recipe.py``, ``MMParams``). Both backward operands are E4M3 here where TE's hybrid
    format casts gradients to E5M2: Hopper's tensor cores run both at one rate."""
    for shape in shapes:
        yield from _matmul_fp8(*shape, device, repeats)


def _fp8(rows: int, cols: int, device: str) -> torch.Tensor:
    return torch.randn(rows, cols, device=device).to(torch.float8_e4m3fn)


def _matmul_fp8(m: int, k: int, n: int, device: str, repeats: int) -> list[Measurement]:
    one = torch.ones((), device=device)
    x, w = _fp8(m, k, device), _fp8(n, k, device).t()        # (m x k) row-, (k x n) column-major
    dy, w_t = _fp8(m, n, device), _fp8(k, n, device).t()     # dgrad: (m x n)(n x k)
    x_t, dy_c = _fp8(k, m, device), _fp8(n, m, device).t()   # wgrad: (k x m)(m x n)

    def mm(a: torch.Tensor, b: torch.Tensor, fast: bool) -> torch.Tensor:
        return torch._scaled_mm(a, b, scale_a=one, scale_b=one, out_dtype=torch.bfloat16,
                                use_fast_accum=fast)

    flops, nbytes, shape = 2.0 * m * k * n, m * k + k * n + 2.0 * m * n, f"{m}x{k}x{n}"
    return [_point("matmul_fp8", "gemm", "fp8", shape, flops, nbytes,
                   time_call(lambda: mm(x, w, True), device, repeats, graph=True)),
            _point("matmul_fp8_bwd", "gemm", "fp8", shape, 2 * flops, 2 * nbytes,
                   time_call(lambda: (mm(dy, w_t, False), mm(x_t, dy_c, False)), device,
                             repeats, graph=True))]


FA_TOKENS, FA_HIDDEN = 16384, 2048  # FlashAttention-2's benchmark: batch x seq 16k, hidden 2048


SDPA_BACKENDS = {"flash": "FLASH_ATTENTION", "cudnn": "CUDNN_ATTENTION"}


def sdpa_backend_runs(backend: str, device: str) -> bool:
    """Whether torch runs SDPA's ``backend`` here (FlashAttention needs sm80+, cuDNN's
    fused attention a recent cuDNN): a tiny bf16 call held to it, forward and backward."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q = torch.randn(1, 2, 128, 64, device=device, dtype=torch.bfloat16, requires_grad=True)
    try:
        with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
            F.scaled_dot_product_attention(q, q, q, is_causal=True).sum().backward()
    except RuntimeError:
        return False
    return True


def fused_attention(shapes: list[tuple[int, int, bool]], device: str, repeats: int,
                    backend: str = "flash") -> Iterator[Measurement]:
    """torch's scaled_dot_product_attention held to one fused backend in bf16 (``flash``:
    its FlashAttention-2 kernels; ``cudnn``: cuDNN's fused attention, which torch prefers on
    Hopper), at (head dim, sequence length, causal), in FlashAttention-2's benchmark setting
    (batch x sequence = 16k tokens, hidden 2048; flashattention_h100.csv), FLOPs in its
    convention (``dlsim.workload.attention.fused_flops``; the backward 2.5x the forward)."""
    for shape in shapes:
        yield from _fused_attention(*shape, device, repeats, backend)


def _fused_attention(head_dim: int, s: int, causal: bool, device: str,
                     repeats: int, backend: str = "flash") -> list[Measurement]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from dlsim.workload.attention import BACKWARD_FLOPS, fused_flops

    b, heads = max(1, FA_TOKENS // s), FA_HIDDEN // head_dim
    q, k, v = (torch.randn(b, heads, s, head_dim, device=device, dtype=torch.bfloat16,
                           requires_grad=True) for _ in range(3))
    flops = fused_flops(b, s, heads, head_dim, head_dim, causal)
    nbytes = 2.0 * 4 * b * heads * s * head_dim          # q, k, v and the output
    shape = f"d{head_dim} s{s} b{b} a{heads}" + (" causal" if causal else "")
    with sdpa_kernel(getattr(SDPBackend, SDPA_BACKENDS[backend])):
        forward, backward = _sdpa_passes(q, k, v, causal, device, repeats)
    return [_point(f"{backend}_fwd", "fused_attention", "bf16", shape, flops, nbytes,
                   forward),
            _point(f"{backend}_bwd", "fused_attention", "bf16", shape, BACKWARD_FLOPS * flops,
                   2 * nbytes, backward)]
