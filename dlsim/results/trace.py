"""Chrome trace event format (opens in Perfetto and chrome://tracing): one process per
device, one thread per stream, one complete ('X') event per span, times in microseconds."""

from __future__ import annotations

from typing import Any

from dlsim.results.result import Result

# the engine's usual streams keep fixed ids; the others (expert, send-fwd, recv-bwd, ...) take
# the next ones in the order they first start (then by name), whatever order the spans come in
STREAM_TIDS = {"compute": 0, "comm": 1, "prefetch": 2}


def chrome_trace(result: Result) -> dict[str, Any]:
    events: list[dict[str, Any]] = []
    seen: set[tuple[int, str]] = set()
    first: dict[str, float] = {}
    for span in result.spans:
        if span.stream not in STREAM_TIDS and first.get(span.stream, float("inf")) > span.start_s:
            first[span.stream] = span.start_s
    tids = dict(STREAM_TIDS)
    for stream in sorted(first, key=lambda name: (first[name], name)):
        tids[stream] = len(tids)
    for span in result.spans:
        tid = tids[span.stream]
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
