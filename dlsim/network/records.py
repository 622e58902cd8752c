"""What every network backend records of a run: the bytes each link carried, how long it was
busy, the payload injected and the flows started; the summary and the link table read them."""

from __future__ import annotations

import numpy as np
import simpy

from dlsim.hardware.topology import Topology


class LinkRecords:
    """The run's environment and topology, the links' capacities (which ``scale_links``
    changes) and the records, all zero at the start of a run."""

    def __init__(self, env: simpy.Environment, topology: Topology):
        self.env = env
        self.topology = topology
        self.capacity_Bps = topology.capacity_Bps.copy()
        # the two per-link records as rows of one array, so that both move in one go
        self._records = np.zeros((2, len(topology.edges)))
        self.bytes_injected = 0.0
        self.flows_started = 0

    @property
    def link_bytes(self) -> np.ndarray:
        """Bytes each directed link carried on the wire (edge id order)."""
        self._settle()
        return self._records[0]

    @property
    def link_busy_s(self) -> np.ndarray:
        """Time each link carried any bytes (edge id order)."""
        self._settle()
        return self._records[1]

    def add_records(self, links: np.ndarray, values: np.ndarray, payload_bytes: float,
                    flows: int) -> None:
        """Records of traffic not sent through this network (``values[0]`` bytes and
        ``values[1]`` busy seconds of ``links``): phases the engine's isolated schedule
        priced alone (``dlsim.engine.isolated``), added once the run has ended."""
        self._settle()
        self._records[:, links] += values
        self.bytes_injected += payload_bytes
        self.flows_started += flows

    def _settle(self) -> None:
        """Bring the records up to date before they are read (a backend that defers its
        bookkeeping does it here)."""
