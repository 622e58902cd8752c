"""Scenario sections of this package: ``sync``, ``stragglers``, ``failures``, ``convergence``.

Field names are part of the public scenario contract (DESIGN.md): ``sync: bsp | ssp
(staleness: s) | asp``, written either as the plain mode or as ``{mode: ssp, staleness: 3}``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_validator

from dlsim.contract.spec import Spec


class SyncSpec(Spec):
    """BSP, SSP with staleness bound ``staleness`` (Ho et al., NIPS 2013), or ASP."""

    mode: Literal["bsp", "ssp", "asp"] = "bsp"
    staleness: int | None = Field(default=None, ge=0)

    @model_validator(mode="before")
    @classmethod
    def _plain_mode(cls, data: Any) -> Any:
        return {"mode": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _bound(self) -> SyncSpec:
        if self.mode == "ssp" and self.staleness is None:
            raise ValueError("ssp needs a staleness bound: sync: {mode: ssp, staleness: 3}")
        if self.mode != "ssp" and self.staleness is not None:
            raise ValueError(f"staleness applies to ssp only ({self.mode} is s = "
                             f"{'0' if self.mode == 'bsp' else 'infinity'})")
        return self


class PerStepSpec(Spec):
    """Per-step slowdown factors drawn for every rank and step.

    lognormal: exp(N(0, sigma^2)), median 1 (the heavy right tail of measured step times,
    Dean & Barroso, "The Tail at Scale", CACM 2013); bimodal: ``factor`` with probability
    ``probability``, else 1 (an occasional hiccup: GC, a noisy neighbour, thermal throttling).
    """

    distribution: Literal["lognormal", "bimodal"]
    sigma: float | None = Field(default=None, gt=0)
    probability: float | None = Field(default=None, ge=0, le=1)
    factor: float | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _parameters(self) -> PerStepSpec:
        need = {"lognormal": ["sigma"], "bimodal": ["probability", "factor"]}[self.distribution]
        extra = {"sigma", "probability", "factor"} - set(need)
        missing = [f for f in need if getattr(self, f) is None]
        given = [f for f in sorted(extra) if getattr(self, f) is not None]
        if missing:
            raise ValueError(f"a {self.distribution} slowdown needs {', '.join(missing)}")
        if given:
            raise ValueError(f"a {self.distribution} slowdown takes no {', '.join(given)}")
        return self


class SlowLinkSpec(Spec):
    """A link whose bandwidth is multiplied by ``factor`` during [start_s, end_s).

    ``link`` names one directed link as the report's link table does ("src->dst");
    ``device`` slows every link into and out of that device.
    """

    link: str | None = None
    device: int | None = Field(default=None, ge=0)
    factor: float = Field(gt=0, le=1)
    start_s: float = Field(default=0.0, ge=0)
    end_s: float = float("inf")

    @model_validator(mode="after")
    def _one_target(self) -> SlowLinkSpec:
        if (self.link is None) == (self.device is None):
            raise ValueError("give exactly one of 'link' (\"src->dst\") or 'device'")
        if self.end_s <= self.start_s:
            raise ValueError(f"end_s ({self.end_s}) must be after start_s ({self.start_s})")
        return self


class StragglerSpec(Spec):
    """Compute slowdowns: fixed per device (``fixed: {3: 2.0}``: device 3 computes twice as
    long), drawn per device and step, and transient slow links."""

    fixed: dict[int, float] = {}
    per_step: PerStepSpec | None = None
    links: list[SlowLinkSpec] = []

    @model_validator(mode="after")
    def _factors(self) -> StragglerSpec:
        bad = {r: f for r, f in self.fixed.items() if r < 0 or f <= 0}
        if bad:
            raise ValueError(f"fixed maps devices (>= 0) to positive time factors, got {bad}")
        return self


class CheckpointSpec(Spec):
    interval_steps: int = Field(ge=1)
    cost_s: float = Field(ge=0)


class FailureAt(Spec):
    device: int = Field(ge=0)
    time_s: float = Field(ge=0)


class FailureSpec(Spec):
    """Device failures at given times and/or drawn from a Poisson process with the job's
    mean time between failures ``mtbf_s``. A BSP job restarts from its last checkpoint after
    ``restart_s``; an SSP/ASP parameter-server job goes on with the surviving workers.

    ``job_steps`` (BSP) is the length of the job whose failures are replayed, when it is
    longer than the ``training.steps`` simulated: the simulated step times repeat (steps
    are assumed stationary), so a days-long job costs one simulated step."""

    at: list[FailureAt] = []
    mtbf_s: float | None = Field(default=None, gt=0)
    restart_s: float = Field(default=0.0, ge=0)
    checkpoint: CheckpointSpec | None = None
    job_steps: int | None = Field(default=None, ge=1)


class ConvergenceSpec(Spec):
    """Steps to a target accuracy (McCandlish et al. 2018, "An Empirical Model of Large-Batch
    Training", eq. 2.11): S = S_min (1 + B_noise / B), times (1 + staleness_penalty * mean
    staleness) for stale updates. Both S_min and B_noise belong to the task and must be
    measured (B_noise is the gradient noise scale, §2.2)."""

    min_steps: float = Field(gt=0)
    noise_batch: float = Field(gt=0)
    staleness_penalty: float = Field(default=0.0, ge=0)
