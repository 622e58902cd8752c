"""Draw docs/img/mixtral-expert-placement.png: Mixtral 8x22B on 64 H100, expert parallelism 8
with its all-to-all inside one node (pack) or across eight nodes (spread).

Runs scenarios/mixtral-8x22b-ep.yaml at each placement. Left: each step split into compute,
exposed communication and pipeline bubble, with tokens/s per GPU on top. Right: the time the
critical GPU spends in the expert all-to-alls and the other axes' collectives, and the part
no compute hid. Prints the numbers the docs page quotes.

Run: python docs/analysis/mixtral_expert_placement.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import yaml  # noqa: E402

import dlsim  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img" / "mixtral-expert-placement.png"
SCENARIO = ROOT / "scenarios" / "mixtral-8x22b-ep.yaml"
LABELS = {"pack": "pack: experts on\none node's NVSwitch",
          "spread": "spread: experts on\n8 nodes, InfiniBand"}
PARTS = ("compute", "exposed_comm", "bubble")


def main() -> None:
    data = yaml.safe_load(SCENARIO.read_text())
    placements = data.pop("sweep")["placement"]
    rows = {p: dlsim.simulate(data | {"placement": p}).summary for p in placements}
    tokens = {p: r["global_batch"] * 4096 / r["step_time_s"] / r["devices"]
              for p, r in rows.items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.6))
    labels = [LABELS[p] for p in rows]
    bottom = [0.0] * len(rows)
    for part in PARTS:
        values = [r["breakdown_s"][part] for r in rows.values()]
        left.bar(labels, values, bottom=bottom, label=part.replace("_", " "), width=0.5)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    for i, p in enumerate(rows):
        left.text(i, bottom[i] + 0.2, f"{bottom[i]:.2f} s, {tokens[p]:,.0f} tok/s/GPU",
                  ha="center", fontsize=8)
    left.set_ylim(0, max(bottom) * 1.2)
    left.set_ylabel("step time (s)")
    left.set_title("step, 256 x 4,096 tokens (BF16)")
    left.legend(fontsize=8, loc="upper left")
    axes = list(next(iter(rows.values()))["communication_by_axis"])
    width = 0.8 / len(axes)
    for j, axis in enumerate(axes):
        for i, r in enumerate(rows.values()):
            comm = r["communication_by_axis"][axis]
            x = i + (j - (len(axes) - 1) / 2) * width
            right.bar(x, comm["time_s"], width, color=f"C{j}", alpha=0.35,
                      label=f"{axis}: in collectives" if i == 0 else None)
            right.bar(x, comm["exposed_s"], width, color=f"C{j}",
                      label=f"{axis}: exposed" if i == 0 else None)
    right.set_xticks(range(len(rows)), labels)
    right.set_ylabel("seconds per step, critical GPU")
    right.set_title("per axis: in collectives (pale), exposed (dark)")
    right.legend(fontsize=7, ncol=2, loc="upper left")
    right.set_ylim(0, 3.5)
    slower = rows["spread"]["step_time_s"] / rows["pack"]["step_time_s"] - 1
    fig.suptitle(f"Mixtral 8x22B on 64 H100, EP 8: spreading the experts over nodes makes the "
                 f"step {slower:.0%} slower (all-to-all over InfiniBand)", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    for p, r in rows.items():
        print(p, round(r["step_time_s"], 3), "s", {k: round(r["breakdown_s"][k], 3) for k in PARTS},
              f"{tokens[p]:.0f} tok/s/GPU", f"mfu {r['mfu']:.3f}",
              f"{r['memory_per_device_bytes'] / 1e9:.1f} GB",
              {a: (round(c["bytes"] / 1e12, 2), round(c["time_s"], 3), round(c["exposed_s"], 3))
               for a, c in r["communication_by_axis"].items()})


if __name__ == "__main__":
    main()
