"""The ``federated:`` section of a scenario: who the clients are and how rounds run.

Field names are public (DESIGN.md, "Scenario contract"). Times are seconds, bandwidths
Gbit/s at the edges (as operators quote server links), fractions in [0, 1).
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from dlsim.contract.spec import Spec
from dlsim.hardware import profiles as hardware


def _known(kind: str, what: str, name: str) -> str:
    """``name`` if a ``kind`` profile of that name exists, else the error naming the others."""
    names = hardware.available(kind)
    if name not in names:
        raise ValueError(f"unknown {what} '{name}'; available: {', '.join(names)}")
    return name


DEFAULT_MAX_FEDERATED_EVENTS = 20_000_000  # a minute or two of rounds; raise to go further
SHARE_TOLERANCE = 1e-9  # population shares must sum to 1 this closely (float rounding)


class DeviceClassSpec(Spec):
    """One class of client devices: a device profile on a link profile, ``share`` of the
    population. ``width`` < 1 gives this class a HeteroFL sub-model (Diao et al., ICLR 2021)."""

    device: str
    share: float = Field(gt=0, le=1)
    link: str = "wifi"
    packet_loss: float = Field(default=0.0, ge=0, lt=1)
    width: float = Field(default=1.0, gt=0, le=1)

    @field_validator("device")
    @classmethod
    def _known_device(cls, name: str) -> str:
        return _known("devices", "device class", name)

    @field_validator("link")
    @classmethod
    def _known_link(cls, name: str) -> str:
        return _known("links", "link", name)


# A log-normal spread of 4 already puts two clients in twenty 3,000x apart (e^(2·4)); beyond
# some 100 the draws overflow to infinity or zero, so larger spreads are refused.
MAX_LOG_SIGMA = 4.0


class SamplesSpec(Spec):
    """Samples per client (quantity skew): ``constant`` (every client has ``mean``),
    ``lognormal`` (arithmetic mean ``mean``, log-space spread ``sigma``) or ``zipf`` (the
    client of rank r holds a share proportional to r^-zipf_a, ranks a random permutation,
    scaled to the mean)."""

    distribution: Literal["constant", "lognormal", "zipf"] = "lognormal"
    mean: float = Field(default=100.0, gt=0)
    sigma: float = Field(default=1.0, ge=0, le=MAX_LOG_SIGMA)
    zipf_a: float = Field(default=1.0, gt=0)


class AvailabilitySpec(Spec):
    """When clients can train: ``always``; ``poisson``, alternating on/off periods with
    exponential lengths of the given means; or ``trace`` (traces.behaviour or
    traces.flash_availability)."""

    kind: Literal["always", "poisson", "trace"] = "always"
    mean_online_s: float = Field(default=3600.0, gt=0)
    mean_offline_s: float = Field(default=3600.0, gt=0)


class StragglerSpec(Spec):
    """What a synchronous round does about slow clients: ``wait-all``; ``deadline`` (drop
    what has not arrived by ``deadline_s``); ``drop-slowest`` (aggregate the first
    1 - ``fraction`` of arrivals); ``random-drop`` (``fraction`` of the selected clients,
    chosen at random, fail before uploading)."""

    policy: Literal["wait-all", "deadline", "drop-slowest", "random-drop"] = "wait-all"
    deadline_s: float | None = Field(default=None, gt=0)
    fraction: float = Field(default=0.0, ge=0, lt=1)

    @model_validator(mode="after")
    def _complete(self) -> StragglerSpec:
        if self.policy == "deadline" and self.deadline_s is None:
            raise ValueError("policy deadline needs 'deadline_s'")
        if self.policy != "deadline" and self.deadline_s is not None:
            raise ValueError(f"deadline_s applies to policy deadline, not {self.policy}")
        if self.policy not in ("drop-slowest", "random-drop") and "fraction" in \
                self.model_fields_set:
            raise ValueError(f"fraction applies to drop-slowest and random-drop, not "
                             f"{self.policy}")
        return self


class FedBuffSpec(Spec):
    """Buffered asynchronous aggregation (Nguyen et al., AISTATS 2022): ``concurrency``
    clients train at once; the server applies an update every ``buffer`` arrivals;
    updates staler than ``max_staleness`` server versions are discarded."""

    buffer: int = Field(default=10, ge=1)
    concurrency: int = Field(default=100, ge=1)
    max_staleness: int | None = Field(default=None, ge=0)


class FederatedConvergenceSpec(Spec):
    """A target accuracy as the client updates it needs: ``client_updates`` fresh updates
    (the task's, measured at zero staleness: e.g. FedAvg's rounds to the target times K),
    and ``staleness_penalty`` c, by which an update s server versions stale counts as
    1 / (1 + c s) of a fresh one (``dlsim.kinds.federated.convergence`` cites its form)."""

    client_updates: int = Field(ge=1)
    staleness_penalty: float = Field(default=0.0, ge=0, allow_inf_nan=False)


class CompressionSpec(Spec):
    """Update compression on the uplink: ``int8`` quantisation (1 byte per parameter) or
    ``topk`` sparsification (``topk_fraction`` of the values plus an ``index_bytes`` index
    each)."""

    kind: Literal["none", "int8", "topk"] = "none"
    topk_fraction: float = Field(default=0.01, gt=0, le=1)
    index_bytes: int = Field(default=4, ge=1)


class ServerSpec(Spec):
    """The server's access link, shared max-min fairly by the clients transferring at once;
    left out it never limits (each client's own link does)."""

    bandwidth_Gbps: float | None = Field(default=None, gt=0)


class TracesSpec(Spec):
    """Client traces as JSON or CSV renderings (never pickles): see dlsim.kinds.federated.traces."""

    capacity: str | None = None
    behaviour: str | None = None
    flash_availability: str | None = None
    flash_speed: str | None = None


class FederatedSpec(Spec):
    """``rounds`` synchronous rounds of ``clients_per_round`` (K) updates (fedavg, fedprox),
    or ``rounds`` FedBuff server updates (fedbuff: K and the straggler policy do not apply).
    ``flops_per_sample`` and ``parameters`` replace the scenario's model; ``trace_rounds``
    rounds get per-client spans in trace.json."""

    clients: int = Field(ge=1)
    population: list[DeviceClassSpec] = Field(min_length=1)
    algorithm: Literal["fedavg", "fedprox", "fedbuff"] = "fedavg"
    rounds: int = Field(default=100, ge=1)
    clients_per_round: int = Field(default=10, ge=1)
    overcommit: float = Field(default=1.0, ge=1.0)
    local_epochs: int = Field(default=1, ge=1)
    batch_size: int = Field(default=32, ge=1)
    samples: SamplesSpec = SamplesSpec()
    # log-space spreads of the clients' speeds and bandwidths; MAX_LOG_SIGMA bounds them
    speed_sigma: float = Field(default=0.0, ge=0, le=MAX_LOG_SIGMA)
    bandwidth_sigma: float = Field(default=0.0, ge=0, le=MAX_LOG_SIGMA)
    availability: AvailabilitySpec = AvailabilitySpec()
    straggler: StragglerSpec = StragglerSpec()
    min_participation: float = Field(default=0.0, ge=0, le=1)
    fedbuff: FedBuffSpec = FedBuffSpec()
    compression: CompressionSpec = CompressionSpec()
    server: ServerSpec = ServerSpec()
    traces: TracesSpec = TracesSpec()
    flops_per_sample: float | None = Field(default=None, gt=0)
    parameters: int | None = Field(default=None, ge=1)
    retry_s: float = Field(default=60.0, gt=0)
    trace_rounds: int = Field(default=3, ge=0)
    # admission control (dlsim.admission): clients plus client updates over all rounds
    max_events: int = Field(default=DEFAULT_MAX_FEDERATED_EVENTS, ge=1)

    @model_validator(mode="after")
    def _consistent(self) -> FederatedSpec:
        total = sum(c.share for c in self.population)
        if abs(total - 1.0) > SHARE_TOLERANCE:
            raise ValueError(f"the population's shares are exact fractions of the clients and "
                             f"must sum to 1 (within {SHARE_TOLERANCE:g}); they sum to "
                             f"{total:.12g}")
        if self.clients_per_round > self.clients:
            raise ValueError(f"clients_per_round ({self.clients_per_round}) exceeds clients "
                             f"({self.clients})")
        if self.algorithm == "fedbuff" and self.straggler.policy != "wait-all":
            raise ValueError("fedbuff aggregates asynchronously and has no straggler policy; "
                             "bound staleness with fedbuff.max_staleness instead")
        if self.algorithm != "fedbuff" and "fedbuff" in self.model_fields_set:
            raise ValueError(f"the fedbuff section applies to algorithm fedbuff, not "
                             f"{self.algorithm}")
        if self.availability.kind != "poisson" and self.availability.model_fields_set & {
                "mean_online_s", "mean_offline_s"}:
            raise ValueError("mean_online_s and mean_offline_s apply to availability poisson")
        if self.algorithm == "fedbuff" and self.fedbuff.concurrency > self.clients:
            raise ValueError(f"fedbuff.concurrency ({self.fedbuff.concurrency}) exceeds "
                             f"clients ({self.clients})")
        if (self.availability.kind == "trace" and self.traces.behaviour is None
                and self.traces.flash_availability is None):
            raise ValueError("availability 'trace' needs traces.behaviour or "
                             "traces.flash_availability")
        if self.traces.behaviour is not None and self.traces.flash_availability is not None:
            raise ValueError("give traces.behaviour or traces.flash_availability, not both")
        if self.traces.capacity is not None and self.traces.flash_speed is not None:
            raise ValueError("give traces.capacity or traces.flash_speed, not both")
        if (self.flops_per_sample is None) != (self.parameters is None):
            raise ValueError("give both flops_per_sample and parameters, or neither (then "
                             "the scenario's model gives them)")
        return self
