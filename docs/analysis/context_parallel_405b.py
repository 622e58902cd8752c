"""Draw docs/img/context-parallel-405b.png: Llama 3.1 405B on 1,024 H100 at 8k and at 128k tokens.

Runs scenarios/llama31-405b-8k.yaml (t8 p8 c2 d8, 256 sequences) and llama31-405b-128k.yaml
(t8 p8 c16 d1, 16 sequences): the same 2M tokens a step. Left: each step split into compute,
exposed communication and pipeline bubble, with tokens/s per GPU on top. Right: the time
the critical GPU spends in each parallel axis's collectives, and the part of it that no
compute hid (the context-parallel K/V ring is the one to watch). Prints the numbers the docs
page quotes.

Run: python docs/analysis/context_parallel_405b.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dlsim  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "docs" / "img" / "context-parallel-405b.png"
RUNS = {"8k tokens\nt8 p8 c2 d8": "llama31-405b-8k",
        "128k tokens\nt8 p8 c16 d1": "llama31-405b-128k"}
PARTS = ("compute", "exposed_comm", "bubble")
AXES = ("context", "tensor", "data", "pipeline")


def main() -> None:
    rows = {label: dlsim.simulate(str(ROOT / "scenarios" / f"{name}.yaml")).summary
            for label, name in RUNS.items()}
    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.6))
    labels = list(rows)
    bottom = [0.0] * len(rows)
    for part in PARTS:
        values = [rows[k]["breakdown_s"][part] for k in labels]
        left.bar(labels, values, bottom=bottom, label=part.replace("_", " "), width=0.5)
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    tokens = {k: 2 ** 21 / r["step_time_s"] / r["devices"] for k, r in rows.items()}
    for i, k in enumerate(labels):
        left.text(i, bottom[i] + 0.4, f"{bottom[i]:.1f} s, {tokens[k]:.0f} tok/s/GPU\n"
                  f"MFU {rows[k]['mfu']:.1%}", ha="center", fontsize=8)
    left.set_ylim(0, max(bottom) * 1.2)
    left.set_ylabel("step time (s)")
    left.set_title("step of 2M tokens (BF16)")
    left.legend(fontsize=8, loc="upper left")
    width = 0.2
    for j, axis in enumerate(AXES):
        for i, k in enumerate(labels):
            comm = rows[k]["communication_by_axis"].get(axis, {"time_s": 0.0, "exposed_s": 0.0})
            x = i + (j - 1.5) * width
            right.bar(x, comm["time_s"], width, color=f"C{j}", alpha=0.35,
                      label=f"{axis}: in collectives" if i == 0 else None)
            right.bar(x, comm["exposed_s"], width, color=f"C{j}",
                      label=f"{axis}: exposed" if i == 0 else None)
    right.set_xticks(range(len(labels)), labels)
    right.set_ylabel("seconds per step, critical GPU")
    right.set_title("per axis: in collectives (pale), exposed (dark)")
    right.legend(fontsize=7, ncol=2, loc="upper left")
    right.set_ylim(0, 3.6)
    fig.suptitle("Llama 3.1 405B on 1,024 H100: 128k tokens take 2.6x the 8k step; the K/V ring "
                 "of c = 16 is hidden, the bubble (16 sequences, p = 8) is not", fontsize=10)
    fig.tight_layout()
    fig.savefig(OUT, dpi=90)
    for k, r in rows.items():
        print(k.replace("\n", " "), round(r["step_time_s"], 3), "s",
              {p: round(r["breakdown_s"][p], 3) for p in PARTS}, f"{tokens[k]:.1f} tok/s/GPU",
              f"mfu {r['mfu']:.3f}", f"{r['tflops_per_device']:.0f} TFLOP/s",
              f"{r['memory_per_device_bytes'] / 1e9:.1f} GB",
              {m: round(v / 1e9, 1) for m, v in r["memory_breakdown_bytes"].items()},
              {a: (round(c["bytes"] / 1e12, 1), round(c["time_s"], 3), round(c["exposed_s"], 3))
               for a, c in r["communication_by_axis"].items()})


if __name__ == "__main__":
    main()
