"""Parameter-server training under BSP, SSP and ASP, as SimPy processes.

Every rank runs a worker that loops: pull the parameters from the K server shards, run
forward and backward on its batch, push its gradients to the shards. The shards live on K of
the ranks (``server_ranks``) and apply updates on a server stream of their host, one at a
time per shard, in arrival order. All pulls and pushes are flows on the shared network.

- BSP: the shards wait for every live worker's gradients of a step, sum them and apply one
  update; every worker then pulls it (the worker's wait for its last peer is straggler wait).
- SSP (Ho et al., "More Effective Distributed ML via a Stale Synchronous Parallel Parameter
  Server", NIPS 2013, §2): a worker's clock is the number of steps it has pushed. A worker
  whose clock is c may start its next step only when every live worker's clock is at least
  c - s; so no worker starts a step more than s steps ahead of the slowest, and s = 0 is
  lock-step. Shards apply each worker's update as it arrives.
- ASP: no gate at all; workers never wait.

SSP and ASP share a budget of ``steps`` x N worker-steps (the work of ``steps`` BSP steps):
fast workers take more of it, and the run ends when it is used up. Staleness of an applied
update is how many other updates its shard applied between the worker's pull and this one
(the largest over shards), the delay of asynchronous SGD analyses (Lian et al., NeurIPS
2015). A worker whose device fails stops at once (its step is lost); the others go on.
"""

from __future__ import annotations

from collections.abc import Generator, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import simpy

from dlsim.contract.span import Span
from dlsim.engine.core import CountingEnvironment
from dlsim.hardware.topology import Topology
from dlsim.kinds.sync.stragglers import rank_of
from dlsim.network.algorithms import server_ranks
from dlsim.network.backend import NetworkBackend, NetworkFactory


@dataclass(frozen=True)
class PSJob:
    """What the workers and shards do; times come from the cost model."""

    mode: str                 # bsp | ssp | asp
    staleness: int | None     # the SSP bound s
    placement: np.ndarray     # rank -> device
    servers: int              # K shards
    grad_bytes: float         # G: gradients pushed and parameters pulled per step
    compute_s: float          # forward + backward of one worker's batch
    apply_s: float            # one shard applying one update (optimizer on P/K parameters)
    sum_s: float              # BSP: one shard summing one more worker's gradients
    steps: int
    factors: np.ndarray       # (ranks, steps x ranks) compute-time factors


@dataclass
class PSRun:
    """What one parameter-server run measured."""

    end_s: float
    spans: list[Span]
    network: NetworkBackend
    events: int
    steps_per_worker: np.ndarray
    staleness: np.ndarray     # one entry per applied update
    failed_devices: list[int]


class ParameterServer:
    def __init__(self, topology: Topology, job: PSJob, network: NetworkFactory,
                 failures: Iterable[tuple[float, int]] = ()):
        self.env = CountingEnvironment()
        self.network = network(self.env, topology)
        self.job = job
        self.failures = failures
        n = len(job.placement)
        self.hosts = server_ranks(n, job.servers)
        self.host_devices = job.placement[self.hosts]
        self.shards = [simpy.Resource(self.env, capacity=1) for _ in self.hosts]
        self.version = np.zeros(len(self.hosts), dtype=np.int64)
        self.pushed = np.zeros(n, dtype=np.int64)
        self.live = np.ones(n, dtype=bool)
        self.claimed = 0
        self.budget = job.steps if job.mode == "bsp" else job.steps * n
        self.spans: list[Span] = []
        self.staleness: list[int] = []
        self.failed_devices: list[int] = []
        self._progress = self.env.event()
        self._rounds: dict[int, tuple[list[int], list[float], simpy.Event]] = {}
        self._open: dict[int, tuple[str, str, str, float]] = {}

    def run(self) -> PSRun:
        workers = {w: self.env.process(self._worker(w)) for w in range(len(self.live))}
        self.env.process(self._fail(workers))
        self.env.run()
        end = max((s.end_s for s in self.spans), default=0.0)
        return PSRun(end, self.spans, self.network, self.env.events_processed,
                     self.pushed.copy(),
                     np.asarray(self.staleness, dtype=np.int64), self.failed_devices)

    # --- workers -------------------------------------------------------------------------

    def _worker(self, w: int) -> Generator[simpy.Event, Any, None]:
        job = self.job
        device = int(job.placement[w])
        t = 0
        try:
            while True:
                if job.mode == "ssp":
                    yield from self._gate(w, device, t)
                if not self._claim(t):
                    break
                yield from self._span(w, device, "comm", f"pull s{t}",
                                      self._transfer(self.host_devices, device))
                read = self.version.copy()
                yield from self._span(w, device, "compute", f"fwd+bwd s{t}", self.env.timeout(
                    job.compute_s * float(job.factors[w, t])))
                yield from self._span(w, device, "comm", f"push s{t}",
                                      self._transfer(device, self.host_devices))
                if job.mode == "bsp":
                    yield from self._barrier(w, device, t)
                else:
                    self.env.process(self._apply(w, read))
                self.pushed[w] += 1
                t += 1
                self._notify()
        except simpy.Interrupt:
            self.failed_devices.append(device)
            if w in self._open:  # the step it was in is lost; its time still counts
                stream, name, category, start = self._open.pop(w)
                self.spans.append(Span(device, stream, f"{name} (failed)", category, start,
                                       self.env.now))
        self.live[w] = False
        self._notify()
        if job.mode == "bsp":
            self._release_rounds()

    def _claim(self, t: int) -> bool:
        """BSP: every worker runs ``steps`` steps; SSP/ASP: steps come from a shared budget."""
        if self.job.mode == "bsp":
            return t < self.budget
        if self.claimed >= self.budget:
            return False
        self.claimed += 1
        return True

    def _gate(self, w: int, device: int, t: int) -> Generator[simpy.Event, Any, None]:
        """SSP: start step t only once every live worker has pushed at least t - s steps."""
        bound = self.job.staleness
        assert bound is not None  # SyncSpec: ssp, the only mode with a gate, has a bound
        start = self.env.now
        while self._slowest() < t - bound:
            yield self._progress
        if self.env.now > start:
            self.spans.append(Span(device, "comm", f"ssp gate s{t}", "wait", start,
                                   self.env.now))

    def _slowest(self) -> float:
        live = self.pushed[self.live]
        return float(live.min()) if len(live) else float("inf")

    def _notify(self) -> None:
        done, self._progress = self._progress, self.env.event()
        done.succeed()

    def _span(self, w: int, device: int, category: str, name: str,
              event: simpy.Event) -> Generator[simpy.Event, Any, None]:
        stream = "compute" if category == "compute" else "comm"
        start = self.env.now
        self._open[w] = (stream, name, category, start)
        yield event
        del self._open[w]
        self.spans.append(Span(device, stream, name, category, start, self.env.now))

    def _transfer(self, src: np.ndarray | int, dst: np.ndarray | int) -> simpy.Event:
        """One shard's slice of the gradients (G/K) between a worker and every shard."""
        src, dst = np.broadcast_arrays(np.asarray(src), np.asarray(dst))
        return self.network.transfer(src.ravel(), dst.ravel(),
                                     self.job.grad_bytes / len(self.hosts))

    def _fail(self, workers: dict[int, simpy.Process]) -> Generator[simpy.Event, Any, None]:
        """Stop the worker of each failing device, in time order, until the job is over."""
        for at, device in self.failures:
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            if not any(p.is_alive for p in workers.values()):
                return
            worker = workers[rank_of(self.job.placement, device, "failures")]
            if worker.is_alive:
                worker.interrupt()

    # --- servers -------------------------------------------------------------------------

    def _apply(self, w: int, read: np.ndarray) -> Generator[simpy.Event, Any, None]:
        """SSP/ASP: every shard applies this worker's update when its turn comes."""
        stale = yield self.env.all_of([self.env.process(self._apply_shard(k, w, read[k]))
                                       for k in range(len(self.hosts))])
        self.staleness.append(max(stale.values()))

    def _apply_shard(self, k: int, w: int, read: int) -> Generator[simpy.Event, Any, int]:
        with self.shards[k].request() as turn:
            yield turn
            start = self.env.now
            stale = int(self.version[k] - read)
            yield self.env.timeout(self.job.apply_s)
            self.version[k] += 1
            self.spans.append(Span(int(self.host_devices[k]), f"server {k}",
                                   f"apply update of rank {w}", "compute", start, self.env.now))
        return stale

    def _barrier(self, w: int, device: int, t: int) -> Generator[simpy.Event, Any, None]:
        """BSP: wait for every live worker's push of step t (straggler wait), then for the
        shards to sum the gradients and apply the update."""
        arrived, _, applied = self._rounds.setdefault(t, ([], [], self.env.event()))
        arrived.append(w)
        start = self.env.now
        self._open[w] = ("comm", f"wait for peers s{t}", "wait", start)
        self._release_rounds()
        yield applied
        self._open.pop(w, None)
        last = self._rounds[t][1][0]
        if last > start:
            self.spans.append(Span(device, "comm", f"wait for peers s{t}", "wait", start, last))

    def _release_rounds(self) -> None:
        """Start the update of every step whose live workers have all pushed."""
        live = set(np.flatnonzero(self.live).tolist())
        for t, (arrived, released, applied) in self._rounds.items():
            if not released and live <= set(arrived):
                released.append(self.env.now)
                self.env.process(self._sum_and_apply(t, len(arrived), applied))

    def _sum_and_apply(self, t: int, gradients: int,
                       applied: simpy.Event) -> Generator[simpy.Event, Any, None]:
        """Every shard sums the gradients it received and applies one update."""
        start = self.env.now
        yield self.env.timeout(self.job.sum_s * (gradients - 1) + self.job.apply_s)
        self.version += 1
        self.staleness.append(0)
        for k, device in enumerate(self.host_devices):
            self.spans.append(Span(int(device), f"server {k}", f"sum + apply s{t}",
                                   "compute", start, self.env.now))
        applied.succeed()
