"""The server's access link, shared max-min fairly by the clients transferring at once.

Every transfer crosses two links: the client's own (its goodput caps the flow) and the
server's (``capacity`` B/s, shared; None = never a bottleneck). On a single shared link
max-min fairness is water-filling (Bertsekas & Gallager, "Data Networks", §6.5.2): every
flow gets min(cap, level), the level chosen so the rates sum to the capacity. Rates change
only when a flow starts or finishes (the fluid model of dlsim.network.fluid).

``finish_times`` does this for a batch of flows whose start times are known (a synchronous
round), vectorised; ``SharedLink`` does it inside a SimPy simulation (FedBuff), where start
times emerge from the run.
"""

from __future__ import annotations

import math

import numpy as np
import simpy


def fair_rates(caps: np.ndarray, capacity: float | None) -> np.ndarray:
    """Max-min fair rates of flows capped at ``caps`` on one link of ``capacity``."""
    if capacity is None or caps.sum() <= capacity:
        return caps.copy()
    n = len(caps)
    if caps.min() * n >= capacity:  # the link binds every flow: equal shares
        return np.full(n, capacity / n)
    order = np.sort(caps)
    below = np.concatenate(([0.0], np.cumsum(order)[:-1]))   # sum of the smaller caps
    filled = below + order * (n - np.arange(n))              # total if the level were order[i]
    i = int(np.searchsorted(filled, capacity))
    level = (capacity - below[i]) / (n - i)
    return np.minimum(caps, level)


def finish_times(start_s: np.ndarray, size_bytes: np.ndarray, caps: np.ndarray,
                 capacity: float | None) -> np.ndarray:
    """When each flow's last byte arrives; flows start at ``start_s``.

    Between two flow starts, while the active flows' caps fit in the capacity, rates stay
    at the caps however many flows finish, so all those completions are taken in one step;
    otherwise the step ends at the next completion, where the shares change.
    """
    if capacity is None or caps.sum() <= capacity:  # the server link never binds
        return start_s + size_bytes / caps
    order = np.argsort(start_s, kind="stable")
    starts = start_s[order]
    finish = np.empty(len(start_s))
    remaining = size_bytes.astype(float).copy()
    active = np.zeros(len(start_s), dtype=bool)
    nxt, t = 0, float(starts[0])
    while True:
        admitted = int(np.searchsorted(starts, t, side="right"))
        active[order[nxt:admitted]] = True
        nxt = admitted
        idx = np.flatnonzero(active)
        if not len(idx):
            if nxt == len(order):
                return finish
            t = float(starts[nxt])
            continue
        c = caps[idx]
        gap = float(starts[nxt]) - t if nxt < len(order) else math.inf
        left = remaining[idx]
        if c.sum() <= capacity:           # uncontended until the next start
            need = left / c
            dt = min(gap, float(need.max()))
            done = need <= dt * (1 + 1e-12)
            finish[idx[done]] = t + need[done]
            remaining[idx] = left - c * dt
        else:
            rates = fair_rates(c, capacity)
            need = left / rates
            dt = min(gap, float(need.min()))
            done = need <= dt * (1 + 1e-12)
            finish[idx[done]] = t + dt
            remaining[idx] = left - rates * dt
        active[idx[done]] = False
        t += dt


class SharedLink:
    """A server link inside a SimPy run: ``transfer`` returns an event that fires when the
    flow's last byte arrives; ``cancel`` withdraws a flow (its client went offline)."""

    def __init__(self, env: simpy.Environment, capacity: float | None):
        self.env, self.capacity = env, capacity
        self.flows: dict[int, list] = {}   # id -> [remaining bytes, cap, event]
        self.rates: dict[int, float] = {}
        self.last = 0.0
        self.generation = 0
        self.next_id = 0

    def transfer(self, size_bytes: float, cap: float) -> tuple[int, simpy.Event]:
        self._advance()
        flow = self.next_id
        self.next_id += 1
        event = self.env.event()
        self.flows[flow] = [size_bytes, cap, event]
        self._reschedule()
        return flow, event

    def cancel(self, flow: int) -> None:
        if flow in self.flows:
            self._advance()
            del self.flows[flow]
            self._reschedule()

    def _advance(self) -> None:
        dt = self.env.now - self.last
        for flow, rate in self.rates.items():
            self.flows[flow][0] -= rate * dt
        self.last = self.env.now

    def _reschedule(self) -> None:
        self.generation += 1
        ids = list(self.flows)
        if not ids:
            self.rates = {}
            return
        caps = np.array([self.flows[f][1] for f in ids])
        rates = fair_rates(caps, self.capacity)
        self.rates = dict(zip(ids, rates.tolist(), strict=True))
        dt = max(min(self.flows[f][0] / r for f, r in self.rates.items()), 0.0)
        generation = self.generation
        self.env.timeout(dt).callbacks.append(lambda _: self._complete(generation))

    def _complete(self, generation: int) -> None:
        if generation != self.generation:  # the flow set changed since this was scheduled
            return
        self._advance()
        for flow in [f for f, (left, cap, _) in self.flows.items()
                     if left <= 1e-9 * max(cap, 1.0)]:
            self.flows.pop(flow)[2].succeed()
        self._reschedule()
