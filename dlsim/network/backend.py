"""The one interface between the engine and a network model, and the models that fill it.

ASTRA-sim's network backends share five calls (``sim_send``, ``sim_recv``,
``sim_schedule``, ``sim_get_time``, ``sim_notify_finished``). Under SimPy the clock
(``env.now``) and scheduling (``env.timeout``) are the environment's, and a send and its
receive are one flow, so the engine needs only: start a batch of flows now and get the event
that fires when the last byte arrives (``transfer``); change links' bandwidth from now on
(``scale_links``, a transient slow link); and the records the summary and link table read.
A backend is built per run on the run's environment (``NetworkFactory``).

- ``fluid``: flows share every link max-min fairly, rates recomputed whenever the set of
  flows changes (``dlsim.network.fluid``).
- ``analytical``: each batch takes its closed-form alpha-beta time alone; concurrent
  collectives do not slow each other (``dlsim.network.analytical``).

Both give the same times wherever a phase's flows share their bottleneck equally and nothing
else is in flight (a ring all-reduce on a ring or a switch); under contention the fluid
network is slower.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, runtime_checkable

import numpy as np
import simpy

from dlsim.hardware.topology import Topology
from dlsim.network.analytical import AnalyticalNetwork
from dlsim.network.fluid import Network


@runtime_checkable
class NetworkBackend(Protocol):
    """What the engine calls, and the records it reads after the run."""

    topology: Topology
    bytes_injected: float     # payload bytes handed to the network
    flows_started: int

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes each directed link carried on the wire (edge id order)."""
        ...

    @property
    def link_busy_s(self) -> np.ndarray:
        """Time each link carried any bytes."""
        ...

    def transfer(self, src: np.ndarray, dst: np.ndarray, size_bytes: float | np.ndarray,
                 rounds: int = 1, latency_rounds: int | np.ndarray | None = None,
                 latency_s: np.ndarray | None = None,
                 wire_factor: np.ndarray | None = None, instances: int = 1,
                 name: object = None) -> simpy.Event:
        """Send ``size_bytes[i]`` from device ``src[i]`` to ``dst[i]``, all starting now;
        ``instances`` k > 1 says the flows are k equal consecutive blocks (the instances of
        a collective), which a backend may price as copies of the first when they are;
        ``name`` (hashable), if given, stands for the same arguments whenever it recurs."""
        ...

    def scale_links(self, edges: np.ndarray, factor: float) -> None:
        """From now on, links ``edges`` carry ``factor`` of their nominal bandwidth."""
        ...

    def add_records(self, links: np.ndarray, values: np.ndarray, payload_bytes: float,
                    flows: int) -> None:
        """Records of traffic the engine priced without this network (``LinkRecords``)."""
        ...


NetworkFactory = Callable[[simpy.Environment, Topology], NetworkBackend]

# simulation.network in a scenario -> the backend
NETWORKS: dict[str, NetworkFactory] = {"fluid": Network, "analytical": AnalyticalNetwork}
