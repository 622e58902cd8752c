"""Compute cost: the roofline of each kernel on a device, with efficiency curves.

time = max(flops / (peak(dtype) * eff_c), bytes / (mem_bw * eff_m)) + launch overhead
(DESIGN.md, "Modelling rules"). eff_c for GEMMs grows with problem size as
gemm_max * f / (f + f_half), f_half scaled to the dtype's peak (``Efficiency``; f of one GEMM
of a grouped GEMM, ``Kernel.groups``), is
constant for unfused attention and, for fused attention, the published fit by head dim,
sequence length, mask and pass of ``dlsim.workload.attention`` (a fraction of the 16-bit peak,
whatever the run's dtype); memory-bound kernels use
eff_m. The efficiencies come from the device profile (published microbenchmarks) until a
calibration file overlays them with a fitted curve per kind and dtype (dlsim/calibration/).
The dtype a kernel computes in is the scenario's precision except under fp8/fp4, where only
the linear layers' GEMMs run low-precision, with their cast kernels added, and the rest stays
bf16 (``dlsim.workload.precision``).
"""

from __future__ import annotations

from dlsim.hardware.profiles import DeviceProfile
from dlsim.workload.attention import fused_efficiency, peak_16bit
from dlsim.workload.model import Kernel, Layer
from dlsim.workload.precision import HIGH_PRECISION, cast_kernel, compute_dtype, fp8_recipe_of


def compute_efficiency(kernel: Kernel, device: DeviceProfile, dtype: str) -> float:
    """Fraction of ``dtype``'s peak ``kernel`` reaches (``dtype``: what it computes in)."""
    eff = device.efficiency
    gflop = kernel.flops / kernel.groups / 1e9  # a grouped GEMM: the size of one of its GEMMs
    curve = eff.curves.get(f"{kernel.kind}.{dtype}")
    if curve is not None:  # a calibration measured this kind and dtype
        return curve.at(gflop)
    if kernel.kind in ("gemm", "conv"):  # convolutions run as implicit GEMMs
        top, half = eff.gemm_curve(dtype, device.peak_flops(dtype))
        return top * gflop / (gflop + half)
    if kernel.kind == "attention":
        if kernel.fused is None:
            return eff.attention
        return fused_efficiency(kernel.fused, device) * peak_16bit(device) / device.peak_flops(
            dtype)
    return eff.memory  # elementwise FLOPs run at the memory-bound rate at best


def roofline_s(kernel: Kernel, device: DeviceProfile, dtype: str) -> float:
    """One kernel computing in ``dtype``: the slower of its compute and memory, plus launch."""
    compute = kernel.flops / (device.peak_flops(dtype)
                              * compute_efficiency(kernel, device, dtype))
    memory = kernel.bytes / (device.memory_bandwidth_Bps * device.efficiency.memory)
    return max(compute, memory) + device.kernel_launch_s


def kernel_time_s(kernel: Kernel, device: DeviceProfile, precision: str) -> float:
    """``kernel`` in a run at ``precision``, with the cast kernels a low-precision GEMM needs."""
    time = roofline_s(kernel, device, compute_dtype(kernel, precision))
    cast = cast_kernel(kernel, precision, fp8_recipe_of(device))
    return time if cast is None else time + roofline_s(cast, device, HIGH_PRECISION)


def layer_times_s(layer: Layer, device: DeviceProfile, dtype: str) -> tuple[float, float]:
    """(forward, backward) time of one layer for one micro-batch."""
    return (sum(kernel_time_s(k, device, dtype) for k in layer.forward),
            sum(kernel_time_s(k, device, dtype) for k in layer.backward))


def optimizer_time_s(params: float, optimizer: str, device: DeviceProfile) -> float:
    """The optimizer step is memory-bound: bytes touched per parameter (fp32 master state).

    Adam reads parameter, gradient, m and v and writes parameter, m and v: 7 x 4 bytes.
    SGD with momentum reads parameter, gradient and momentum and writes two: 5 x 4 bytes.
    Its rate is the profile's ``efficiency.optimizer`` where a calibration measured one
    (torch's fused AdamW: multi-tensor kernels below a copy's bandwidth), else ``memory``.
    """
    bytes_per_param = {"adam": 28, "sgd": 20}[optimizer]
    eff = device.efficiency.optimizer or device.efficiency.memory  # a measured step's rate
    return params * bytes_per_param / (device.memory_bandwidth_Bps * eff) + device.kernel_launch_s
