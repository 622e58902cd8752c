"""Statistical efficiency: how many steps, and so how much time, a target accuracy needs.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", eq. 2.11: with batch B
and the task's gradient noise scale B_noise, the optimizer needs

    S = S_min (1 + B_noise / B) steps and E = S * B = E_min (1 + B / B_noise) examples,

with E_min = S_min * B_noise: beyond B_noise, bigger batches buy few steps for many samples.
``dlsim.kinds.sync.scaling_laws`` gives S_min and the critical batch of a language model at a
target loss (Kaplan et al. 2020) and the tokens a compute-optimal model needs (Hoffmann et
al. 2022), for ``convergence: {model: kaplan | chinchilla, target_loss: L}``.

Stale updates (SSP, ASP) help less than fresh ones. ASSUMPTION, not a published fit: steps
grow by (1 + staleness_penalty * mean staleness), where staleness is counted in updates
(Lian et al., NeurIPS 2015, bound the slowdown by the maximum delay; Dutta et al., AISTATS
2018 measure error growing with it). ``staleness_penalty`` is the scenario's to set; 0 means
staleness costs nothing. Under SSP/ASP each update carries one worker's batch, so B there is
the per-worker batch and S counts updates.

Local SGD (``communication.local_sgd_period`` H: workers average their models every H
steps) converges in fewer steps' worth of communication but not in fewer steps. STATED
MULTIPLIER, not a published fit: steps grow by (1 + local_sgd_penalty * (H - 1)), the form
of the extra error term of local-update SGD, linear in H - 1 (Wang and Joshi, "Cooperative
SGD", JMLR 2021, Theorem 1; Stich, "Local SGD Converges Fast and Communicates Little",
ICLR 2019, bounds the H at which it vanishes). ``local_sgd_penalty`` is the scenario's to
set; 0 means averaging every H steps costs no steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from dlsim.contract.errors import ScenarioError
from dlsim.contract.scenario import ModelSpec
from dlsim.contract.sync import ConvergenceSpec
from dlsim.kinds.sync import scaling_laws as laws
from dlsim.workload.model import Model
from dlsim.workload.shapes import shape_of


@dataclass(frozen=True)
class Job:
    """What a time to a target needs to know of the job beyond its step time."""

    devices: int
    price_usd_per_hour: float | None  # per device, from its hardware profile
    tokens_per_sample: int | None  # the sequence length of a language model
    parameters: int
    non_embedding_parameters: int  # the transformer blocks' (Kaplan et al.'s N)
    average_power_W: float | None = None  # per device over the simulated steps


def job_of(spec: ModelSpec, model: Model, devices: int, price_usd_per_hour: float | None,
           average_power_W: float | None = None) -> Job:
    """The job's facts: its sequence length from the model's shape or preset, and the
    simulated steps' average power per device (``dlsim.results.power``)."""
    shape = shape_of(spec)
    seq = shape.seq_len if shape is not None else spec.seq_len
    blocks = sum(layer.params for layer in model.layers if layer.role == "block")
    return Job(devices, price_usd_per_hour, seq, model.parameters, blocks, average_power_W)


def steps_to_target(spec: ConvergenceSpec, batch: float, mean_staleness: float,
                    local_sgd_period: int = 1) -> float:
    """Updates of ``batch`` samples needed to reach the target (the McCandlish model)."""
    assert spec.min_steps is not None and spec.noise_batch is not None  # the spec requires
    return (laws.mccandlish_steps(spec.min_steps, spec.noise_batch, batch)
            * _penalty(spec, mean_staleness, local_sgd_period))


def _penalty(spec: ConvergenceSpec, mean_staleness: float, local_sgd_period: int) -> float:
    """The stated multipliers of stale updates and of local SGD's period on the steps."""
    return ((1.0 + spec.staleness_penalty * mean_staleness)
            * (1.0 + spec.local_sgd_penalty * (local_sgd_period - 1)))


def convergence_summary(spec: ConvergenceSpec, batch: float, mean_staleness: float,
                        seconds_per_update: float, job: Job,
                        local_sgd_period: int = 1) -> dict[str, Any]:
    """The summary's ``convergence`` fields and ``time_to_accuracy_s``.

    Given ``model`` explicitly (or a model other than McCandlish's), the block also holds
    tokens, wall time and cost to the target and the list of assumptions; without it, the
    fields are those dlsim always wrote."""
    if "model" not in spec.model_fields_set:
        steps = steps_to_target(spec, batch, mean_staleness, local_sgd_period)
        return {
            "time_to_accuracy_s": steps * seconds_per_update,
            "convergence": {
                "steps_to_target": steps, "samples_to_target": steps * batch,
                "batch_per_update": batch, "mean_staleness": mean_staleness,
                "seconds_per_update": seconds_per_update,
                "min_steps": spec.min_steps, "noise_batch": spec.noise_batch,
                "staleness_penalty": spec.staleness_penalty,
                **_local_sgd(spec, local_sgd_period),
            },
        }
    return _target_summary(spec, batch, mean_staleness, seconds_per_update, job,
                           local_sgd_period)


def _local_sgd(spec: ConvergenceSpec, period: int) -> dict[str, Any]:
    """The summary's local SGD fields, where the job averages less often than every step."""
    if period == 1:
        return {}
    return {"local_sgd_period": period, "local_sgd_penalty": spec.local_sgd_penalty}


def _tokens_per_sample(spec: ConvergenceSpec, job: Job) -> int:
    if job.tokens_per_sample is None:
        raise ScenarioError(f"convergence model {spec.model} counts tokens: it needs a "
                            "transformer model with a sequence length (model: {preset: "
                            "gpt3-175b} or {kind: transformer, seq_len: ...}).",
                            field="convergence.model")
    return job.tokens_per_sample


def _target_summary(spec: ConvergenceSpec, batch: float, mean_staleness: float,
                    seconds_per_update: float, job: Job,
                    local_sgd_period: int) -> dict[str, Any]:
    penalty = _penalty(spec, mean_staleness, local_sgd_period)
    tokens_per_sample = job.tokens_per_sample
    extra: dict[str, Any] = {}
    if spec.model == "mccandlish":
        assert spec.min_steps is not None and spec.noise_batch is not None
        min_steps, noise = spec.min_steps, spec.noise_batch
        base = laws.mccandlish_steps(min_steps, noise, batch)
        assumptions = [laws.MCCANDLISH + f": S_min = {min_steps:g} steps, "
                       f"B_noise = {noise:g} samples (given by the scenario)"]
    elif spec.model == "kaplan":
        assert spec.target_loss is not None
        tokens_per_sample = _tokens_per_sample(spec, job)
        loss, n = spec.target_loss, job.non_embedding_parameters
        _reachable(loss, laws.kaplan_loss_floor(n), f"{n:,} non-embedding parameters",
                   "Kaplan et al.'s L(N, S)", "(N_c/N)^alpha_N")
        min_steps = laws.kaplan_min_steps(loss, n)
        critical_tokens = laws.kaplan_critical_batch_tokens(loss)
        noise = critical_tokens / tokens_per_sample
        base = laws.mccandlish_steps(min_steps, noise, batch)
        extra = {"critical_batch_tokens": critical_tokens,
                 "non_embedding_parameters": n, "target_loss": loss}
        assumptions = [laws.KAPLAN_BCRIT, laws.KAPLAN_SMIN, laws.KAPLAN_STEPS,
                       f"N = {n:,} non-embedding parameters (the transformer blocks')",
                       "loss in nats per token on Kaplan et al.'s WebText2: another corpus "
                       "or tokenizer shifts every constant"]
    else:
        assert spec.target_loss is not None
        tokens_per_sample = _tokens_per_sample(spec, job)
        loss, n = spec.target_loss, job.parameters
        _reachable(loss, laws.chinchilla_loss(n, float("inf")), f"{n:,} parameters",
                   "Hoffmann et al.'s L(N, D)", "E + A/N^alpha")
        tokens = laws.chinchilla_tokens(loss, n)
        min_steps, noise = tokens / (batch * tokens_per_sample), 0.0
        base = min_steps
        extra = {"parameters": n, "target_loss": loss,
                 "predicted_loss": laws.chinchilla_loss(n, tokens)}
        assumptions = [laws.CHINCHILLA,
                       f"N = {n:,} parameters, embeddings included (as Hoffmann et al. count)",
                       "the tokens needed do not depend on the batch (the fit's batches "
                       "are below the critical batch); no penalty for large batches"]
    steps = base * penalty
    seconds = steps * seconds_per_update
    assumptions.append(f"stale updates: steps x (1 + {spec.staleness_penalty:g} x mean "
                       "staleness), an ASSUMPTION (Lian et al. 2015 bound it by the delay)")
    if local_sgd_period > 1:
        assumptions.append(
            f"local SGD averaging every {local_sgd_period} steps: steps x (1 + "
            f"{spec.local_sgd_penalty:g} x {local_sgd_period - 1}), a STATED multiplier "
            "(the form of Wang and Joshi 2021's local-update error term, linear in H - 1)")
    assumptions.append("wall time = steps x simulated time per step (with the expected cost "
                       "of failures and checkpoints where failures are modelled)")
    out: dict[str, Any] = {
        "model": spec.model, "steps_to_target": steps, "samples_to_target": steps * batch,
        "batch_per_update": batch, "mean_staleness": mean_staleness,
        "seconds_per_update": seconds_per_update, "min_steps": min_steps,
        "noise_batch": noise, "staleness_penalty": spec.staleness_penalty,
        **_local_sgd(spec, local_sgd_period), "time_to_target_s": seconds, **extra,
    }
    if tokens_per_sample is not None:
        out["tokens_to_target"] = steps * batch * tokens_per_sample
        out["batch_tokens"] = batch * tokens_per_sample
    if job.price_usd_per_hour is not None:
        out["cost_usd"] = job.devices * seconds / 3600 * job.price_usd_per_hour
        assumptions.append(f"cost = {job.devices:,} devices x hours x "
                           f"{job.price_usd_per_hour:g} USD per device-hour (hardware profile)")
    else:
        assumptions.append("no cost: the device's hardware profile lists no hourly price")
    if job.average_power_W is not None:
        out["energy_to_target_J"] = job.devices * job.average_power_W * seconds
        assumptions.append(f"energy = {job.devices:,} devices x {job.average_power_W:.4g} W "
                           "(the simulated steps' average power, dlsim.results.power) x wall "
                           "time: lost work, checkpoints and restarts draw the steps' average")
    else:
        assumptions.append("no energy: the run has no simulated power")
    out["assumptions"] = assumptions
    return {"time_to_accuracy_s": seconds, "convergence": out}


def _reachable(loss: float, floor: float, model: str, law: str, formula: str) -> None:
    """Refuse a target at or below the loss ``law`` approaches as data grows without end."""
    if loss <= floor:
        raise ScenarioError(
            f"convergence.target_loss {loss:g} is out of reach of a model of {model}: {law} "
            f"never falls below {formula} = {floor:.4g} nats.", field="convergence.target_loss")
