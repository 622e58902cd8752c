"""Writing a run's outputs: all files of a report directory appear at once or not at all.

Files are written into a temporary sibling directory that is renamed into place, so an
interrupted or failed run never leaves a half-written report behind.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import shutil
import tempfile
import unicodedata
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from dlsim.contract.errors import ScenarioError
from dlsim.report.kinds import render_run
from dlsim.report.pages import render_sweep
from dlsim.results.result import Result, records
from dlsim.results.scaling import GroupScaling
from dlsim.results.trace import chrome_trace
from dlsim.sweep.grid import primary_metric

SLUG_CHARS = 80  # characters of the name a report directory keeps (file names: 255 bytes)


def slug(name: str) -> str:
    """A directory name for a scenario name (untrusted text), one path component under
    ``--out``: letters and digits of any script, '.', '_' and '-' are kept, anything else
    becomes '-'; never empty, never starting with a dot ('..', hidden, the sweep cache).
    When characters had to go, 8 hex digits of the name's SHA-256 keep distinct names in
    distinct directories ('a/b' and 'a:b', or two names of only symbols)."""
    text = unicodedata.normalize("NFC", name)
    kept = re.sub(r"[^\w.-]+", "-", text).strip("-.")[:SLUG_CHARS]
    while len(kept.encode("utf-8", "surrogatepass")) > 4 * SLUG_CHARS // 2:
        kept = kept[:-1]  # wide scripts: 160 bytes at most, room for the hash
    kept = kept.strip("-.")
    if kept and kept == name:
        return kept
    digest = hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()[:8]
    return f"{kept}-{digest}" if kept else f"scenario-{digest}"


def to_json(data: Any) -> str:
    return json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"


def write_report_dir(target: Path, files: Mapping[str, str | bytes]) -> Path:
    """Atomically replace directory ``target`` with ``files`` (name -> text or bytes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        staging.chmod(0o755)  # mkdtemp makes it private; a report directory is not
        for name, content in files.items():
            if isinstance(content, bytes):
                (staging / name).write_bytes(content)
            else:
                (staging / name).write_text(content, encoding="utf-8")
        if target.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{target.name}.old.", dir=target.parent))
            target.rename(old / "previous")
            staging.rename(target)
            shutil.rmtree(old, ignore_errors=True)
        else:
            staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def write_run(result: Result, out_dir: Path) -> Path:
    """Write reports/<name>/: summary.json, trace.json and index.html."""
    files = {"summary.json": to_json(result.summary),
             "trace.json": json.dumps(chrome_trace(result)),
             "index.html": render_run(result)}
    return write_report_dir(out_dir / slug(result.summary["name"]), files)


def write_sweep(name: str, table: pd.DataFrame, vary: list[str], base: dict[str, Any],
                out_dir: Path, y: str | None = None, fmt: str = "csv",
                scaling: Sequence[GroupScaling] = (), image: str | None = None) -> Path:
    """Write reports/<name>/ for a sweep: summary.json (all rows, and the scaling fits when
    the sweep varies a device count), sweep.csv or sweep.parquet, index.html; the plot shows
    ``y`` (default: the primary metric) against the first varied column, unless ``image``
    is a picture of the caller's."""
    metric = y or primary_metric(table)
    group = vary[-1] if len(vary) > 1 else None
    html = render_sweep(name, table, vary[0], metric, group, base, scaling, image)
    rows = records(table)
    summary: dict[str, Any] = {"name": name, "kind": "sweep", "vary": vary, "rows": rows}
    if scaling:
        summary["scaling"] = [g.summary() for g in scaling]
    files: dict[str, str | bytes] = {"summary.json": to_json(summary), "index.html": html}
    if fmt == "parquet":
        files["sweep.parquet"] = _parquet(table)
    else:
        files["sweep.csv"] = table.to_csv(index=False)
    return write_report_dir(out_dir / slug(name), files)


def _parquet(table: pd.DataFrame) -> bytes:
    """The table as Parquet; a column mixing types (say 8 and 'abc') is stored as text."""
    try:
        import pyarrow  # noqa: F401  # optional: pip install 'dlsim[parquet]'
    except ImportError:
        raise ScenarioError("Parquet output needs pyarrow; pip install 'dlsim[parquet]' or "
                            "use --format csv.", field="--format") from None
    frame = table.copy()
    for column in [c for c in frame.columns if frame[c].dtype == object]:
        values = frame[column]
        if len({type(v) for v in values.dropna()}) > 1:
            frame[column] = values.where(values.isna(), values.astype(str))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
