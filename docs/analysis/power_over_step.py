"""Draw docs/img/power-over-step.png: what each device draws over one training step.

GPT-2 1.5B on one DGX H100 (8 GPUs) with 4 pipeline stages (1F1B) and 2 data-parallel
replicas: P(t) of the first and the last stage from ``dlsim.results.power`` over the
engine's spans (compute at the model's activity, collectives at A_COMM, bubble and waits at
idle power, capped at the board's 700 W), with the summary's energy and cost per step.

Run: python docs/analysis/power_over_step.py
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import dlsim  # noqa: E402
from dlsim.contract.scenario import ModelSpec  # noqa: E402
from dlsim.hardware import profiles as hardware  # noqa: E402
from dlsim.results.power import power_model, power_timeline  # noqa: E402
from dlsim.workload.presets import build_model  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "img" / "power-over-step.png"
SCENARIO = {"name": "power-over-step", "model": {"preset": "gpt2-1.5b"},
            "cluster": {"preset": "dgx-h100", "nodes": 1}, "precision": "bf16",
            "training": {"global_batch": 32, "microbatch": 2, "optimizer": "adam"},
            "parallelism": {"data": 2, "pipeline": 4, "schedule": "1f1b"},
            "simulation": {"fidelity": "full"}}


def main() -> None:
    result = dlsim.simulate(SCENARIO)
    s = result.summary
    device = hardware.device(s["device"])
    micro = SCENARIO["training"]["microbatch"]
    power = power_model(build_model(ModelSpec(preset="gpt2-1.5b"),
                                    micro, 2), device, "bf16")
    end = s["step_time_s"]
    fig, ax = plt.subplots(figsize=(10, 3.6))
    for rank, label in ((0, "stage 0 (device 0)"), (6, "stage 3 (device 6)")):
        times, watts = power_timeline(power, result.spans, rank, end)
        ax.step([t * 1e3 for t in [*times, end]], [*watts, watts[-1]], where="post",
                label=label)
    ax.axhline(device.power_W, color="grey", ls=":", lw=1)
    ax.axhline(power.idle_W, color="grey", ls=":", lw=1)
    ax.text(0, device.power_W + 8, f"board limit {device.power_W:.0f} W", fontsize=8)
    ax.text(0, power.idle_W + 8, f"idle {power.idle_W:.0f} W", fontsize=8)
    ax.set_xlabel("time in the step (ms)")
    ax.set_ylabel("power per GPU (W)")
    ax.set_ylim(0, device.power_W * 1.12)
    ax.set_title(f"GPT-2 1.5B, 8x H100, d=2 p=4 1F1B: {s['energy_per_step_J'] / 1e3:.3g} kJ "
                 f"per step, {s['average_power_W']:.0f} W average per GPU, "
                 f"{s['energy_per_token_J'] * 1e3:.3g} mJ per token", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(OUT, dpi=110)
    print(f"{OUT}: step {end * 1e3:.2f} ms, a_compute {power.a_compute:.3f}, "
          f"energy {s['energy_per_step_J']:.1f} J, average {s['average_power_W']:.1f} W, "
          f"cost {s['cost_per_step_usd']:.3g} USD per step")


if __name__ == "__main__":
    main()
