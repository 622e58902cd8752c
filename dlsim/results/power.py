"""Power and energy of devices over a simulated timeline: the energy roofline with a cap.

Choi, Bedard, Fowler and Vuduc ("A roofline model of energy", IPDPS 2013) price a device as
a constant power whenever it is on plus an energy per operation it performs; Choi et al.
("Algorithmic time, energy, and power on candidate HPC compute building blocks", IPDPS
2014) cap the sum at the power limit. Normalised to the profile's board power P_max
(``power_W``, the TDP) and idle power P_idle (``idle_power_W``), a device draws

    P(t) = min(P_max, P_idle + (P_max − P_idle) · a(t))
    a(t) = a_compute · [a compute span runs] + A_COMM · [a collective moves data]

and over [0, T] it uses, with t_c the time only compute runs, t_x the time only a
collective moves data and t_o the time both run,

    E = P_idle · T + (P_max − P_idle) · (a_compute · t_c + A_COMM · t_x
                                         + min(1, a_compute + A_COMM) · t_o).

Waiting for peers, the pipeline bubble and idle time draw P_idle. ``a_compute`` is the
time-weighted activity of the model's forward and backward kernels on the device (the
roofline of ``dlsim.workload.costmodel``): a kernel of t_k seconds running its FLOPs at
u_k of the dtype's peak and its bytes at m_k of the memory bandwidth has

    a_k = min(1, max(u_k / e_gemm, A_MEMORY · m_k / e_mem)),

e_gemm and e_mem being the profile's best GEMM and memory efficiencies: a GEMM as efficient
as the device gets draws P_max (the board limit is sized for tensor-core math), a
memory-bound kernel at its full bandwidth A_MEMORY of the dynamic range, a small GEMM in
proportion to its efficiency. The optimizer and other compute spans take the same
a_compute: the step's mix, not a per-span figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from dlsim.contract.span import Span
from dlsim.hardware.profiles import DeviceProfile
from dlsim.results.intervals import length, minus, union
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import Model
from dlsim.workload.precision import compute_dtype

# Assumption (no published per-activity split found for these boards): a memory-bound
# kernel at its full bandwidth keeps the HBM stacks and memory controllers busy but not the
# tensor cores, 0.6 of the dynamic range.
A_MEMORY = 0.6
# Assumption: a collective runs on a few SMs (one CTA per NCCL channel) while the rest sit
# idle; its power is the HBM reads and writes of each chunk and the NVLink/PCIe SerDes,
# 0.3 of the dynamic range.
A_COMM = 0.3


@dataclass(frozen=True)
class PowerModel:
    """The three figures of the closed form above for one device running one model."""

    idle_W: float
    max_W: float
    a_compute: float

    @property
    def dynamic_W(self) -> float:
        return self.max_W - self.idle_W

    def power_W(self, computing: bool, communicating: bool) -> float:
        """P(t) while compute and/or a collective run (neither: idle)."""
        a = (self.a_compute if computing else 0.0) + (A_COMM if communicating else 0.0)
        return min(self.max_W, self.idle_W + self.dynamic_W * a)

    def energy_J(self, total_s: float, compute_only_s: float, comm_only_s: float,
                 overlap_s: float) -> float:
        """E over [0, total_s] with the given seconds of each activity (the rest idle)."""
        return (self.idle_W * total_s
                + self.dynamic_W * (self.a_compute * compute_only_s + A_COMM * comm_only_s
                                    + min(1.0, self.a_compute + A_COMM) * overlap_s))


def idle_power_W(device: DeviceProfile) -> float:
    """The profile's idle power (every bundled profile gives one, with its source); a
    profile without one is priced as a device that never idles below its limit."""
    return device.idle_power_W if device.idle_power_W is not None else device.power_W


def kernel_activity(flops: float, nbytes: float, time_s: float, device: DeviceProfile,
                    dtype: str) -> float:
    """a_k of a kernel that moves ``nbytes`` and does ``flops`` in ``time_s``."""
    if time_s <= 0:
        return 0.0
    eff = device.efficiency
    peak = device.peak_flops(dtype)
    u = flops / (time_s * peak)
    m = nbytes / (time_s * device.memory_bandwidth_Bps)
    best, _ = eff.gemm_curve(dtype, peak)  # the dtype's own GEMM ceiling draws the limit
    return min(1.0, max(u / best, A_MEMORY * m / eff.memory))


def compute_activity(model: Model, device: DeviceProfile, dtype: str) -> float:
    """a_compute: the kernels' a_k weighted by their roofline times, over one forward and
    backward pass of ``model``."""
    busy = weighted = 0.0
    for layer in model.layers:
        for k in (*layer.forward, *layer.backward):
            t = kernel_time_s(k, device, dtype)
            busy += t
            weighted += t * kernel_activity(k.flops, k.bytes, t, device,
                                            compute_dtype(k, dtype))
    return weighted / busy if busy > 0 else 0.0


def power_model(model: Model, device: DeviceProfile, dtype: str) -> PowerModel:
    return PowerModel(idle_power_W(device), device.power_W,
                      compute_activity(model, device, dtype))


def estimated_energy_J(model: PowerModel, step_s: float,
                       breakdown_s: Mapping[str, float]) -> float:
    """E of one device over a closed-form step (the planner's estimate, which has parts, not
    spans): its ``compute`` at a_compute, its exposed communication (the parts named
    ``*comm``) at A_COMM, the rest (bubble) idle. Communication hidden under compute is not
    in the parts, so it adds nothing here; the engine adds min(1, a_compute + A_COMM) −
    a_compute over it."""
    comm = sum(v for k, v in breakdown_s.items() if k.endswith("comm"))
    return model.energy_J(step_s, breakdown_s.get("compute", 0.0), comm, 0.0)


@dataclass(frozen=True)
class Activity:
    """Seconds of one device's [0, total_s] by what it did."""

    total_s: float
    compute_only_s: float
    comm_only_s: float
    overlap_s: float


def activity(spans: Iterable[Span], device: int, total_s: float) -> Activity:
    """What ``device`` did over [0, total_s], from its compute and comm spans (a 'wait'
    span moves no data: it draws idle power)."""
    mine = [s for s in spans if s.device == device]
    compute = union((s.start_s, s.end_s) for s in mine if s.category == "compute")
    comm = union((s.start_s, s.end_s) for s in mine if s.category == "comm")
    comm_only = minus(comm, compute)
    both = length(comm) - length(comm_only)
    return Activity(total_s, length(compute) - both, length(comm_only), both)


def device_energy_J(model: PowerModel, spans: Iterable[Span], device: int,
                    total_s: float) -> float:
    a = activity(spans, device, total_s)
    return model.energy_J(a.total_s, a.compute_only_s, a.comm_only_s, a.overlap_s)


def power_timeline(model: PowerModel, spans: Iterable[Span], device: int,
                   total_s: float) -> tuple[list[float], list[float]]:
    """P(t) of ``device`` as a step function: the times where it changes and the power
    from each time to the next (the last entry holds until ``total_s``)."""
    mine = [s for s in spans if s.device == device and s.category in ("compute", "comm")]
    edges = sorted({0.0, total_s, *(t for s in mine for t in (s.start_s, s.end_s))})
    times, watts = [], []
    for start, end in zip(edges, edges[1:]):
        mid = (start + end) / 2
        running = {s.category for s in mine if s.start_s <= mid < s.end_s}
        times.append(start)
        watts.append(model.power_W("compute" in running, "comm" in running))
    return times, watts
