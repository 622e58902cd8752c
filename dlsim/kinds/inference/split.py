"""Where to split a model between the user's device and a server (Neurosurgeon: Kang et al.,
"Neurosurgeon: Collaborative Intelligence Between the Cloud and Mobile Edge", ASPLOS'17).

Neurosurgeon predicts each layer's latency and energy on both sides and tries every
split point: the device runs layers [0, s), sends the activation at the split up the link,
the server runs the rest and sends the result back. Split 0 offloads the raw input, split L
(the number of layers) runs everything locally and sends nothing. The best split for an
objective is its argmin; ties go to the split with fewer layers on the device.

With early exits each split's cost is an expectation over where requests leave
(``exits.exit_shares``). Pipelining requests across the split (device, uplink, server,
downlink working on different requests at once) gives a throughput of batch / the slowest
stage, where a transfer stage is its bytes / bandwidth (latency overlaps between requests).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from dlsim.contract.inference import RadioSpec
from dlsim.kinds.inference.exits import Exit, exit_shares
from dlsim.kinds.inference.path import Route, outcome, walk
from dlsim.kinds.inference.tiers import Hop, Tier
from dlsim.workload.model import Model


def split_table(device: Tier, server: Tier, link: Hop, model: Model, exits: Sequence[Exit],
                dtype: str, batch: int, radio: RadioSpec | None) -> pd.DataFrame:
    """One row per split point: the parts of the full request's latency, its device energy,
    the bytes sent, the pipelined throughput and, with exits, the expected latency and
    energy over where requests leave."""
    shares = exit_shares([e.probability for e in exits])
    rows = []
    for s in range(len(model.layers) + 1):
        route = Route((device, server), (link,), (s,))
        paths = [walk(route, model, exits, i, dtype) for i in range(len(exits) + 1)]
        full = paths[-1]
        device_s, upload_s, server_s, download_s = (
            sum(g.duration_s for g in full if g.kind == kind and g.where == w)
            for kind, w in (("compute", 0), ("up", 0), ("compute", 1), ("down", 0)))
        stages = [device_s, server_s] + [g.nbytes / (link.up_Bps if g.kind == "up" else
                                                    link.down_Bps)
                                         for g in full if g.kind != "compute"]
        outcomes = [outcome(p, route, radio) for p in paths]
        rows.append({
            "device_layers": s,
            "split_after": model.layers[s - 1].name if s else "(input)",
            "device_s": device_s, "upload_s": upload_s, "server_s": server_s,
            "download_s": download_s, "latency_s": outcomes[-1].latency_s,
            "energy_J": outcomes[-1].energy_J,
            "upload_bytes": sum(g.nbytes for g in full if g.kind == "up"),
            "throughput_per_s": batch / max(stages),
        })
        if exits:
            rows[-1]["expected_latency_s"] = float(np.dot(shares, [o.latency_s
                                                                  for o in outcomes]))
            rows[-1]["expected_energy_J"] = float(np.dot(shares, [o.energy_J
                                                                 for o in outcomes]))
    return pd.DataFrame(rows)


def best_row(table: pd.DataFrame, column: str) -> dict[str, Any]:
    """The row minimising ``column`` (first, i.e. fewest device layers, on ties)."""
    row = table.iloc[int(np.argmin(table[column].to_numpy()))]
    return {str(k): (v.item() if isinstance(v, np.generic) else v) for k, v in row.items()}
