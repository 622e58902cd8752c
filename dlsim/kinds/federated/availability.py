"""Which clients can train at a given moment, and for how much longer.

``poisson``: each client alternates online and offline periods of exponential length
(means a = mean_online_s, b = mean_offline_s), a two-state Markov chain. Starting from its
stationary law (online with probability pi = a / (a + b)), the state after dt follows
P(online | online) = pi + (1 - pi)·e^(-lambda·dt) and P(online | offline) = pi·(1 -
e^(-lambda·dt)) with lambda = 1/a + 1/b (the two-state chain's transition function,
e.g. Ross, "Introduction to Probability Models", §6.4). An online client's remaining online
time is exponential with mean a (memoryless). ``trace``: FedScale or FLASH windows.
"""

from __future__ import annotations

import math

import numpy as np

from dlsim.contract.federated import FederatedSpec
from dlsim.kinds.federated import traces


class Availability:
    """``query(t)`` -> (online mask, seconds each online client stays online) for all
    clients; times must not decrease between queries."""

    def __init__(self, spec: FederatedSpec, rng: np.random.Generator):
        self.kind = spec.availability.kind
        self.n = spec.clients
        self.rng = rng
        a, b = spec.availability.mean_online_s, spec.availability.mean_offline_s
        self.mean_online_s, self.pi, self.rate = a, a / (a + b), 1 / a + 1 / b
        self.windows: traces.Windows | None = None
        if self.kind == "poisson":
            self.state = rng.random(self.n) < self.pi
            self.t = 0.0
        elif self.kind == "trace":
            t = spec.traces
            if t.behaviour:
                self.windows = traces.fedscale_behaviour(t.behaviour)
            else:
                assert t.flash_availability is not None  # FederatedSpec: 'trace' needs one
                self.windows = traces.flash_availability(t.flash_availability)
            self.entry_of = np.arange(self.n) % self.windows.entries

    def query(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        if self.kind == "always":
            return np.ones(self.n, dtype=bool), np.full(self.n, math.inf)
        if self.windows is not None:
            return self.windows.query(t, self.entry_of)
        if t > self.t:
            decay = math.exp(-self.rate * (t - self.t))
            p_on = np.where(self.state, self.pi + (1 - self.pi) * decay,
                            self.pi * (1 - decay))
            self.state = self.rng.random(self.n) < p_on
            self.t = t
        remaining = np.where(self.state, self.rng.exponential(self.mean_online_s, self.n), 0.0)
        return self.state.copy(), remaining
