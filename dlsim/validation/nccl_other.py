"""All-reduce bus bandwidth on Hopper and Blackwell nodes (``nccl_h100_other_sources.csv``):
NVLS and Ring, fitted on one source and checked on the others.

NVIDIA's DGX H100 sample output (dgxc-benchmarking) is the only source anything was fitted
on: NVLS's per-collective latency (``dlsim.network.protocol.NVLS_LATENCY_US``), from its
rows of 4 MiB and more; those rows are marked ``fitted``. The H200 and B200 tables
(stas00/ml-engineering: 4 to 8 GPUs of one node at 8 GiB, NCCL's default pick and with NVLS
off) and the B200 size sweep are held out. Rows below 4 MiB, rows over networks no profile
describes (AWS EFA, GCP TCPXO) and the figures quoted in prose without a size are listed,
not simulated. Each row is predicted with ``kind: collective`` on the matching preset.
"""

from __future__ import annotations

import re
from pathlib import Path

from dlsim.simulate import simulate
from dlsim.validation.reading import Row, read_table, row

TABLE = "nccl_h100_other_sources"
FILE = "nccl_h100_other_sources.csv"
MIN_BYTES = 4 * 2 ** 20  # the target's range; below it launch and sync latency dominate
# hardware column prefix -> cluster preset
PRESETS = {"NVIDIA H100": "dgx-h100", "8x H200": "hgx-h200", "8x B200": "dgx-b200",
           "AWS P6-B200": "dgx-b200"}
_RING_NOTE = re.compile(r"busbw with NVLS off[^=]*=\s*([0-9.]+)")


def _busbw(preset: str, gpus: int, size_bytes: float, algorithm: str) -> float:
    return simulate({"name": "nccl", "kind": "collective",
                     "cluster": {"preset": preset, "nodes": 1},
                     "collective": {"op": "allreduce", "algorithm": algorithm,
                                    "size_bytes": size_bytes, "devices": gpus}}).busbw_GBps


def _label(size_bytes: float) -> str:
    return f"{size_bytes / 2 ** 30:g} GiB" if size_bytes >= 2 ** 30 else \
        f"{size_bytes / 2 ** 20:g} MiB"


def nccl_other_sources(directory: Path) -> list[Row]:
    rows = []
    for r in read_table(directory, FILE):
        preset = next((p for k, p in PRESETS.items() if r["hardware"].startswith(k)), None)
        size = float(r["message_size_bytes"]) if r["message_size_bytes"] else None
        measured = float(r["busbw_GBps_out_of_place"])
        gpus, nodes = int(r["gpus_total"]), int(r["nodes"])
        where = f"{r['hardware'].split(' (')[0]} {gpus} GPUs"
        reason = ("no message size" if size is None else
                  f"{nodes} nodes over {r['interconnect'][:40]}" if nodes > 1 else
                  "below 4 MiB" if size < MIN_BYTES else None if preset else "no preset")
        if reason is not None:
            label = _label(size) if size else r["location"][:30]
            rows.append(row(TABLE, f"{where} {label} (not simulated: {reason})",
                            float("nan"), measured or float("nan"), "GB/s"))
            continue  # (a 0.00 GB/s row of a tiny size has no error to state)
        assert preset is not None and size is not None
        fitted = r["source"].startswith("github NVIDIA/dgxc-benchmarking")
        # the 1-node B200 sweep is torch's all_reduce_bench.py, not nccl-tests
        tag = ("fitted" if fitted else "held out, torch bench" if "torch" in r["collective"]
               else "held out")
        rows.append(row(TABLE, f"{where} {_label(size)} auto ({tag})",
                        _busbw(preset, gpus, size, "auto"), measured, "GB/s"))
        ring = _RING_NOTE.search(r["notes"])
        if ring:
            rows.append(row(TABLE, f"{where} {_label(size)} ring ({tag})",
                            _busbw(preset, gpus, size, "ring"), float(ring.group(1)), "GB/s"))
    return rows
