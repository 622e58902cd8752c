"""The Chrome trace gives every stream of a device its own track (thread id), named after it."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from dlsim.contract.span import Span
from dlsim.results.trace import chrome_trace


@dataclass
class _Result:  # the two fields chrome_trace reads
    spans: list[Span]
    summary: dict[str, Any] = field(default_factory=dict)


def test_every_stream_is_its_own_named_track():
    streams = ["compute", "comm", "expert", "send-fwd", "recv-bwd", "prefetch", "expert"]
    spans = [Span(device, stream, f"op{i}", "compute", i, i + 0.5)
             for device in (0, 8) for i, stream in enumerate(streams)]
    events = chrome_trace(_Result(spans))["traceEvents"]  # type: ignore[arg-type]
    names = {(e["pid"], e["tid"]): e["args"]["name"] for e in events
             if e["name"] == "thread_name"}
    for device in (0, 8):
        mine = {tid: name for (pid, tid), name in names.items() if pid == device}
        assert sorted(mine.values()) == sorted(set(streams))  # one track per stream
        assert mine[0] == "compute" and mine[1] == "comm" and mine[2] == "prefetch"
    by_name = {(pid, name): tid for (pid, tid), name in names.items()}
    for e in events:
        if e["ph"] == "X":
            stream = streams[int(e["name"][2:])]
            assert e["tid"] == by_name[(e["pid"], stream)]
