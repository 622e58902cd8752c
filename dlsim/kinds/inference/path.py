"""One request's path through the tiers: compute, transfers and early exits as timed segments.

A route puts layers [cuts[k-1], cuts[k]) on tier k (tier 0, the user's device, starts at
layer 0). Before the first layer a tier runs, the activation it needs (the model's input,
or the previous layer's output) goes up every hop in between: latency + bytes / up
bandwidth each, store and forward. A tier that runs nothing passes nothing on. When the
request leaves, at an early exit or the model's output, the result comes back down every
hop to the device. Nothing overlaps within one request, so the segments are back to back
and the request's latency is the end of the last one (Kang et al., ASPLOS'17:
end-to-end latency = device + transfer + server time).

Device energy (Neurosurgeon) is the device's power × its compute time plus the radio's
power × the time the device's own link spends moving bytes (bytes / bandwidth; waiting out
the link latency is not counted as transmitting). Idle power while the server works is not
counted.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass

from dlsim.contract.inference import RadioSpec
from dlsim.kinds.inference.exits import Exit
from dlsim.kinds.inference.tiers import Hop, Tier
from dlsim.workload.costmodel import kernel_time_s
from dlsim.workload.model import Model


@dataclass(frozen=True)
class Route:
    tiers: tuple[Tier, ...]
    hops: tuple[Hop, ...]  # hops[k] joins tiers[k] and tiers[k + 1]
    cuts: tuple[int, ...]  # cuts[k] is the first layer tiers[k + 1] runs


@dataclass(frozen=True)
class Segment:
    """Compute on tier ``where``, or a transfer over hop ``where`` ('up' or 'down')."""

    where: int
    kind: str  # compute, up or down
    name: str
    start_s: float
    end_s: float
    nbytes: float = 0.0

    @property
    def duration_s(self) -> float:
        return self.end_s - self.start_s


@dataclass(frozen=True)
class Outcome:
    """What a request costs when it leaves at one exit."""

    latency_s: float
    energy_J: float
    device_s: float
    bytes_up: float  # over every hop
    bytes_down: float


def walk(route: Route, model: Model, exits: Sequence[Exit], leave_at: int,
         dtype: str) -> list[Segment]:
    """Segments of a request leaving at exit ``leave_at`` (``len(exits)``: the output)."""
    last = exits[leave_at].layer if leave_at < len(exits) else len(model.layers) - 1
    branches = {e.layer: e for e in exits[:leave_at + 1]}
    segments: list[Segment] = []
    t, where = 0.0, 0

    def add(at: int, kind: str, name: str, duration: float, nbytes: float = 0.0) -> None:
        nonlocal t
        segments.append(Segment(at, kind, name, t, t + duration, nbytes))
        t += duration

    for i, layer in enumerate(model.layers[:last + 1]):
        target = bisect_right(route.cuts, i)
        while where < target:
            nbytes = model.input_bytes if i == 0 else model.layers[i - 1].output_bytes
            sent = "input" if i == 0 else model.layers[i - 1].name
            add(where, "up", f"send {sent}", route.hops[where].up_s(nbytes), nbytes)
            where += 1
        tier = route.tiers[where]
        add(where, "compute", layer.name, float(tier.layer_s[i]))
        if i in branches:
            cost = sum(kernel_time_s(k, tier.device, dtype) for k in branches[i].branch)
            add(where, "compute", f"exit after {layer.name}", cost)
    result = model.layers[-1].output_bytes
    while where > 0:
        where -= 1
        add(where, "down", "return result", route.hops[where].down_s(result), result)
    return segments


def outcome(segments: Sequence[Segment], route: Route, radio: RadioSpec | None) -> Outcome:
    device_s = sum(s.duration_s for s in segments if s.kind == "compute" and s.where == 0)
    energy = route.tiers[0].device.power_W * device_s
    if radio is not None and route.hops:
        link = route.hops[0]
        energy += sum(radio.up_W * s.nbytes / link.up_Bps for s in segments
                      if s.kind == "up" and s.where == 0)
        energy += sum(radio.down_W * s.nbytes / link.down_Bps for s in segments
                      if s.kind == "down" and s.where == 0)
    return Outcome(segments[-1].end_s if segments else 0.0, energy, device_s,
                   sum(s.nbytes for s in segments if s.kind == "up"),
                   sum(s.nbytes for s in segments if s.kind == "down"))
