"""Hardware profiles: devices, links and whole systems, read from ``hardware_profiles/``.

Each YAML file describes one device, link or system in human units (TFLOP/s, GB/s, us); the
models below validate it and expose SI values (FLOP/s, B/s, s) to the rest of dlsim. Every
figure in the YAML carries its source in a comment next to it.
"""

from __future__ import annotations

import os
from functools import cache
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from dlsim.contract.errors import ScenarioError, describe_invalid
from dlsim.data import HARDWARE_PROFILES

# NCCL's hardware classes of a link, which pick its per-step latencies (src/graph/tuning.cc
# hwLat: NVLink, PCI and NET rows; dlsim/comm/protocol.py)
Transport = Literal["nvlink", "pci", "net"]

DType = Literal["fp64", "fp32", "tf32", "fp16", "bf16", "fp8", "fp4", "int8"]
# Transformer Engine's FP8 scaling recipes (transformer_engine.common.recipe): DelayedScaling,
# Float8CurrentScaling, Float8BlockScaling (1x128 / 128x128 blocks), MXFP8BlockScaling
FP8Recipe = Literal["delayed", "current", "blockwise", "mxfp8"]
# Whole bytes of one stored element. fp4 (NVFP4/MXFP4) packs two values a byte plus block
# scales; training never stores tensors below 16 bit here (weights, gradients and
# activations stay bf16, dlsim/workload/precision.py), so it counts as one byte at most.
DTYPE_BYTES: dict[str, int] = {
    "fp64": 8, "fp32": 4, "tf32": 4, "fp16": 2, "bf16": 2, "fp8": 1, "fp4": 1, "int8": 1,
}

PROFILES_DIR = Path(os.environ.get("DLSIM_PROFILES", HARDWARE_PROFILES))


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Curve(_Frozen):
    """A fitted efficiency curve of one op kind and dtype: eff(f) = max * f / (f + half_gflop)
    at f GFLOP per kernel (``dlsim calibrate`` fits it; see dlsim/calibration/fit.py)."""

    max: float = Field(gt=0, le=1)
    half_gflop: float = Field(ge=0)

    def at(self, gflop: float) -> float:
        return self.max * gflop / (gflop + self.half_gflop) if gflop > 0 else self.max


class GemmFit(_Frozen):
    """One dtype's published GEMM curve: eff(f) = max * f / (f + f_half), f_half =
    ``half_gflop`` at a peak of ``fit_tflops`` (scaled to another peak as ``Efficiency``
    says, for a device that borrows another device's fit of this dtype)."""

    max: float = Field(gt=0, le=1)
    half_gflop: float = Field(gt=0)
    fit_tflops: float = Field(gt=0)


class Efficiency(_Frozen):
    """Default roofline efficiencies, used until a calibration file overlays them.

    Matrix products reach ``gemm_max`` of peak for large problems and half of that at
    f_half GFLOP per kernel: eff(f) = gemm_max * f / (f + f_half). ``gemm_half_gflop`` is
    f_half as fitted at a peak of ``gemm_fit_tflops``; at another peak (another dtype, or a
    device that borrows another's curve) f_half scales with the peak, because the loss is a
    fixed per-kernel time (launch, tail, wave quantisation): a GEMM is at half efficiency
    when it runs as long as the fitted one did (2.43 GFLOP at 0.41 × 312 TFLOP/s ≈ 19 µs on
    the A100).
    ``gemm`` holds the curves of the dtypes with a published fit of their own (BF16 and FP8
    GEMMs reach different fractions of their peaks on Hopper); a dtype without one borrows
    the default curve above by that rule, and the profile's comment says which dtypes do.
    Memory-bound kernels reach ``memory`` of the memory bandwidth; unfused attention
    (batched QK^T, softmax, AV as separate kernels) reaches ``attention`` of peak.
    A calibration adds ``curves`` keyed "<kind>.<dtype>" (gemm.fp32, conv.fp32, ...), which
    replace these defaults for that kind and dtype.
    """

    gemm_max: float = Field(gt=0, le=1)
    gemm_half_gflop: float = Field(gt=0)
    gemm_fit_tflops: float = Field(gt=0)
    memory: float = Field(gt=0, le=1)
    attention: float = Field(gt=0, le=1)
    optimizer: float | None = Field(default=None, gt=0, le=1)  # the optimizer step's; None: memory
    gemm: dict[DType, GemmFit] = Field(default_factory=dict)
    curves: dict[str, Curve] = Field(default_factory=dict)

    def gemm_half_at(self, peak_flops: float) -> float:
        """f_half in GFLOP of the default curve for a kernel running at ``peak_flops`` peak."""
        return self.gemm_half_gflop * peak_flops / (self.gemm_fit_tflops * 1e12)

    def gemm_curve(self, dtype: str, peak_flops: float) -> tuple[float, float]:
        """(max, f_half in GFLOP) of a GEMM in ``dtype`` at ``peak_flops``: the dtype's own
        fit where the profile has one, else the default curve borrowed at this peak."""
        fit = self.gemm.get(dtype)  # type: ignore[call-overload]
        if fit is None:
            return self.gemm_max, self.gemm_half_at(peak_flops)
        return fit.max, fit.half_gflop * peak_flops / (fit.fit_tflops * 1e12)


AttentionKernel = Literal["flash", "sdpa", "eager"]
"""How a transformer's attention runs: ``flash`` (FlashAttention, fused), ``sdpa`` (torch's
scaled_dot_product_attention, which on CUDA dispatches to a fused kernel) or ``eager``
(unfused: QK^T, softmax and AV as separate kernels, the scores in memory)."""
ATTENTION_KERNELS: tuple[AttentionKernel, ...] = ("flash", "sdpa", "eager")


class AttentionFit(_Frozen):
    """One fused attention kernel family's published calibration (``dlsim.workload.attention``):
    forward efficiency ``forward_max[d] * s / (s + half)`` of the 16-bit peak at head dim d and
    sequence length s, ``half`` = ``seq_half`` or, causal, ``causal_seq_half``; the backward
    runs at ``backward_ratio`` times the forward's efficiency."""

    forward_max: dict[int, float]
    seq_half: float = Field(gt=0)
    causal_seq_half: float = Field(gt=0)
    backward_ratio: float = Field(gt=0, le=2)

    @model_validator(mode="after")
    def _fractions(self) -> AttentionFit:
        if not self.forward_max or any(not 0 < v <= 1 for v in self.forward_max.values()):
            raise ValueError("forward_max needs fractions of peak in (0, 1] by head dim")
        return self


class AttentionKernels(_Frozen):
    """The fused attention kernels a device has: which fitted family ``flash`` and ``sdpa``
    run (None: not available), and what a scenario that names none gets (``default``)."""

    default: AttentionKernel = "eager"
    flash: str | None = None
    sdpa: str | None = None
    fits: dict[str, AttentionFit] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _families_fitted(self) -> AttentionKernels:
        missing = [f for f in (self.flash, self.sdpa) if f is not None and f not in self.fits]
        if missing:
            raise ValueError(f"attention kernel families {missing} have no entry in fits")
        if self.default != "eager" and getattr(self, self.default) is None:
            raise ValueError(f"default {self.default} is not available on this device")
        return self

    def family(self, kernel: AttentionKernel) -> str | None:
        """The fitted family ``kernel`` runs here; None for eager or one the device lacks."""
        return None if kernel == "eager" else getattr(self, kernel)


class DeviceProfile(_Frozen):
    """One accelerator or host: peak compute per dtype, memory, power and price."""

    name: str
    display_name: str
    kind: Literal["gpu", "tpu", "cpu", "edge", "phone"]
    peak_tflops: dict[DType, float]
    memory_GB: float = Field(gt=0)
    memory_bandwidth_GBps: float = Field(gt=0)
    power_W: float = Field(gt=0)  # board power limit (TDP): the power model's cap
    idle_power_W: float | None = Field(default=None, ge=0)  # powered on, running nothing
    price_usd_per_hour: float | None = Field(default=None, ge=0)
    kernel_launch_us: float = Field(ge=0)
    efficiency: Efficiency
    nvlink: str | None = None        # the device's own NVLink (or ICI) link profile, if any
    nvlink_lanes: int = Field(default=1, ge=1)
    pcie: str | None = None          # its host interface link profile
    # NCCL's architecture class for its per-architecture tuner caps (src/graph/tuning.cc
    # llMaxBws: Volta / Ampere / Hopper rows); None: no such cap is applied
    nccl_arch: Literal["volta", "ampere", "hopper"] | None = None
    # CUDA compute capability (NVIDIA's CUDA GPUs table), which decides the FP8 recipes
    # Transformer Engine runs on it (dlsim.workload.precision); None: not an NVIDIA GPU
    compute_capability: float | None = None
    # the FP8 scaling recipe a run uses (the scenario's fp8_recipe); None: TE's default for
    # the device (dlsim.workload.precision.fp8_recipe_of)
    fp8_recipe: FP8Recipe | None = None
    attention_kernels: AttentionKernels = AttentionKernels()  # none fused: eager only
    # the share of compute throughput an overlapped collective takes (its SMs and HBM
    # traffic) while it runs beside compute (dlsim.engine.core); 0: overlap is free
    comm_contention: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _positive_peaks(self) -> DeviceProfile:
        bad = [k for k, v in self.peak_tflops.items() if v <= 0]
        if bad:
            raise ValueError(f"peak_tflops must be positive for {bad}")
        if self.idle_power_W is not None and self.idle_power_W > self.power_W:
            raise ValueError("idle_power_W cannot exceed power_W")
        return self

    def peak_flops(self, dtype: str) -> float:
        """Dense peak in FLOP/s for ``dtype``; a dtype the device lacks is an input error."""
        if dtype not in self.peak_tflops:
            raise ScenarioError(
                f"device {self.name} has no {dtype} peak; it supports "
                f"{', '.join(sorted(self.peak_tflops))}.", field="precision")
        return self.peak_tflops[dtype] * 1e12

    @property
    def memory_bytes(self) -> float:
        return self.memory_GB * 1e9

    @property
    def memory_bandwidth_Bps(self) -> float:
        return self.memory_bandwidth_GBps * 1e9

    @property
    def kernel_launch_s(self) -> float:
        return self.kernel_launch_us * 1e-6


class LinkProfile(_Frozen):
    """A link class: bandwidth per direction, one-way latency and NCCL transport class.

    ``bandwidth_GBps`` applies to both directions; asymmetric links (WiFi, LTE) give
    ``up_GBps`` (device towards the network) and ``down_GBps`` instead.
    """

    name: str
    display_name: str
    transport: Transport  # NCCL's hardware class, for its per-step latencies (tuning.cc hwLat)
    bandwidth_GBps: float | None = Field(default=None, gt=0)
    up_GBps: float | None = Field(default=None, gt=0)
    down_GBps: float | None = Field(default=None, gt=0)
    latency_us: float = Field(ge=0)
    # The NVSwitch generation the link plugs into (None: no NVSwitch). Generation 3 (H100/H200,
    # NVLink 4) and later reduce in the switch (NVLS multimem ops), which NVLS needs.
    nvswitch_generation: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _one_bandwidth(self) -> LinkProfile:
        symmetric = self.bandwidth_GBps is not None
        asymmetric = self.up_GBps is not None and self.down_GBps is not None
        if symmetric == asymmetric:
            raise ValueError("give either bandwidth_GBps or both up_GBps and down_GBps")
        return self

    @property
    def up_Bps(self) -> float:
        return (self.bandwidth_GBps or self.up_GBps or 0.0) * 1e9

    @property
    def down_Bps(self) -> float:
        return (self.bandwidth_GBps or self.down_GBps or 0.0) * 1e9

    @property
    def latency_s(self) -> float:
        return self.latency_us * 1e-6


class MeshLink(_Frozen):
    """A direct device-to-device connection inside a node, ``lanes`` links wide."""

    a: int = Field(ge=0)
    b: int = Field(ge=0)
    lanes: int = Field(default=1, ge=1)


class SystemProfile(_Frozen):
    """A node (server, DGX, TPU slice) built from devices and links.

    ``intra_node`` names how devices in a node connect:
    - ``switch``: every device has one ``device_link`` to a node switch (NVSwitch);
    - ``mesh``: direct ``device_link`` lanes listed in ``mesh`` (DGX-1 hybrid cube mesh);
    - ``pcie``: devices sit behind PCIe switches (``devices_per_pcie_switch``) on ``sockets``
      CPU sockets joined by ``socket_link``;
    - ``torus``: a wrap-around torus of shape ``torus_dims`` over ``device_link``.
    Every node also has PCIe host links (``host_link``) from its devices (or their PCIe
    switches) to its NICs; ``nics_per_node`` NICs connect to the fabric over ``nic_link``.
    ``nvlink_domain_nodes`` > 1 (switch nodes only): that many consecutive nodes share one
    NVSwitch fabric (GB200 NVL72: 18 trays of 4 GPUs in one NVLink domain of 72), so traffic
    between them stays on NVLink and only traffic between domains crosses the NICs.
    """

    name: str
    display_name: str
    device: str
    devices_per_node: int = Field(ge=1)
    intra_node: Literal["switch", "mesh", "pcie", "torus"]
    device_link: str
    mesh: list[MeshLink] = Field(default_factory=list)
    torus_dims: list[int] = Field(default_factory=list)
    sockets: int = Field(default=1, ge=1)
    socket_link: str | None = None
    devices_per_pcie_switch: int = Field(default=1, ge=1)
    host_link: str
    nics_per_node: int = Field(ge=0)
    nic_link: str | None = None
    price_usd_per_hour: float | None = Field(default=None, ge=0)
    nvlink_domain_nodes: int = Field(default=1, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> SystemProfile:
        n = self.devices_per_node
        if self.nvlink_domain_nodes > 1 and self.intra_node != "switch":
            raise ValueError("nvlink_domain_nodes > 1 needs intra_node: switch (nodes share "
                             "one NVSwitch fabric)")
        if self.intra_node == "mesh":
            if not self.mesh:
                raise ValueError("intra_node: mesh needs a 'mesh' list of links")
            bad = [m for m in self.mesh if m.a >= n or m.b >= n or m.a == m.b]
            if bad:
                raise ValueError(f"mesh links must join two devices in 0..{n - 1}: {bad}")
        if self.intra_node == "torus":
            prod = 1
            for d in self.torus_dims:
                prod *= d
            if not self.torus_dims or prod != n:
                raise ValueError(f"torus_dims must multiply to devices_per_node={n}")
        if self.intra_node == "pcie":
            if self.socket_link is None and self.sockets > 1:
                raise ValueError("a multi-socket pcie node needs socket_link")
            if n % (self.sockets * self.devices_per_pcie_switch):
                raise ValueError("devices_per_node must divide evenly over sockets "
                                 "and PCIe switches")
        if self.nics_per_node and self.nic_link is None:
            raise ValueError("nics_per_node > 0 needs nic_link")
        return self


_KINDS: dict[str, type[_Frozen]] = {
    "devices": DeviceProfile, "links": LinkProfile, "systems": SystemProfile,
}


def available(kind: str) -> list[str]:
    """Names of the profiles of ``kind`` ('devices', 'links' or 'systems')."""
    return sorted(p.stem for p in (PROFILES_DIR / kind).glob("*.yaml"))


@cache
def _load(kind: str, name: str) -> _Frozen:
    path = PROFILES_DIR / kind / f"{name}.yaml"
    singular = kind[:-1]
    if not path.is_file():
        raise ScenarioError(
            f"unknown {singular} '{name}'; available: {', '.join(available(kind))}.",
            field=singular)
    try:
        data = yaml.safe_load(path.read_text())
        return _KINDS[kind].model_validate(data)
    except yaml.YAMLError as exc:
        raise ScenarioError(f"invalid {singular} profile: {exc}", file=str(path)) from None
    except ValidationError as exc:
        raise ScenarioError(f"invalid {singular} profile: {describe_invalid(exc.errors())}",
                            file=str(path)) from None


def device(name: str) -> DeviceProfile:
    return _load("devices", name)  # type: ignore[return-value]


def link(name: str) -> LinkProfile:
    return _load("links", name)  # type: ignore[return-value]


def system(name: str) -> SystemProfile:
    return _load("systems", name)  # type: ignore[return-value]
