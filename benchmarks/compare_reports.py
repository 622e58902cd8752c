"""Every bundled scenario's reports from two trees, compared byte for byte.

Run: git worktree add /tmp/base <commit>
     python benchmarks/compare_reports.py /tmp/base [--only NAME ...] [--timeout-s 900]

Each tree runs ``python -m dlsim run scenarios/<name>.yaml`` in its own root (so it imports
its own dlsim) into a temporary directory, and every summary.json, sweep.csv and trace.json
the two write is compared byte for byte; a summary that differs is then compared field by
field, ignoring ``simulation.wall_s``-like timings, with the largest relative difference
printed. Exit code 1 when any report differs beyond wall-clock fields.
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
    fa, fb = flatten(json.loads(a.read_text())), flatten(json.loads(b.read_text()))
    worst_key, worst_rel = "", 0.0
    for key in fa.keys() | fb.keys():
        if key.rsplit(".", 1)[-1] in TIMING:
            continue
        x, y = fa.get(key), fb.get(key)
        if x == y:
            continue
        if isinstance(x, (int, float)) and isinstance(y, (int, float)):
            rel = abs(x - y) / max(abs(x), abs(y))
        else:
            rel = float("inf")
        if rel > worst_rel:
            worst_key, worst_rel = key, rel
    return worst_key, worst_rel


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("base", type=Path, help="root of the other tree")
    parser.add_argument("--only", nargs="*", help="scenario names (default: all)")
    parser.add_argument("--timeout-s", type=float, default=900.0)
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
                    if rel.name == "summary.json":
                        key, diff = worst(a, b)
                        if key:
                            verdicts.append(f"{rel}: {key} differs by {diff:.3g}")
                    else:
                        verdicts.append(f"{rel}: differs")
            bad += bool(verdicts)
            print(f"{scenario.stem}: {'; '.join(verdicts) if verdicts else 'identical'} "
                  f"({len(files)} files)", flush=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
