"""Draw docs/img/nvls-vs-ring.png: NVLS against the ring on one node, simulated and measured.

Left: all-reduce bus bandwidth against size on one DGX H100 (8 GPUs) for ring, NVLS and
``auto`` (NCCL's tuner), with NVIDIA's DGX H100 sample output, the rows NVLS's latency was
fitted on. Right: the held-out 8 GiB tables on 4-8 GPUs of an 8x H200 and an 8x B200 node,
NCCL's default pick (NVLS from 5 GPUs) and NVLS off (Ring), predicted as lines and measured
as points. Every predicted value is ``kind: collective`` on the system preset.

Run: python docs/analysis/nvls_vs_ring.py [path/to/nccl_h100_other_sources.csv]
"""

from __future__ import annotations

import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import dlsim  # noqa: E402
from dlsim.data import VALIDATION  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "nvls-vs-ring.png"


def busbw(preset: str, size: float, algorithm: str, gpus: int = 8) -> float:
    return dlsim.simulate({"name": "nvls", "kind": "collective", "cluster": {"preset": preset},
                           "collective": {"op": "allreduce", "algorithm": algorithm,
                                          "size_bytes": size, "devices": gpus}}).busbw_GBps


def main(table: Path) -> None:
    rows = pd.read_csv(table)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [2.0 ** k for k in range(20, 35)]
    for algorithm, style in (("ring", "--"), ("nvls", ":"), ("auto", "-")):
        left.plot(sizes, [busbw("dgx-h100", s, algorithm) for s in sizes], style,
                  label=f"dlsim {algorithm}")
    h100 = rows[rows.source.str.startswith("github NVIDIA/dgxc-benchmarking")]
    h100 = h100[h100.message_size_bytes >= 2 ** 20]
    left.plot(h100.message_size_bytes, h100.busbw_GBps_out_of_place, "ko", ms=4,
              label="DGX H100 sample (fitted from 4 MiB)")
    left.set(xscale="log", xlabel="message size, bytes", ylabel="bus bandwidth, GB/s",
             title="8x H100, all-reduce")
    left.legend(fontsize=8)
    gpus = list(range(4, 9))
    for hardware, preset, colour in (("8x H200", "hgx-h200", "C0"), ("8x B200", "dgx-b200",
                                                                    "C3")):
        measured = rows[rows.hardware.str.startswith(hardware)
                        & (rows.message_size_bytes == 2 ** 33)].sort_values("gpus_total")
        ring = measured.notes.str.extract(r"NVLS off[^=]*=\s*([0-9.]+)")[0].astype(float)
        right.plot(gpus, [busbw(preset, 2.0 ** 33, "auto", g) for g in gpus], "-",
                   color=colour, label=f"{hardware} dlsim auto")
        right.plot(gpus, [busbw(preset, 2.0 ** 33, "ring", g) for g in gpus], "--",
                   color=colour, label=f"{hardware} dlsim ring")
        right.plot(measured.gpus_total, measured.busbw_GBps_out_of_place, "o", color=colour,
                   label=f"{hardware} measured default")
        right.plot(measured.gpus_total, ring, "s", mfc="none", color=colour,
                   label=f"{hardware} measured NVLS off")
    right.set_xticks(gpus)
    right.set(xlabel="GPUs in the all-reduce (one node)", ylabel="bus bandwidth, GB/s",
              title="8 GiB all-reduce, held out")
    right.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else VALIDATION / "nccl_h100_other_sources.csv")
