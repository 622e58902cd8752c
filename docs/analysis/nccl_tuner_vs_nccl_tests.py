"""What NCCL's own cost model predicts for the nccl-tests run dlsim validates against.

The run (Azure AI-benchmarking-guide, ND A100 v4 results): NCCL 2.18.5, nccl-tests
all_reduce_perf -b 8 -e 8G -f 2 -g 8 -n 40, in-place busbw, NCCL_ALGO=NVLS. A100s have no
NVLink SHARP, so NCCL 2.18 disables NVLS and, finding neither Ring nor Tree enabled,
re-enables both (src/graph/tuning.cc, "ignoring NCCL_ALGO"): the run is NCCL's default
choice. This script evaluates NCCL 2.18's tuner (ncclTopoTuneModel / ncclTopoGetAlgoTime,
constants copied from that file) for 8 ranks on one NVSwitch node, with the ring and tree
graphs of an A100 NVSwitch board (12 channels of 20 GB/s before NCCL duplicates them to
24), and prints the time NCCL itself expects next to the measured time.

Run: python docs/analysis/nccl_tuner_vs_nccl_tests.py [path/to/nccl_allreduce_busbw_8xA100.csv]
"""

from __future__ import annotations

import csv
import math
import sys
from pathlib import Path

RANKS, CHANNELS, BW_PER_CHANNEL = 8, 12, 20.0
PROTOCOLS = ("LL", "LL128", "Simple")
BASE_LAT = {"tree": (4.4, 4.4, 0.0), "ring": (3.6, 10.0, 8.4)}
HW_LAT_NVLINK = {"tree": (0.52, 1.25, 28.0), "ring": (0.47, 1.9, 3.4)}
LL_MAX_BW, LL128_MAX_BW_PER_CH, TREE_MAX_BW_PER_CH = 87.7, 20.0, 24.0  # Ampere, one node
TREE_CORRECTION = {  # powers of two from 64 B
    "LL": (1.0, 1.0, 1.0, 1.0, .9, .8, .7, .7, .7, .7, .6, .5, .4, .4, .5, .6, .7, .8, .9, 1.0,
           1.0, 1.0, 1.0),
    "LL128": (1.0, 1.0, 1.0, 1.0, 1.0, .9, .8, .8, .8, .7, .6, .6, .6, .6, .6, .6, .8, .9, .9,
              .9, .9, 1.0, 1.0),
    "Simple": (.9, .9, .9, .9, .9, .9, .9, .8, .7, .6, .6, .5, .5, .5, .5, .6, .7, .8, .7, .7,
               .8, .9, .9)}


def model() -> dict[tuple[str, str], tuple[float, float]]:
    """(algorithm, protocol) -> (latency us, algorithm bandwidth GB/s) for all-reduce."""
    steps = 2 * (RANKS - 1)
    out = {}
    for algo in ("tree", "ring"):
        for p, proto in enumerate(PROTOCOLS):
            bus = min(CHANNELS * BW_PER_CHANNEL, 235.0)  # Ampere cap
            if algo == "ring" and proto == "LL":
                bus = min(LL_MAX_BW, bus / 4)
            if algo == "ring" and proto == "LL128":
                bus = min(bus * 0.92, LL128_MAX_BW_PER_CH * CHANNELS)
            if algo == "tree":
                bus = min(bus * 0.92, CHANNELS * TREE_MAX_BW_PER_CH)
                if proto == "LL":
                    bus = min(bus / 3.8, LL_MAX_BW)
                if proto == "LL128":
                    bus = min(bus * 7 / 9, LL128_MAX_BW_PER_CH * CHANNELS)
            ratio = RANKS / steps if algo == "ring" else 0.5
            hw = HW_LAT_NVLINK[algo][p]
            lat = BASE_LAT[algo][p] + (steps * hw if algo == "ring" else 2 * (RANKS - 1) * hw)
            out[algo, proto] = lat, bus * ratio
    return out


def predicted_us(size: float, table: dict) -> tuple[float, str]:
    """NCCL's choice: the lowest estimated time over algorithms and protocols."""
    best = (math.inf, "")
    log_size = int(math.log2(max(size, 64) // 64))
    for (algo, proto), (lat, bw) in table.items():
        if algo == "tree" and log_size < 23:
            bw *= TREE_CORRECTION[proto][log_size]
        best = min(best, (lat + size / (1000 * bw), f"{algo}/{proto}"))
    return best


def main(path: Path) -> None:
    table = model()
    print(f"{'size':>6} {'NCCL choice':>12} {'NCCL us':>9} {'measured us':>12} {'meas/NCCL':>9}")
    with path.open() as f:
        for row in csv.DictReader(f):
            size = float(row["size_bytes_approx"])
            measured = size * 2 * (RANKS - 1) / RANKS / (float(row["busbw_gbps"]) * 1e3)
            nccl, choice = predicted_us(size, table)
            print(f"{row['size_label']:>6} {choice:>12} {nccl:9.1f} {measured:12.1f} "
                  f"{measured / nccl:9.2f}")


if __name__ == "__main__":
    default = Path(__file__).resolve().parents[3] / "shared" / "validation"
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else default / "nccl_allreduce_busbw_8xA100.csv")
