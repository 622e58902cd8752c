"""Device, edge and cloud with exits between them (DDNN: Teerapittayanon, McDanel & Kung,
"Distributed Deep Neural Networks over the Cloud, the Edge and End Devices", ICDCS'17).

DDNN runs the first layers on the end device with a local exit, the next on an edge
server with an edge exit, the rest in the cloud; a request confident at a lower exit never
travels further, which is where its latency and communication savings come from.
Here the cut points and exits are the scenario's; each exit's cost is the request's path
(``path.walk``) up to it, and the expectation weights them by ``exits.exit_shares``. For
contrast it also gives the same model run wholly in the cloud with no early exits (the raw
input sent over both hops).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from dlsim.contract.inference import RadioSpec
from dlsim.kinds.inference.exits import Exit, exit_shares
from dlsim.kinds.inference.path import Route, outcome, walk
from dlsim.workload.model import Model

TIER_NAMES = ("device", "edge", "cloud")


def hierarchy_table(route: Route, model: Model, exits: Sequence[Exit], dtype: str,
                    radio: RadioSpec | None) -> tuple[pd.DataFrame, dict[str, float]]:
    """Rows per exit (where it is, the share leaving there, latency, bytes over all hops)
    and the expectation plus the cloud-only baseline."""
    shares = exit_shares([e.probability for e in exits])
    rows = []
    for i, share in enumerate(shares):
        segments = walk(route, model, exits, i, dtype)
        layer = exits[i].layer if i < len(exits) else len(model.layers) - 1
        tier = max(g.where for g in segments if g.kind == "compute")
        o = outcome(segments, route, radio)
        rows.append({"exit": f"after {model.layers[layer].name}" if i < len(exits)
                     else "final output", "tier": TIER_NAMES[tier], "share": float(share),
                     "latency_s": o.latency_s, "bytes": o.bytes_up + o.bytes_down,
                     "device_energy_J": o.energy_J})
    table = pd.DataFrame(rows)
    cloud = Route(route.tiers, route.hops, (0, 0))
    baseline = outcome(walk(cloud, model, [], 0, dtype), cloud, radio)
    expected = {
        "expected_latency_s": float(np.dot(table["share"], table["latency_s"])),
        "expected_bytes": float(np.dot(table["share"], table["bytes"])),
        "expected_device_energy_J": float(np.dot(table["share"], table["device_energy_J"])),
        "cloud_only_latency_s": baseline.latency_s,
        "cloud_only_bytes": baseline.bytes_up + baseline.bytes_down,
    }
    return table, expected
