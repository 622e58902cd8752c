"""Scenario sections of this package: ``sync``, ``stragglers``, ``failures``, ``convergence``.

Field names are part of the public scenario contract (DESIGN.md): ``sync: bsp | ssp
(staleness: s) | asp``, written either as the plain mode or as ``{mode: ssp, staleness: 3}``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

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
    """How often a checkpoint is written and what one costs.

    The interval is ``interval_steps`` (replayed over the measured steps) or ``interval``:
    ``auto`` (Daly's optimum, ``dlsim.kinds.sync.goodput``) or a number of steps. The cost is
    ``cost_s`` or the model and optimizer state over ``storage_GBps``, the storage's
    aggregate write bandwidth in GB/s (1e9 bytes). ``interval`` or ``storage_GBps`` selects
    the expected-goodput model (Poisson failures, Monte Carlo over many seeds)."""

    interval_steps: int | None = Field(default=None, ge=1)
    interval: Literal["auto"] | Annotated[int, Field(ge=1)] | None = None
    cost_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    storage_GBps: float | None = Field(default=None, gt=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_each(self) -> CheckpointSpec:
        if (self.interval_steps is None) == (self.interval is None):
            raise ValueError("give exactly one of 'interval_steps' or 'interval' "
                             "(auto, or a number of steps)")
        if (self.cost_s is None) == (self.storage_GBps is None):
            raise ValueError("give exactly one of 'cost_s' or 'storage_GBps'")
        if self.interval_steps is not None and self.storage_GBps is not None:
            raise ValueError("storage_GBps goes with 'interval' (auto or steps), the "
                             "expected-goodput model; interval_steps with cost_s")
        return self

    @property
    def expected_goodput(self) -> bool:
        """Whether these fields ask for the expected-goodput model."""
        return self.interval is not None or self.storage_GBps is not None


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
    mtbf_s: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    restart_s: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    checkpoint: CheckpointSpec | None = None
    job_steps: int | None = Field(default=None, ge=1)
    rates: str | None = None
    job_days: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    monte_carlo_runs: int = Field(default=10_000, ge=1, le=1_000_000)

    @model_validator(mode="after")
    def _goodput_fields(self) -> FailureSpec:
        """``rates`` (a CSV of interruptions per cause, or ``llama3`` for the bundled Llama 3
        table), ``job_days`` (the job's wall time) and ``monte_carlo_runs`` belong to the
        expected-goodput model, which ``checkpoint: {interval: ...}`` or ``storage_GBps``
        selects; it draws Poisson failures at a rate, not at given times."""
        goodput = self.checkpoint is not None and self.checkpoint.expected_goodput
        extra = [f for f in ("rates", "job_days", "monte_carlo_runs")
                 if f in self.model_fields_set]
        if not goodput:
            if extra:
                raise ValueError(f"{', '.join(extra)} belong to the expected-goodput model: "
                                 "give checkpoint: {interval: auto | steps, storage_GBps: "
                                 "... | cost_s: ...}")
            return self
        if (self.rates is None) == (self.mtbf_s is None):
            raise ValueError("the expected-goodput model needs exactly one of 'rates' "
                             "(a CSV path, or llama3) or 'mtbf_s'")
        if self.at:
            raise ValueError("failures at given times ('at') are replayed with "
                             "checkpoint: {interval_steps, cost_s}; the expected-goodput "
                             "model draws them at a rate")
        if self.job_days is not None and self.job_steps is not None:
            raise ValueError("give the job's length as job_steps or job_days, not both")
        return self


class ConvergenceSpec(Spec):
    """Steps to a target, by one of three statistical-efficiency models
    (``dlsim.kinds.sync.convergence`` cites each):

    - ``mccandlish`` (default; McCandlish et al. 2018, eq. 2.11): S = S_min (1 + B_noise / B),
      with the task's measured ``min_steps`` (S_min) and ``noise_batch`` (B_noise, §2.2);
    - ``kaplan`` (Kaplan et al. 2020): S_min and the critical batch at ``target_loss`` (nats
      per token) from the paper's fitted constants, for a language model;
    - ``chinchilla`` (Hoffmann et al. 2022, Approach 3): the tokens at which L(N, D) reaches
      ``target_loss``.

    Stale updates multiply the steps by (1 + staleness_penalty * mean staleness), and local
    SGD's period H (``communication.local_sgd_period``) by (1 + local_sgd_penalty * (H - 1))."""

    model: Literal["mccandlish", "kaplan", "chinchilla"] = "mccandlish"
    min_steps: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    noise_batch: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    target_loss: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    staleness_penalty: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    local_sgd_penalty: float = Field(default=0.0, ge=0, allow_inf_nan=False)

    @model_validator(mode="after")
    def _model_fields(self) -> ConvergenceSpec:
        need = {"mccandlish": ("min_steps", "noise_batch"), "kaplan": ("target_loss",),
                "chinchilla": ("target_loss",)}[self.model]
        missing = [f for f in need if getattr(self, f) is None]
        given = [f for f in ("min_steps", "noise_batch", "target_loss")
                 if f not in need and getattr(self, f) is not None]
        if missing:
            raise ValueError(f"convergence model {self.model} needs {', '.join(missing)}")
        if given:
            raise ValueError(f"convergence model {self.model} takes no {', '.join(given)} "
                             f"(it takes {', '.join(need)})")
        return self
