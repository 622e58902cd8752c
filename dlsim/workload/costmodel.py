"""Compute cost: the roofline of each kernel on a device, with efficiency curves.

time = max(flops / (peak(dtype) * eff_c), bytes / (mem_bw * eff_m)) + launch overhead
(DESIGN.md, "Modelling rules"). eff_c for GEMMs grows with problem size as
gemm_max * f / (f + f_half), f_half scaled to the dtype's peak (``Efficiency``), is
constant for unfused attention and, for fused attention, the published fit by head dim,
sequence length, mask and pass of ``dlsim.workload.attention`` (a fraction of the 16-bit peak,
whatever the run's dtype); memory-bound kernels use
eff_m. The efficiencies come from the device profile (published microbenchmarks) until a
calibration file overlays them with a fitted curve per kind and dtype (dlsim/calibration/).
"""

from __future__ import annotations

from dlsim.hardware.profiles import DeviceProfile
from dlsim.workload.attention import fused_efficiency, peak_16bit
from dlsim.workload.model import Kernel, Layer


def compute_efficiency(kernel: Kernel, device: DeviceProfile, dtype: str) -> float:
    eff = device.efficiency
    curve = eff.curves.get(f"{kernel.kind}.{dtype}")
    if curve is not None:  # a calibration measured this kind and dtype
        return curve.at(kernel.flops / 1e9)
    if kernel.kind in ("gemm", "conv"):  # convolutions run as implicit GEMMs
        gflop = kernel.flops / 1e9
        half = eff.gemm_half_at(device.peak_flops(dtype))
        return eff.gemm_max * gflop / (gflop + half)
    if kernel.kind == "attention":
        if kernel.fused is None:
            return eff.attention
        return fused_efficiency(kernel.fused, device) * peak_16bit(device) / device.peak_flops(
            dtype)
    return eff.memory  # elementwise FLOPs run at the memory-bound rate at best


def kernel_time_s(kernel: Kernel, device: DeviceProfile, dtype: str) -> float:
    compute = kernel.flops / (device.peak_flops(dtype)
                              * compute_efficiency(kernel, device, dtype))
    memory = kernel.bytes / (device.memory_bandwidth_Bps * device.efficiency.memory)
    return max(compute, memory) + device.kernel_launch_s


def layer_times_s(layer: Layer, device: DeviceProfile, dtype: str) -> tuple[float, float]:
    """(forward, backward) time of one layer for one micro-batch."""
    return (sum(kernel_time_s(k, device, dtype) for k in layer.forward),
            sum(kernel_time_s(k, device, dtype) for k in layer.backward))


def optimizer_time_s(params: float, optimizer: str, device: DeviceProfile) -> float:
    """The optimizer step is memory-bound: bytes touched per parameter (fp32 master state).

    Adam reads parameter, gradient, m and v and writes parameter, m and v: 7 x 4 bytes.
    SGD with momentum reads parameter, gradient and momentum and writes two: 5 x 4 bytes.
    """
    bytes_per_param = {"adam": 28, "sgd": 20}[optimizer]
    return (params * bytes_per_param / (device.memory_bandwidth_Bps * device.efficiency.memory)
            + device.kernel_launch_s)
