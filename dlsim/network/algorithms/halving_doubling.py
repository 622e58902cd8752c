"""Rabenseifner's all-reduce by recursive halving and doubling (Thakur et al. 2005)."""

from __future__ import annotations

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def halving_doubling(devices: np.ndarray, size_bytes: float, **_: object) -> list[Phase]:
    """Rabenseifner's all-reduce (Thakur et al. 2005): reduce-scatter by recursive halving,
    all-gather by recursive doubling. 2 log2(N) steps; each rank sends 2(N-1)/N*G."""
    n = len(devices)
    if n < 2:
        return []
    if n & (n - 1):
        raise ScenarioError(f"halving-doubling needs a power-of-two group, got {n} ranks; "
                            "use ring, tree or direct.", field="algorithm")
    ranks = np.arange(n)
    steps = int(np.log2(n))
    phases = []
    for k in range(steps):  # halving: partner at distance n/2^(k+1), half the data each time
        distance = n >> (k + 1)
        phases.append(Phase(f"halving step {k}", devices, devices[ranks ^ distance],
                            np.full(n, size_bytes / 2 ** (k + 1))))
    for k in range(steps):  # doubling: the mirror image
        distance = 1 << k
        phases.append(Phase(f"doubling step {k}", devices, devices[ranks ^ distance],
                            np.full(n, size_bytes * distance / n)))
    return phases


register(ALGORITHM, "halving-doubling", Algorithm({"allreduce": halving_doubling},
                                                  precedence=2))
