"""The parameter server (Li et al., OSDI 2014): workers push gradients to server shards and
pull the parameters back. A deployment choice rather than a library algorithm, so ``auto``
never picks it.
"""

from __future__ import annotations

import numpy as np

from dlsim.contract.errors import ScenarioError
from dlsim.contract.registry import register
from dlsim.network.algorithms.base import ALGORITHM, Algorithm, Phase


def server_ranks(n: int, servers: int) -> np.ndarray:
    """Ranks that host a parameter-server shard, spread evenly over the job."""
    return np.unique(np.linspace(0, n, servers, endpoint=False).astype(int))


def dedicated_hosts(n_devices: int, workers: np.ndarray, servers: int) -> np.ndarray:
    """Devices for ``servers`` dedicated parameter servers: the highest-numbered devices
    that run no worker (a separate rack of servers at the end of the cluster)."""
    free = np.setdiff1d(np.arange(n_devices), workers)
    if len(free) < servers:
        raise ScenarioError(f"{servers} dedicated parameter servers need {servers} devices "
                            f"besides the {len(workers)} workers, but the cluster has only "
                            f"{len(free)} more; lower the worker count (parallelism.data or "
                            "collective.devices) or use server_placement: colocated.",
                            field="communication.servers")
    return free[len(free) - servers:]


def _queue_position(senders: np.ndarray) -> np.ndarray:
    """1 + how many earlier messages the same sender has queued: a sender posts its
    messages one after another, each paying a message latency (LogP's per-message
    overhead, Culler et al. 1993), so its k-th message starts after k latencies."""
    order = np.argsort(senders, kind="stable")
    position = np.empty(len(senders), dtype=int)
    _, starts, counts = np.unique(senders[order], return_index=True, return_counts=True)
    position[order] = np.arange(len(senders)) - np.repeat(starts, counts) + 1
    return position


def parameter_server(devices: np.ndarray, size_bytes: float, servers: int = 1,
                     hosts: np.ndarray | None = None, **_: object) -> list[Phase]:
    """Push gradients to K server shards, then pull the updated parameters (Li et al. 2014).

    Colocated (``hosts`` None): servers run on K of the N ranks and shard k owns G/K bytes;
    every rank pushes its G/K slice to each other server and pulls it back: 2(N-1)*G bytes
    in total as for the ring, but each server's link carries (N-1)*G/K of it in each
    direction. Dedicated: the K ``hosts`` are devices of their own and all N workers push
    and pull: 2*N*G bytes, N*G/K through each server's link each way. Each sender posts its
    messages in turn (K per worker on push, one per worker per server on pull), so many
    small shards pay many message latencies.
    """
    n = len(devices)
    if hosts is None:
        if servers < 1 or servers > n:
            raise ScenarioError(f"a parameter server needs 1..{n} servers for {n} devices, "
                                f"got {servers}.", field="communication.servers")
        if n < 2:
            return []
        hosts = devices[server_ranks(n, servers)]
    workers = np.repeat(devices, len(hosts))
    shards = np.tile(hosts, n)
    away = workers != shards  # a colocated worker's own shard needs no message
    workers, shards = workers[away], shards[away]
    shard = np.full(len(workers), size_bytes / len(hosts))
    return [Phase("push to servers", workers, shards, shard, 1, _queue_position(workers)),
            Phase("pull from servers", shards, workers, shard, 1, _queue_position(shards))]


register(ALGORITHM, "ps", Algorithm({"allreduce": parameter_server}, auto=False,
                                    precedence=5))
