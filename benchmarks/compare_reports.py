"""Every bundled scenario's reports from two trees, compared byte for byte.

Run: git worktree add /tmp/base <commit>
     python benchmarks/compare_reports.py /tmp/base [--only NAME ...] [--timeout-s 900]

Each tree runs ``python -m dlsim run scenarios/<name>.yaml`` in its own root (so it imports
its own dlsim) into a temporary directory, and every summary.json, sweep.csv and trace.json
the two write is compared byte for byte; a summary that differs is then compared field by
field, ignoring ``simulation.wall_s``-like timings and the events the engine processed (its
own work, which the isolated schedule of ``dlsim.engine.isolated`` changes by design), with
the largest relative difference printed; a sweep.csv that differs is compared cell by cell
the same way, and a trace.json as the multiset of its events (the order of events that end at
one instant may differ). Exit code 1 when any report differs by more than ``--rel``.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TIMING = ("wall_s", "events_per_s", "cpu_s")  # fields that measure this machine, not the model
WORK = ("events",)  # fields that count the simulator's own work, not the model's
ABS = 1e-15  # differences this small are rounding, whatever their relative size


def run(tree: Path, scenario: Path, out: Path, timeout_s: float) -> str:
    """Run ``scenario`` in ``tree`` into ``out``; '' or why it failed."""
    try:
        proc = subprocess.run([sys.executable, "-m", "dlsim", "run", str(scenario), "--out",
                               str(out)], cwd=tree, capture_output=True, text=True,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return "timed out"
    return "" if proc.returncode == 0 else f"exit {proc.returncode}: {proc.stderr[-300:]}"


def flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Every leaf of a JSON value by its dotted path."""
    if isinstance(value, dict):
        return {k: v for key, item in value.items()
                for k, v in flatten(item, f"{prefix}{key}.").items()}
    if isinstance(value, list):
        return {k: v for i, item in enumerate(value)
                for k, v in flatten(item, f"{prefix}{i}.").items()}
    return {prefix[:-1]: value}


def worst(a: Path, b: Path) -> tuple[str, float]:
    """The model field of two summaries that differs most, and by how much (relative)."""
    return worst_of(flatten(json.loads(a.read_text())), flatten(json.loads(b.read_text())))


def worst_of(fa: dict[str, Any], fb: dict[str, Any]) -> tuple[str, float]:
    worst_key, worst_rel = "", 0.0
    for key in fa.keys() | fb.keys():
        if key.rsplit(".", 1)[-1] in TIMING + WORK:
            continue
        x, y = fa.get(key), fb.get(key)
        if x == y:
            continue
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            if abs(x - y) <= ABS:
                continue  # rounding around zero (an idle time of 1e-17 s against 0)
            rel = abs(x - y) / max(abs(x), abs(y))
        else:
            rel = float("inf")
        if rel > worst_rel:
            worst_key, worst_rel = key, rel
    return worst_key, worst_rel


def worst_cell(a: Path, b: Path) -> tuple[str, float]:
    """The sweep.csv cell that differs most (by row and column), and by how much."""
    import pandas as pd

    fa, fb = pd.read_csv(a), pd.read_csv(b)
    if list(fa.columns) != list(fb.columns) or len(fa) != len(fb):
        return "shape", float("inf")
    cells = {name: {f"{i}.{c}": v for c in frame.columns for i, v in enumerate(frame[c])}
             for name, frame in (("a", fa), ("b", fb))}
    return worst_of(cells["a"], cells["b"])


def worst_event(a: Path, b: Path) -> tuple[str, float]:
    """The trace event that differs most, each trace's events in a canonical order and its
    threads by name (their ids follow the order the spans came in)."""
    def events(path: Path) -> list[dict[str, Any]]:
        data = json.loads(path.read_text())
        items = data["traceEvents"] if isinstance(data, dict) else data
        names = {(e["pid"], e["tid"]): e["args"]["name"] for e in items
                 if e.get("name") == "thread_name"}
        named = [{**e, "tid": names.get((e["pid"], e.get("tid")), e.get("tid"))} for e in items]
        return sorted(named, key=lambda e: json.dumps(
            {k: v for k, v in e.items() if not isinstance(v, float)}, sort_keys=True)
            + f"{e.get('ts', 0.0):.9e}")

    ea, eb = events(a), events(b)
    if len(ea) != len(eb):
        return "count", float("inf")
    return worst_of(flatten(ea), flatten(eb))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="root of the other tree")
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--timeout-s", type=float, default=900.0)
    parser.add_argument("--rel", type=float, default=1e-9,
                        help="largest relative difference of a model field that passes")
    args = parser.parse_args()
    scenarios = sorted((ROOT / "scenarios").glob("*.yaml"))
    if args.only:
        scenarios = [s for s in scenarios if s.stem in args.only]
    bad = 0
    with tempfile.TemporaryDirectory() as tmp:
        for scenario in scenarios:
            outs = [Path(tmp) / scenario.stem / side for side in ("base", "this")]
            errors = [run(tree, scenario, out, args.timeout_s)
                      for tree, out in zip((args.base.resolve(), ROOT), outs)]
            if any(errors):
                print(f"{scenario.stem}: not compared ({'; '.join(e for e in errors if e)})")
                continue
            files = sorted(p.relative_to(outs[0]) for p in outs[0].rglob("*")
                           if p.name in ("summary.json", "trace.json", "sweep.csv"))
            verdicts = []
            for rel in files:
                a, b = outs[0] / rel, outs[1] / rel
                if not b.exists():
                    verdicts.append(f"{rel}: missing")
                elif a.read_bytes() != b.read_bytes():
                    compare = {"summary.json": worst, "sweep.csv": worst_cell,
                               "trace.json": worst_event}[rel.name]
                    key, diff = compare(a, b)
                    if key:
                        verdicts.append(f"{rel}: {key} differs by {diff:.3g}")
                        bad += diff > args.rel
            print(f"{scenario.stem}: {'; '.join(verdicts) if verdicts else 'identical'} "
                  f"({len(files)} files)", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
