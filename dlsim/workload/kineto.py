"""Measured operator times from a Kineto (chrome) trace, for ``model: {kineto: ...}``.

``torch.profiler.profile(..., execution_trace_observer=...)`` writes both traces of one
step: each ``cpu_op`` event carries the ``Record function id`` that the execution trace's
node holds as ``rf_id``, so a measured time finds its operator without matching names.
"""

from __future__ import annotations

import json
from pathlib import Path

from dlsim.contract.errors import ScenarioError


def kineto_durations(path: str | Path) -> dict[int, float]:
    """Measured seconds by ``rf_id`` from a Kineto (chrome) trace: each ``cpu_op``'s
    ``Record function id``; where the op launched device kernels (``External id`` shared with
    ``kernel`` events), the sum of their durations instead of the host time."""
    try:
        data = json.loads(Path(path).read_text())
    except OSError as exc:
        raise ScenarioError(f"{path}: cannot read the Kineto trace ({exc.strerror}).",
                            field="model.kineto") from exc
    except ValueError as exc:
        raise ScenarioError(f"{path}: is not JSON ({exc}); model.kineto takes the chrome "
                            "trace torch.profiler writes (export_chrome_trace).",
                            field="model.kineto") from exc
    events = data.get("traceEvents") if isinstance(data, dict) else None
    if not isinstance(events, list):
        raise ScenarioError(f"{path}: holds no 'traceEvents' (the chrome trace "
                            "torch.profiler.export_chrome_trace writes).", field="model.kineto")
    kernels: dict[int, float] = {}
    for e in events:
        if isinstance(e, dict) and e.get("cat") == "kernel":
            key = int((e.get("args") or {}).get("External id", -1))
            kernels[key] = kernels.get(key, 0.0) + float(e.get("dur", 0))
    out: dict[int, float] = {}
    for e in events:
        if not isinstance(e, dict) or e.get("cat") != "cpu_op":
            continue
        args = e.get("args") or {}
        rf = args.get("Record function id")
        if rf is None:
            continue
        on_device = kernels.get(int(args.get("External id", -2)))
        out[int(rf)] = (on_device if on_device else float(e.get("dur", 0))) * 1e-6
    return out
