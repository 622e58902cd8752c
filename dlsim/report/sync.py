"""The report's synchronisation section: wait per device, staleness, failures, time to accuracy.

Reads the summary only (reports never re-simulate).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dlsim.report import plots
from dlsim.report.units import format_count, format_energy, format_seconds


def sync_section(s: Mapping[str, Any]) -> dict[str, Any] | None:
    """Each part the summary has data for; None when it has none."""
    parts = {"waits": _waits(s), "staleness": _staleness(s), "failures": _failures(s),
             "convergence": _convergence(s)}
    return parts if any(parts.values()) else None


def _waits(s: Mapping[str, Any]) -> dict[str, Any] | None:
    waits = s.get("straggler_wait_per_device_s")
    if not waits:
        return None
    devices = list(waits)
    values = np.array([float(waits[d]) for d in devices])
    steps = s.get("steps_per_worker")
    head = ["device", "wait per step"] + (["steps done"] if steps else [])
    rows = [[d, format_seconds(v)] + ([str(steps[i])] if steps else [])
            for i, (d, v) in enumerate(zip(devices, values))]
    image = plots.bars(devices, values * 1e3, "Straggler wait per device", "device",
                       "ms per step")
    return {"image": image, "head": head, "rows": rows}


def _staleness(s: Mapping[str, Any]) -> dict[str, Any] | None:
    hist = s.get("staleness_histogram")
    if not hist:
        return None
    counts = np.asarray(hist, dtype=float)
    mean = float(np.average(np.arange(len(counts)), weights=counts))
    note = (f"{int(counts.sum()):,} updates applied; staleness is how many other updates "
            f"a shard applied between the worker's pull and its update (mean {mean:.2f}).")
    if s.get("staleness_bound") is not None:
        note += f" SSP bound: a worker starts at most {s['staleness_bound']} step(s) ahead."
    image = plots.bars(list(range(len(counts))), counts, "Staleness of applied updates",
                       "staleness (updates)", "updates", plots.CATEGORY_COLOURS["compute"])
    return {"image": image, "note": note}


def _goodput(g: Mapping[str, Any]) -> dict[str, Any]:
    """The expected-goodput model's figures (``dlsim.kinds.sync.goodput``)."""
    rows = [("job MTBF", format_seconds(g["mtbf_s"])),
            ("checkpoint", format_seconds(g["checkpoint_s"])),
            ("interval", f"{g['interval_steps']:,} steps ({format_seconds(g['interval_s'])}); "
                         f"Daly {format_seconds(g['daly_interval_s'])}, Young "
                         f"{format_seconds(g['young_interval_s'])}"),
            ("goodput (closed form)", f"{100 * g['goodput_closed_form']:.2f} %"),
            (f"goodput over {g['monte_carlo_runs']:,} runs",
             f"mean {100 * g['goodput_mean']:.2f} %, 5-95 % {100 * g['goodput_p5']:.2f}-"
             f"{100 * g['goodput_p95']:.2f} %")]
    if "effective_training_days" in g:
        rows.append((f"training in {g['job_days']:g} days",
                     f"{g['effective_training_days']:.2f} days"))
    rows += [(f"checkpoint every {r['interval_h']} h", f"{100 * r['goodput']:.2f} %")
             for r in g["by_interval"]]
    curve = g["by_interval"]
    image = plots.goodput_curve([r["interval_h"] for r in curve], [r["goodput"] for r in curve],
                                g["interval_s"] / 3600, g["goodput_mean"],
                                (g["goodput_p5"], g["goodput_p95"]))
    return {"rows": rows, "note": "; ".join(g["assumptions"]) + ".", "image": image}


def _failures(s: Mapping[str, Any]) -> dict[str, Any] | None:
    if s.get("goodput"):
        return _goodput(s["goodput"])
    f = s.get("failures")
    if not f:
        return None
    rows = [("failures", str(f["failures"])), ("work lost", format_seconds(f["lost_work_s"])),
            ("restarting", format_seconds(f["restart_s"])),
            ("checkpoints written", str(f["checkpoints"])),
            ("writing checkpoints", format_seconds(f["checkpoint_s"])),
            ("job time with failures", format_seconds(f["total_s"])),
            ("goodput", f"{100 * f['goodput']:.1f} % of the job time is useful steps")]
    note = ("The job stops at each failure and resumes from its last checkpoint: it loses "
            "the work since then and pays the restart.")
    if "young_daly_interval_s" in f:
        rows.append(("Young's optimal interval", format_seconds(f["young_daly_interval_s"])))
        note += (" Young's optimal time between checkpoints is sqrt(2 x checkpoint cost x "
                 "MTBF) (CACM 1974; Daly 2006 refines it).")
    return {"rows": rows, "note": note, "image": None}


def _convergence(s: Mapping[str, Any]) -> dict[str, Any] | None:
    c = s.get("convergence")
    if not c:
        return None
    rows = [("time to accuracy", format_seconds(s["time_to_accuracy_s"])),
            ("throughput", f"{float(s.get('throughput_samples_per_s', 0)):,.0f} samples/s"),
            ("updates to the target", f"{c['steps_to_target']:,.0f}"),
            ("samples to the target", f"{c['samples_to_target']:,.0f}"),
            ("batch per update", f"{c['batch_per_update']:,}"),
            ("mean staleness", f"{c['mean_staleness']:.2f}"),
            ("time per update", format_seconds(c["seconds_per_update"]))]
    if "assumptions" in c:  # a model named in the scenario (dlsim.kinds.sync.convergence)
        if "tokens_to_target" in c:
            rows.append(("tokens to the target", f"{format_count(c['tokens_to_target'])} tokens"))
        if "critical_batch_tokens" in c:
            rows.append(("critical batch", f"{format_count(c['critical_batch_tokens'])} tokens"))
        if "cost_usd" in c:
            rows.append(("cost to the target", f"{format_count(c['cost_usd'])} USD"))
        if "energy_to_target_J" in c:
            rows.append(("energy to the target", format_energy(c["energy_to_target_J"])))
        return {"rows": rows, "note": "; ".join(c["assumptions"]) + "."}
    note = (f"Updates needed = S_min (1 + B_noise / B) (1 + c x mean staleness), with "
            f"S_min = {c['min_steps']:g}, B_noise = {c['noise_batch']:g} (McCandlish et al. "
            f"2018, eq. 2.11) and c = {c['staleness_penalty']:g} (an assumption the scenario "
            "sets); time to accuracy = updates needed x time per update.")
    return {"rows": rows, "note": note}
