"""Time to a target accuracy of a federated run, from the rate its rounds aggregate updates.

A task reaches its target after ``client_updates`` fresh client updates U (the scenario's:
measured for the task without staleness, e.g. FedAvg's rounds to the target times K, as
McMahan et al., AISTATS 2017, report rounds to a target accuracy). An update that arrives s
server versions stale (FedBuff, ``dlsim.kinds.federated.fedbuff``) helps less than a fresh
one. STATED MULTIPLIER, not a published fit: it counts 1 / (1 + c s) of a fresh update,
with c the scenario's ``staleness_penalty`` (0: staleness costs nothing), the same form as
the SSP/ASP penalty of ``dlsim.kinds.sync.convergence``; FedBuff's convergence guarantee
(Nguyen et al., AISTATS 2022) holds for bounded staleness and its error bound grows with the
bound, Toghani and Uribe (2022) with the delays' spread. The simulated rounds are taken as
stationary: the run's effective updates per second go on until U are reached.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dlsim.contract.federated import FederatedConvergenceSpec


def convergence_summary(spec: FederatedConvergenceSpec, staleness: np.ndarray,
                        aggregated: int, rounds: int, seconds: float,
                        energy_J: float) -> dict[str, Any]:
    """The summary's ``convergence`` block: ``aggregated`` client updates in ``rounds``
    rounds took ``seconds`` and ``energy_J``; ``staleness`` holds the server versions each
    aggregated update was stale by (empty under synchronous rounds)."""
    c = spec.staleness_penalty
    weight = float(np.mean(1.0 / (1.0 + c * staleness))) if len(staleness) else 1.0
    effective = aggregated * weight  # fresh-update equivalents the run aggregated
    share = spec.client_updates / effective  # of the simulated run, to reach the target
    return {
        "client_updates": spec.client_updates, "staleness_penalty": c,
        "mean_staleness": float(staleness.mean()) if len(staleness) else 0.0,
        "mean_update_weight": weight,
        "updates_to_target": spec.client_updates / weight,
        "rounds_to_target": rounds * share, "time_to_target_s": seconds * share,
        "energy_to_target_J": energy_J * share,
        "assumptions": [
            f"the target needs {spec.client_updates:,} fresh client updates (given by the "
            "scenario: the task's, measured without staleness)",
            f"an update s versions stale counts 1 / (1 + {c:g} s) of a fresh one, a STATED "
            "multiplier (the form of dlsim's SSP/ASP penalty; FedBuff's guarantee, Nguyen "
            "et al. 2022, grows with the staleness bound)",
            "the simulated rounds are stationary: their rate of aggregated updates, time and "
            "energy per update go on to the target"]}
