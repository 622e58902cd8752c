"""Statistical efficiency: how many steps, and so how much time, a target accuracy needs.

McCandlish et al. 2018, "An Empirical Model of Large-Batch Training", eq. 2.11: with batch B
and the task's gradient noise scale B_noise, the optimizer needs

    S = S_min (1 + B_noise / B) steps and E = S * B = E_min (1 + B / B_noise) examples,

with E_min = S_min * B_noise: beyond B_noise, bigger batches buy few steps for many samples.

Stale updates (SSP, ASP) help less than fresh ones. ASSUMPTION, not a published fit: steps
grow by (1 + staleness_penalty * mean staleness), where staleness is counted in updates
(Lian et al., NeurIPS 2015, bound the slowdown by the maximum delay; Dutta et al., AISTATS
2018 measure error growing with it). ``staleness_penalty`` is the scenario's to set; 0 means
staleness costs nothing. Under SSP/ASP each update carries one worker's batch, so B there is
the per-worker batch and S counts updates.
"""

from __future__ import annotations

from typing import Any

from dlsim.contract.sync import ConvergenceSpec


def steps_to_target(spec: ConvergenceSpec, batch: float, mean_staleness: float) -> float:
    """Updates of ``batch`` samples needed to reach the target."""
    return (spec.min_steps * (1.0 + spec.noise_batch / batch)
            * (1.0 + spec.staleness_penalty * mean_staleness))


def convergence_summary(spec: ConvergenceSpec, batch: float, mean_staleness: float,
                        seconds_per_update: float) -> dict[str, Any]:
    """The summary's ``convergence`` fields and ``time_to_accuracy_s``."""
    steps = steps_to_target(spec, batch, mean_staleness)
    return {
        "time_to_accuracy_s": steps * seconds_per_update,
        "convergence": {
            "steps_to_target": steps, "samples_to_target": steps * batch,
            "batch_per_update": batch, "mean_staleness": mean_staleness,
            "seconds_per_update": seconds_per_update,
            "min_steps": spec.min_steps, "noise_batch": spec.noise_batch,
            "staleness_penalty": spec.staleness_penalty,
        },
    }
