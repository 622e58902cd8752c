"""Chrome trace event format (opens in Perfetto and chrome://tracing): one process per
device, one thread per stream, one complete ('X') event per span, times in microseconds."""

from __future__ import annotations

from typing import Any

from dlsim.results.result import Result

# the engine's usual streams keep fixed ids; any other (expert, send-fwd, recv-bwd, ...) gets
# the next free one the first time it appears, so every stream is its own track
STREAM_TIDS = {"compute": 0, "comm": 1, "prefetch": 2}


def chrome_trace(result: Result) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    seen: set[tuple[int, str]] = set()
    tids = dict(STREAM_TIDS)
    for span in result.spans:
        tid = tids.setdefault(span.stream, len(tids))
        if (span.device, span.stream) not in seen:
            seen.add((span.device, span.stream))
            events.append({"ph": "M", "name": "thread_name", "pid": span.device, "tid": tid,
                           "args": {"name": span.stream}})
            if (span.device, "") not in seen:
                seen.add((span.device, ""))
                events.append({"ph": "M", "name": "process_name", "pid": span.device,
                               "args": {"name": f"device {span.device}"}})
        events.append({"ph": "X", "name": span.name, "cat": span.category, "pid": span.device,
                       "tid": tid, "ts": span.start_s * 1e6, "dur": span.duration_s * 1e6})
    return {"traceEvents": events, "displayTimeUnit": "ms",
            "otherData": {"scenario": result.summary.get("name"),
                          "fidelity": result.summary.get("simulation", {}).get("fidelity")}}
