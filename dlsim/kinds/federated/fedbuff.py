"""Buffered asynchronous aggregation, FedBuff (Nguyen et al., "Federated Learning with
Buffered Asynchronous Aggregation", AISTATS 2022), as a SimPy simulation.

``concurrency`` slots each keep one client training: a slot picks an idle online client at
random, which downloads the current model (server version v0), trains and uploads. The
server buffers arriving updates and applies them every ``buffer`` arrivals, raising its
version by one: that is a "round" here. An update that arrives at version v has staleness
s = v - v0 and weight 1 / sqrt(1 + s) (the paper's §5 choice); one staler than
``max_staleness`` is discarded (wasted). A client that goes offline before its upload ends
is dropped. Arrival order depends on the shared server link and on availability, so this
runs event by event. Clients still training when the last round is applied are not counted.
"""

from __future__ import annotations

import math
from collections.abc import Generator
from typing import Any

import numpy as np
import simpy

from dlsim.contract.federated import FederatedSpec
from dlsim.engine.core import CountingEnvironment
from dlsim.kinds.federated.availability import Availability
from dlsim.kinds.federated.link import SharedLink
from dlsim.kinds.federated.population import Population
from dlsim.kinds.federated.rounds import round_work_s
from dlsim.kinds.federated.tally import Tally


def staleness_weight(staleness: int) -> float:
    """FedBuff's staleness down-weighting, 1 / sqrt(1 + s)."""
    return 1.0 / math.sqrt(1.0 + staleness)


class _Server:
    def __init__(self, env: simpy.Environment, fed: FederatedSpec, tally: Tally):
        self.env, self.fed, self.tally = env, fed, tally
        self.version, self.buffered, self.last_s = 0, 0, 0.0
        self.done = env.event()

    def receive(self, staleness: int) -> bool:
        """Buffer one update; False if it is too stale to use."""
        limit = self.fed.fedbuff.max_staleness
        if limit is not None and staleness > limit:
            return False
        self.tally.staleness.append(staleness)
        self.buffered += 1
        if self.buffered == self.fed.fedbuff.buffer:
            self.tally.add_round(self.last_s, self.env.now, self.buffered, False)
            self.version, self.buffered, self.last_s = self.version + 1, 0, self.env.now
            if self.version == self.fed.rounds:
                self.done.succeed()
        return True


def run_fedbuff(fed: FederatedSpec, pop: Population, avail: Availability,
                model_bytes: float, update_bytes: float, server_Bps: float | None,
                rng: np.random.Generator) -> tuple[Tally, int]:
    """The tally and the number of SimPy events processed."""
    env = CountingEnvironment()
    down, up = SharedLink(env, server_Bps), SharedLink(env, server_Bps)
    tally = Tally(pop)
    server = _Server(env, fed, tally)
    busy = np.zeros(pop.size, dtype=bool)

    def train(k: int, online_s: float) -> Generator[simpy.Event, Any, None]:
        t0, v0 = env.now, server.version
        clients = np.array([k])
        scale = float(pop.width[k]) ** 2
        down_size, up_size = model_bytes * scale, update_bytes * scale
        up_bps, down_bps = (float(x[0]) for x in pop.goodput(clients, rng))
        lat = float(pop.latency_s[k])
        work_s = float(round_work_s(fed, pop, clients)[0])
        offline = env.timeout(online_s) if math.isfinite(online_s) else None
        marks = [t0]   # download end, training end, upload end as they happen

        def race(event: simpy.Event, flow: int | None = None,
                 link: SharedLink | None = None) -> Generator[simpy.Event, Any, bool]:
            if offline is None:
                yield event
                return True
            fired = yield event | offline
            if event in fired:
                return True
            if link is not None and flow is not None:  # a transfer: a link and its flow
                link.cancel(flow)
            return False

        steps = [lambda: (None, None, env.timeout(lat)),
                 lambda: (down, *down.transfer(down_size, down_bps)),
                 lambda: (None, None, env.timeout(work_s)),
                 lambda: (None, None, env.timeout(lat)),
                 lambda: (up, *up.transfer(up_size, up_bps))]
        arrived = True
        for i, step in enumerate(steps):
            link, flow, event = step()
            if not (yield from race(event, flow, link)):
                arrived = False
                break
            if i in (1, 2, 4):
                marks.append(env.now)
        now = env.now
        trained = min(max(now - marks[1], 0.0), work_s) if len(marks) > 1 else 0.0
        taken = arrived and server.receive(server.version - v0)
        flops = fed.local_epochs * float(pop.samples[k] * pop.flops_per_sample[k])
        if not taken:
            reason = "stale" if arrived else "offline"
            tally.add_waste(reason, 1, flops * (trained / work_s if work_s else 0.0), now - t0)
        tally.add_clients(clients, np.array([taken]), np.array([trained]),
                          np.array([down_size if len(marks) > 1 else 0.0]),
                          np.array([up_size if arrived else 0.0]))
        if v0 < fed.trace_rounds:
            bounds = [*marks, now, now, now][:4]
            tally.add_spans(k, f"v{v0}", [
                ("comm", "download", bounds[0], bounds[1]),
                ("compute", "train", bounds[1], bounds[2]),
                ("comm", "upload", bounds[2], bounds[3])])

    def slot() -> Generator[simpy.Event, Any, None]:
        while True:
            online, remaining = avail.query(env.now)
            idle = np.flatnonzero(online & ~busy)
            if not len(idle):
                yield env.timeout(fed.retry_s)
                continue
            k = int(rng.choice(idle))
            busy[k] = True
            yield from train(k, float(remaining[k]))
            busy[k] = False

    for _ in range(fed.fedbuff.concurrency):
        env.process(slot())
    env.run(until=server.done)
    return tally, env.events_processed
