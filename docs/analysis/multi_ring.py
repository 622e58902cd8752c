"""Draw docs/img/multi-ring.png: one ring against rings over every lane, on a mesh and a torus.

Left: all-reduce bus bandwidth against size on one DGX-1 (8 V100, NVLink 2 hybrid cube
mesh) for NCCL's single ring, the multi-ring (three lane-disjoint rings, each run both ways)
and ``auto``, with the closed form of all six lanes at NCCL's payload rate (the
``multi_ring_closed_forms`` rows). Right: the same on a TPU v4 4x4x4 slice, one ring against
per-dimension rings, with six ICI links' rate. Every predicted value is ``kind: collective``
on the system preset.

Run: python docs/analysis/multi_ring.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

import dlsim  # noqa: E402
from dlsim.data import VALIDATION  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "multi-ring.png"


def busbw(preset: str, size: float, algorithm: str) -> float:
    return dlsim.simulate({"name": "multi-ring", "kind": "collective",
                           "cluster": {"preset": preset},
                           "collective": {"op": "allreduce", "algorithm": algorithm,
                                          "size_bytes": size}}).busbw_GBps


def main() -> None:
    closed = pd.read_csv(VALIDATION / "multi_ring_closed_forms.csv").set_index("system")
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    sizes = [2.0 ** k for k in range(12, 35, 2)]
    panels = (("dgx1-v100", "multi-ring", "8x V100 DGX-1 (hybrid cube mesh), NCCL"),
              ("tpu-v4-slice", "torus-rings", "TPU v4 4x4x4 slice (ideal model)"))
    for ax, (preset, rings, title) in zip(axes, panels, strict=True):
        for algorithm, style, width in (("ring", "--", 1.5), (rings, "-", 5), ("auto", "-", 1.5)):
            ax.plot(sizes, [busbw(preset, s, algorithm) for s in sizes], style, lw=width,
                    alpha=0.5 if width > 2 else 1.0, label=f"dlsim {algorithm}")
        target = closed.loc[preset]
        ax.axhline(target.busbw_GBps, color="grey", lw=0.8)
        ax.plot([target.message_size_bytes], [target.busbw_GBps], "ks", mfc="none",
                label=f"all lanes in use, closed form ({target.busbw_GBps:g} GB/s)")
        ax.set(xscale="log", xlabel="message size, bytes", ylabel="bus bandwidth, GB/s",
               title=title)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
