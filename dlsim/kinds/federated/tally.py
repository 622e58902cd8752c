"""What a federated run counts: rounds, participation, bytes, energy and wasted work.

Both simulators (synchronous rounds and FedBuff) add to one ``Tally``; the summary is built
from it alone.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from dlsim.contract.span import Span
from dlsim.kinds.federated.population import Population


@dataclass
class Tally:
    pop: Population
    round_start_s: list[float] = field(default_factory=list)
    round_end_s: list[float] = field(default_factory=list)
    round_aggregated: list[int] = field(default_factory=list)
    failed_rounds: int = 0
    selected: np.ndarray = field(init=False)
    aggregated: np.ndarray = field(init=False)
    compute_s: np.ndarray = field(init=False)   # device-seconds of training, per class
    dropped: Counter = field(default_factory=Counter)  # reason -> clients
    wasted_flops: float = 0.0
    wasted_device_s: float = 0.0
    bytes_down: float = 0.0
    bytes_up: float = 0.0
    bytes_resent: float = 0.0
    samples_aggregated: float = 0.0
    events: int = 0
    staleness: list[int] = field(default_factory=list)
    spans: list[Span] = field(default_factory=list)

    def __post_init__(self) -> None:
        k = len(self.pop.classes)
        self.selected = np.zeros(k, dtype=np.int64)
        self.aggregated = np.zeros(k, dtype=np.int64)
        self.compute_s = np.zeros(k)

    def add_round(self, start_s: float, end_s: float, aggregated: int, failed: bool) -> None:
        self.round_start_s.append(start_s)
        self.round_end_s.append(end_s)
        self.round_aggregated.append(aggregated)
        self.failed_rounds += int(failed)

    def add_clients(self, clients: np.ndarray, taken: np.ndarray, compute_s: np.ndarray,
                    down_bytes: np.ndarray, up_bytes: np.ndarray) -> None:
        """Selected ``clients``; ``taken`` marks the aggregated ones; the bytes each moved
        (payload) and the seconds each trained."""
        classes = self.pop.class_of[clients]
        k = len(self.pop.classes)
        self.selected += np.bincount(classes, minlength=k)
        self.aggregated += np.bincount(classes[taken], minlength=k)
        self.compute_s += np.bincount(classes, weights=compute_s, minlength=k)
        resend = self.pop.loss[clients] / (1 - self.pop.loss[clients])
        self.bytes_down += float(down_bytes.sum())
        self.bytes_up += float(up_bytes.sum())
        self.bytes_resent += float(((down_bytes + up_bytes) * resend).sum())
        self.samples_aggregated += float(self.pop.samples[clients[taken]].sum())

    def add_waste(self, reason: str, count: int, flops: float, device_s: float) -> None:
        if count:
            self.dropped[reason] += count
            self.wasted_flops += flops
            self.wasted_device_s += device_s

    def add_spans(self, client: int, label: str, parts: list[tuple[str, str, float, float]]
                  ) -> None:
        """(category, name, start, end) intervals of one client; empty ones are skipped."""
        for category, name, start, end in parts:
            if end > start:
                self.spans.append(Span(client, "client", f"{name} {label}", category,
                                       start, end))
