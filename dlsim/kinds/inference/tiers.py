"""The hardware a request crosses: tiers (a device and its per-layer forward times) and hops
(the link between two tiers, up being away from the user).

Layer times are the roofline of each forward kernel (``costmodel.kernel_time_s``); a hop costs
latency + bytes / bandwidth per message, in the direction the bytes go.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.inference import LinkIn
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DeviceProfile
from dlsim.workload.costmodel import layer_times_s
from dlsim.workload.model import Model


@dataclass(frozen=True)
class Hop:
    name: str
    up_Bps: float
    down_Bps: float
    latency_s: float

    def up_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.up_Bps

    def down_s(self, nbytes: float) -> float:
        return self.latency_s + nbytes / self.down_Bps


@dataclass(frozen=True)
class Tier:
    name: str
    device: DeviceProfile
    layer_s: np.ndarray  # forward time of each layer of the model on this device


def device_profile(name: str, field: str, dtype: str) -> DeviceProfile:
    """The profile named ``name``; unknown names and missing dtypes name the scenario field."""
    try:
        profile = hardware.device(name)
        profile.peak_flops(dtype)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, field=field) from None
    return profile


def hop(spec: str | LinkIn, field: str) -> Hop:
    if isinstance(spec, LinkIn):
        return Hop("inline link", spec.up_GBps * 1e9, spec.down_GBps * 1e9,
                   spec.latency_us * 1e-6)
    try:
        profile = hardware.link(spec)
    except ScenarioError as exc:
        raise ScenarioError(exc.message, field=field) from None
    return Hop(profile.name, profile.up_Bps, profile.down_Bps, profile.latency_s)


def tier(name: str, device_name: str, field: str, model: Model, dtype: str) -> Tier:
    profile = device_profile(device_name, field, dtype)
    forward = [layer_times_s(layer, profile, dtype)[0] for layer in model.layers]
    return Tier(name, profile, np.array(forward))
