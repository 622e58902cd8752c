"""Regenerate the synthetic traces in this folder: python traces/make_synthetic.py

The figures are invented (seeded draws), shaped like the FedScale and FLASH files that
dlsim.federated.traces reads; they are examples of the formats, not measurements.
"""

import json
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
DAY_S = 86400.0


def windows(rng: np.random.Generator) -> list[tuple[float, float]]:
    """One to three available windows a day (e.g. charging on Wi-Fi), 0.5-4 h each; one
    that runs past midnight is split in two, since the day repeats."""
    spans = []
    for _ in range(rng.integers(1, 4)):
        start = float(rng.uniform(0, DAY_S))
        end = start + float(rng.uniform(1800, 4 * 3600))
        spans += [(start, min(end, DAY_S))] + ([(0.0, end - DAY_S)] if end > DAY_S else [])
    merged: list[list[float]] = []
    for start, end in sorted(spans):
        if merged and start <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], end)
        else:
            merged.append([start, end])
    return [(round(s), round(e)) for s, e in merged]


def main() -> None:
    rng = np.random.default_rng(2024)
    n = 200
    ms = rng.lognormal(np.log(40.0), 0.8, n)          # inference ms per sample
    kbps = rng.lognormal(np.log(5000.0), 1.0, n)      # kbit/s
    rows = ["client_id,computation,communication"]
    rows += [f"{i + 1},{m:.2f},{k:.1f}" for i, (m, k) in enumerate(zip(ms, kbps))]
    (HERE / "fedscale_capacity.csv").write_text("\n".join(rows) + "\n")

    behave = {}
    for i in range(n):
        spans = windows(rng)
        behave[str(i + 1)] = {"active": [s for s, _ in spans],
                              "inactive": [e for _, e in spans], "finish_time": DAY_S}
    (HERE / "fedscale_behaviour.json").write_text(json.dumps(behave, indent=1) + "\n")

    timers, speeds = {}, {}
    for i in range(100):
        guid = f"device-{i:03d}"
        start = 1_000_000.0 + round(float(rng.uniform(0, DAY_S)))
        timers[guid] = {"isSuccess": bool(rng.random() > 0.05), "trace_start": start,
                        "trace_end": start + DAY_S,
                        "ready_time": [[start + s, start + e] for s, e in windows(rng)]}
        down = float(rng.lognormal(np.log(1500.0), 0.7))   # KB/s
        up = down * float(rng.uniform(0.2, 0.6))
        speeds[guid] = {"down_u": round(down, 1), "down_sigma": round(0.2 * down, 1),
                        "up_u": round(up, 1), "up_sigma": round(0.2 * up, 1)}
    (HERE / "flash_availability.json").write_text(json.dumps(timers, indent=1) + "\n")
    (HERE / "flash_speed.json").write_text(json.dumps(speeds, indent=1) + "\n")


if __name__ == "__main__":
    main()
