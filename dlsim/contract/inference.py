"""The ``inference:`` section of a ``kind: edge-inference`` scenario.

A request starts on an end ``device`` (a phone, a Raspberry Pi). The section asks up to three
questions about it: where to split the model between the device and a ``server``
(Neurosurgeon), how a three-tier device/edge/cloud ``hierarchy`` behaves with early exits
(DDNN), and how a model's convolutions spread ``spatial``-ly over k devices (ADCNN). Early
``exits`` (BranchyNet) apply to the split and the hierarchy alike. Layer names are checked
against the model when the scenario runs, since the model is built only then.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from dlsim.contract.spec import Spec


class LinkIn(Spec):
    """A link given inline instead of by profile name: per-direction bandwidth, latency."""

    up_GBps: float = Field(gt=0)
    down_GBps: float = Field(gt=0)
    latency_us: float = Field(default=0.0, ge=0)


class TierSpec(Spec):
    """A device one network hop further from the user; ``link`` joins it to the tier below."""

    device: str
    link: str | LinkIn


class HierarchyTier(TierSpec):
    first_layer: str  # the first layer this tier runs


class HierarchySpec(Spec):
    """DDNN (Teerapittayanon et al., ICDCS'17): the device runs the first layers, then the edge,
    then the cloud; exits at the end of each part return early."""

    edge: HierarchyTier
    cloud: HierarchyTier


class RadioSpec(Spec):
    """The end device's radio power while sending and while receiving (W); cite the figure in
    the scenario, e.g. Huang et al., MobiSys 2012, Table 3."""

    up_W: float = Field(gt=0)
    down_W: float = Field(ge=0)


class ExitSpec(Spec):
    """A BranchyNet exit after layer ``after``; ``probability`` is the chance that a request
    reaching it leaves there (conditional on not having left earlier)."""

    after: str
    probability: float = Field(ge=0, le=1)


class SpatialSpec(Spec):
    """k identical devices, each with its own ``link`` to a switch or access point."""

    device: str
    link: str | LinkIn
    devices: list[int] = Field(default=[1, 2, 4, 8], min_length=1)

    @model_validator(mode="after")
    def _positive(self) -> SpatialSpec:
        if min(self.devices) < 1:
            raise ValueError("devices must be device counts of at least 1")
        return self


class EdgeInferenceSpec(Spec):
    device: str
    batch: int = Field(default=1, ge=1)
    server: TierSpec | None = None
    objective: Literal["latency", "energy"] = "latency"
    radio: RadioSpec | None = None
    exits: list[ExitSpec] = Field(default_factory=list)
    hierarchy: HierarchySpec | None = None
    spatial: SpatialSpec | None = None

    @model_validator(mode="after")
    def _asks_something(self) -> EdgeInferenceSpec:
        if self.server is None and self.hierarchy is None and self.spatial is None:
            raise ValueError("give at least one of 'server' (split), 'hierarchy' or 'spatial'")
        if self.objective == "energy" and self.radio is None:
            raise ValueError("objective: energy needs 'radio: {up_W, down_W}', the device's "
                             "radio power")
        if self.exits and self.server is None and self.hierarchy is None:
            raise ValueError("exits need a 'server' or a 'hierarchy' to apply to")
        return self
