"""The plan page's time-to-loss section: step time, steps to the target and time to the
target against the global batch for the best layouts, with the critical batch marked.

The three panels show the trade the planner searched (Kaplan et al. 2020, eq. 5.4): the step
time grows with the batch (more micro-batches per step), the steps fall as
S_min (1 + B_crit / B) and level off past B_crit, and their product has its minimum where
the two balance. The figures are the estimate's (every point is priced in closed form; the
engine confirms only each plan's best batch)."""

from __future__ import annotations

from typing import Any

from matplotlib.ticker import NullLocator

from dlsim.report import plots
from dlsim.report.units import Card, format_count

COLOURS = ("#4C72B0", "#DD8452", "#55A868")


def curve_label(plan: dict[str, Any]) -> str:
    degrees = "·".join(f"{k[0]}{plan[k]}" for k in ("data", "tensor", "pipeline", "context",
                                                    "expert")
                       if plan[k] > 1 or k in ("data", "tensor", "pipeline"))
    return f"{plan['gpus']:,} GPUs {degrees}, micro-batch {plan['microbatch']}"


def _time_unit(seconds: float) -> tuple[str, float]:
    """The unit the longest time reads best in: days, hours or minutes."""
    for unit, scale in (("days", 86400.0), ("hours", 3600.0)):
        if seconds >= 2 * scale:
            return unit, scale
    return "minutes", 60.0


def batch_figure(loss: dict[str, Any]) -> str:
    """Three panels against the global batch (samples, log scale), one line per layout."""
    fig = plots._new_figure(11.0, 3.4)
    axes = fig.subplots(1, 3)
    longest = max((p["time_to_target_s"] for c in loss["curves"] for p in c["points"]),
                  default=1.0)
    unit, scale = _time_unit(longest)
    panels = (("step_time_s", "Step time (estimate)", "seconds per step", 1.0),
              ("steps_to_target", "Steps to the target", "steps", 1.0),
              ("time_to_target_s", "Time to the target", unit, scale))
    critical = loss["critical_batch_samples"]
    batches = loss["batches"]
    for ax, (key, title, label, per) in zip(axes, panels):
        for colour, curve in zip(COLOURS, loss["curves"]):
            points = curve["points"]
            ax.plot([p["global_batch"] for p in points], [p[key] / per for p in points],
                    marker="o", markersize=3, color=colour, label=curve_label(curve["plan"]))
        ax.axvline(critical, color="#C44E52", linestyle="--", linewidth=1,
                   label=f"B_crit = {critical:,.0f} samples")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xticks(batches, [f"{b:,}" for b in batches])
        ax.xaxis.set_minor_locator(NullLocator())
        plots._style(ax, title, "global batch (samples per step)", label)
    axes[0].legend(fontsize=7, frameon=False)
    return plots._to_data_uri(fig)


def loss_cards(loss: dict[str, Any], best: dict[str, Any] | None) -> list[Card]:
    """The target, Kaplan's critical batch and S_min at it, and the winner's batch."""
    cards = [Card("Target loss", f"{loss['target_loss']:g}", "nats/token",
                  "Kaplan et al. 2020, WebText2"),
             Card("Critical batch", format_count(loss["critical_batch_samples"]), "samples",
                  f"{format_count(loss['critical_batch_tokens'])} tokens: B* / L^(1/α_B)"),
             Card("S_min", format_count(loss["min_steps"]), "steps",
                  "steps at an infinite batch")]
    if best is not None:
        cards.append(Card("Best batch", f"{best['global_batch']:,}", "samples",
                          f"{format_count(best['steps_to_target'])} steps, "
                          f"{format_count(best['tokens_to_target'])} tokens"))
    return cards
