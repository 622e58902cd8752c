"""All-reduce bus bandwidth on a DGX-1 mesh and a TPU v4 torus (``multi_ring_closed_forms.csv``):
the multi-ring and per-dimension torus algorithms against the closed form of every lane in
use, the target issue 14 allows where no published measurement was found (the CSV's
``quality`` column says so). Nothing is fitted: the rows are predicted with ``kind:
collective`` and ``algorithm: auto`` on the named preset, so they also check that ``auto``
finds the rings.
"""

from __future__ import annotations

from pathlib import Path

from dlsim.simulate import simulate
from dlsim.validation.reading import Row, read_table, row

TABLE = "multi_ring_closed_forms"
FILE = "multi_ring_closed_forms.csv"


def multi_ring_closed_forms(directory: Path) -> list[Row]:
    rows = []
    for r in read_table(directory, FILE):
        size = float(r["message_size_bytes"])
        result = simulate({"name": "multi-ring", "kind": "collective",
                           "cluster": {"preset": r["system"], "nodes": 1},
                           "collective": {"op": "allreduce", "algorithm": "auto",
                                          "size_bytes": size,
                                          "devices": int(r["devices"])}})
        rows.append(row(TABLE, f"{r['system']} {int(r['devices'])} devices "
                               f"{size / 2 ** 30:g} GiB auto ({result.summary['algorithm_chosen']}"
                               f", vs {r['basis']})", result.busbw_GBps,
                        float(r["busbw_GBps"]), "GB/s"))
    return rows
