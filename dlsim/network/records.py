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
        n_links = len(topology.edges)
        self.link_bytes = np.zeros(n_links)
        self.link_busy_s = np.zeros(n_links)
        self.bytes_injected = 0.0
        self.flows_started = 0
