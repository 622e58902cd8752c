"""The dlsim command line: parse, call the library, print. No modelling happens here."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
import yaml
from pydantic import ValidationError
from rich.console import Console
from rich.measure import Measurement
from rich.progress import Progress, TaskID
from rich.table import Table

from dlsim.contract.errors import ScenarioError, describe_invalid, excerpt
from dlsim.contract.loading import ScenarioLoader, read_text, read_yaml
from dlsim.contract.scenario import ModelSpec, scenario_model
from dlsim.data import SCENARIOS, bundled_scenario, bundled_scenarios
from dlsim.hardware import profiles as hardware
from dlsim.hardware.profiles import DTYPE_BYTES
from dlsim.kinds.run import observing
from dlsim.output import to_json, write_run, write_sweep
from dlsim.report import plots
from dlsim.results.result import records
from dlsim.results.scaling import scaling_analysis
from dlsim.simulate import simulate
from dlsim.sweep.executors import PointCache, executor_for
from dlsim.sweep.grid import pivot, primary_metric, run_sweep
from dlsim.validation import (
    DEFAULT_DIR,
    MODERN,
    TABLES,
    host_validation,
    run_validation,
    table_errors,
)
from dlsim.workload.execution_trace import classify, trace_rows
from dlsim.workload.presets import build_model, preset_rows
from dlsim.workload.torch_import import layer_rows, parallelism_note

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="dlsim: simulate distributed deep-learning training before you rent it.")
out = Console()
err = Console(stderr=True)

ScenarioFile = Annotated[Path, typer.Argument(
    help="A scenario file, or a bundled scenario's name (dlsim list scenarios).")]
OutDir = Annotated[Path, typer.Option("--out", help="Directory that receives reports/<name>/.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the rows as JSON instead.")]


def _fail(exc: ScenarioError) -> None:
    err.print(exc.paragraph(), markup=False, highlight=False, soft_wrap=True)
    raise typer.Exit(2)


@contextmanager
def _writing(out_dir: Path) -> Iterator[None]:
    """A report directory that cannot be made (--out under a regular file, in /proc, on a
    full or read-only disk) is the user's --out, not a traceback."""
    try:
        yield
    except OSError as exc:
        raise ScenarioError(f"cannot write the report under '{out_dir}': "
                            f"{exc.strerror or exc}; choose a writable directory.",
                            field="--out") from None


def _positive(flag: str, value: float | None, allowed: str = "a positive number") -> None:
    """A numeric flag that must be finite and > 0 (nan passes typer's range checks)."""
    if value is not None and not (math.isfinite(value) and value > 0):
        raise ScenarioError(f"{flag} takes {allowed} (got {value!r}).", field=flag)


def _at_least(flag: str, value: int | None, least: int) -> None:
    if value is not None and value < least:
        raise ScenarioError(f"{flag} takes a whole number of at least {least} (got {value}).",
                            field=flag)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _print_rows(title: str, rows: list[dict[str, Any]], as_json: bool) -> None:
    """A table that never truncates: the first column (the names a user types) keeps its
    width, other cells wrap; piped output is as wide as the table needs, not 80 columns."""
    if as_json:
        print(json.dumps(rows, indent=2, default=str))
        return
    table = Table(title=title)
    columns = list(rows[0]) if rows else []
    for i, column in enumerate(columns):
        cells = [_fmt(row[column]) for row in rows]
        table.add_column(str(column), overflow="fold", no_wrap=i == 0,
                         min_width=max(map(len, cells)) if i == 0 else None)
    for row in rows:
        table.add_row(*(_fmt(v) for v in row.values()))
    console = out
    if not out.is_terminal:
        width = Measurement.get(out, out.options.update(width=10_000), table).maximum
        console = Console(width=max(width, 20), file=out.file)
    console.print(table)


def _scenario_file(file: Path) -> Path:
    """The scenario file named on the command line: a path that exists wins; otherwise a
    bundled scenario's name (quickstart, quickstart.yaml or scenarios/quickstart.yaml)."""
    if file.exists():
        return file
    bundled = bundled_scenario(str(file))
    if bundled is not None:
        return bundled
    if file.parent not in (Path("."), Path("scenarios")):
        return file  # a path elsewhere: reading it says why it cannot be read
    raise ScenarioError(f"cannot read scenario '{file}': there is no such file, and no bundled "
                        f"scenario has that name; bundled: {', '.join(bundled_scenarios())} "
                        "(dlsim list scenarios).")


def _summary_rows(summary: dict[str, Any], prefix: str = "") -> list[dict[str, Any]]:
    """Nested fields as dotted names; a table (a list of rows) is left to summary.json."""
    rows = []
    for key, value in summary.items():
        if isinstance(value, dict):
            rows += _summary_rows(value, f"{prefix}{key}.")
        elif isinstance(value, list) and value and isinstance(value[0], dict):
            rows.append({"field": f"{prefix}{key}", "value": f"{len(value)} rows in summary.json"})
        else:
            rows.append({"field": f"{prefix}{key}", "value": value})
    return rows


CACHE_DIR = ".cache"  # under --out; slug() never yields a name starting with a dot
SCALING_COLUMNS = {"line": "line", "base_devices": "N0", "amdahl_f": "f",
                   "amdahl_limit": "limit", "n_half_devices": "N½", "amdahl_r2": "R² Amdahl",
                   "usl_sigma": "σ", "usl_kappa": "κ", "n_peak_devices": "N*",
                   "usl_r2": "R² USL"}


def _sweep(file: Path, base: dict[str, Any], vary: dict[str, list[Any]], out_dir: Path,
           as_json: bool, workers: int | None = None, scheduler: str | None = None,
           dask_workers: int | None = None, fmt: str = "csv", cache: bool = True) -> None:
    if fmt not in ("csv", "parquet"):
        raise ScenarioError(f"--format is csv or parquet (got {fmt!r}).", field="--format")
    _at_least("--workers", workers, 1)
    _at_least("--dask-workers", dask_workers, 1)
    with _writing(out_dir):
        points = PointCache(out_dir / CACHE_DIR) if cache else None
    with executor_for(workers, scheduler, dask_workers) as executor:
        table = run_sweep(base, vary, file=str(file), progress=not as_json, executor=executor,
                          cache=points)
    keys = list(vary)
    scaling = scaling_analysis(table, keys)
    with _writing(out_dir):
        where = write_sweep(str(base.get("name", file.stem)), table, keys, base, out_dir,
                            fmt=fmt, scaling=scaling)
    if as_json:
        print(json.dumps(records(table), indent=2, allow_nan=False))
        return
    wide = pivot(table, keys)
    _print_rows(f"{base.get('name')}: {primary_metric(table)} (s)",
                wide.astype(object).to_dict("records"), False)
    if "error" in table:
        failed = table[table["error"].notna()][[*keys, "error_field", "error"]]
        _print_rows("points that failed", failed.astype(object).to_dict("records"), False)
    if scaling:
        rows = [{SCALING_COLUMNS[k]: v for k, v in g.fit_row().items()} for g in scaling]
        _print_rows("Scaling over the smallest device count N0: Amdahl f, limit, N½; "
                    "USL σ, κ, peak N*", rows, False)
    if points is not None:
        out.print(f"{len(table)} points: {points.hits} from the cache ({points.directory}), "
                  f"{points.writes} simulated and cached")
    out.print(f"report: {where / 'index.html'}")


@app.command()
def run(file: ScenarioFile, out_dir: OutDir = Path("reports"), as_json: AsJson = False,
        calibration: Annotated[str | None, typer.Option(
            help="A `dlsim calibrate` file to overlay on the cluster's device.")] = None,
        force: Annotated[bool, typer.Option(
            help="Apply --calibration even to a device it was not made for.")] = False
        ) -> None:
    """Simulate a scenario; print its summary and write reports/<name>/ (index.html,
    summary.json, trace.json). A scenario with a 'sweep:' block runs every point."""
    try:
        file = _scenario_file(file)
        data = read_yaml(file)
        if calibration:
            _check_calibration(calibration)
            if "cluster" not in scenario_model(data, str(file)).model_fields:
                raise ScenarioError(f"--calibration overlays the device of the scenario's "
                                    f"cluster, and this {data['kind']} scenario has none.",
                                    file=str(file), field="--calibration")
            data["cluster"] = {**(data.get("cluster") or {}), "calibration": calibration,
                               "force_calibration": force}
        if data.get("sweep"):
            _sweep(file, data, data["sweep"], out_dir, as_json)
            return
        with _run_progress(err) as progress, observing(progress):
            result = simulate(data if calibration else file)
        with _writing(out_dir):
            where = write_run(result, out_dir)
    except ScenarioError as exc:
        _fail(exc)
    if as_json:
        print(to_json(result.summary), end="")
        return
    _print_rows(result.summary["name"], _summary_rows(result.summary), False)
    events = result.summary["simulation"]["events"]
    out.print(f"simulated in {result.wall_s:.3f} s ({events} events); "
              f"report: {where / 'index.html'}")


class RunProgress:
    """The progress bar of one run: simulated time over the engine's estimate of it (a
    floor: the busiest rank's compute), on stderr once the run has taken ``AFTER_S`` of
    wall time, so that quick runs print nothing; nothing when stderr is not a terminal."""

    AFTER_S = 2.0

    def __init__(self, console: Console, clock: Callable[[], float] = time.perf_counter):
        self.console = console
        self.clock = clock
        self.started = clock()
        self.bar: Progress | None = None
        self.task: TaskID | None = None

    def __call__(self, now_s: float, estimate_s: float) -> None:
        if self.bar is None:
            if not self.console.is_terminal or self.clock() - self.started < self.AFTER_S:
                return
            self.bar = Progress(console=self.console, transient=True)
            self.bar.start()
            self.task = self.bar.add_task("simulating", total=None)
        assert self.task is not None
        total = max(estimate_s, now_s)
        self.bar.update(self.task, completed=now_s, total=total,
                        description=f"simulated {now_s:.4g} s of about {total:.4g} s")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


@contextmanager
def _run_progress(console: Console) -> Iterator[RunProgress]:
    progress = RunProgress(console)
    try:
        yield progress
    finally:
        progress.close()


def _check_calibration(calibration: str) -> None:
    """--calibration names a readable UTF-8 file (its contents are checked when overlaid)."""
    from dlsim.calibration.store import resolve

    path = resolve(calibration)
    if path.is_file():
        try:
            read_text(path)
        except ScenarioError as exc:
            raise ScenarioError(exc.message, file=str(path), field="--calibration") from None


def _parse_vary(items: list[str]) -> dict[str, list[Any]]:
    """--vary key=v1,v2,...: the values are a YAML flow sequence, so a value may itself be
    a list (placement=[0,1],[1,0])."""
    vary: dict[str, list[Any]] = {}
    for item in items:
        key, sep, values = item.partition("=")
        if not sep or not key.strip() or not values:
            raise ScenarioError(f"--vary takes key=v1,v2,... (got {excerpt(repr(item))}).",
                                field="--vary")
        try:
            parsed = yaml.load(f"[{values}]", Loader=ScenarioLoader)
        except yaml.YAMLError:
            parsed = None
        if not isinstance(parsed, list) or not parsed:
            raise ScenarioError(f"the values of {excerpt(repr(key.strip()))} are not a "
                                f"comma-separated list of YAML values (got "
                                f"{excerpt(repr(values))}); write key=v1,v2 or, for list "
                                "values, key=[0,1],[1,0].", field="--vary")
        vary[key.strip()] = parsed
    return vary


@app.command()
def sweep(file: ScenarioFile,
          vary: Annotated[list[str] | None,
                          typer.Option(help="field=v1,v2,... (repeatable)")] = None,
          out_dir: OutDir = Path("reports"), as_json: AsJson = False,
          workers: Annotated[int | None, typer.Option(
              help="Local worker processes (default: one per CPU; 1: in this process).")]
          = None,
          scheduler: Annotated[str | None, typer.Option(
              help="Run on this Dask scheduler, e.g. tcp://host:8786.")] = None,
          dask_workers: Annotated[int | None, typer.Option(
              help="Start a local Dask cluster with this many workers.")] = None,
          fmt: Annotated[str, typer.Option("--format", help="Table file: csv | parquet.")]
          = "csv",
          no_cache: Annotated[bool, typer.Option(
              "--no-cache", help="Simulate every point again, ignoring <out>/.cache.")]
          = False) -> None:
    """Simulate a grid over scenario fields (or the file's own 'sweep:' block). Completed
    points are cached in <out>/.cache, so an interrupted sweep resumes; a point whose scenario
    is invalid becomes a row with its error. A device-count sweep gets Amdahl and USL fits."""
    try:
        file = _scenario_file(file)
        data = read_yaml(file)
        grid = _parse_vary(list(vary)) if vary else data.get("sweep") or {}
        try:
            _sweep(file, data, grid, out_dir, as_json, workers, scheduler, dask_workers, fmt,
                   not no_cache)
        except ScenarioError as exc:
            raise _as_vary(exc, list(grid) if vary else []) from None
    except ScenarioError as exc:
        _fail(exc)


def _as_vary(exc: ScenarioError, keys: list[str]) -> ScenarioError:
    """An error about a field that only a --vary key names is the flag's, not the file's."""
    for key in keys:
        if exc.field and (key == exc.field or key.startswith(f"{exc.field}.")):
            return ScenarioError(exc.message, field=f"--vary {excerpt(key)}")
    return exc


@app.command()
def validate(data: Annotated[Path, typer.Option(help="Folder of published measurements.")]
             = DEFAULT_DIR, out_dir: OutDir = Path("reports"), as_json: AsJson = False,
             host: Annotated[bool, typer.Option(
                 "--host", help="Also run real torch training steps here (host-* tables).")]
             = False,
             calibration: Annotated[str | None, typer.Option(
                 help="Calibration file for --host (default: this host's under "
                      "calibration/).")] = None,
             force: Annotated[bool, typer.Option(
                 help="Use a calibration measured on another device.")] = False,
             repeats: Annotated[int, typer.Option(min=1, help="Timed steps per host row.")]
             = 5,
             table: Annotated[list[str] | None, typer.Option(
                 help="Only this table (repeatable; default: all but the Hopper-era "
                      "whole-job tables, which take many minutes).")] = None) -> None:
    """Predict published measurements (the bundled validation/ tables, or --data DIR) and
    print the error per row and per table; with --host, also time real torch training steps
    of held-out models on this host against their prediction with its calibration; writes
    reports/validation/."""
    try:
        # the host rows first: a calibration of another device is refused before anything runs
        measured = host_validation(calibration, force, repeats, progress=not as_json) \
            if host else None
        rows = run_validation(data, table or [name for name in TABLES if name not in MODERN])
        if measured is not None:
            rows = pd.concat([rows, measured], ignore_index=True)
        with _writing(out_dir):
            where = write_sweep("validation", rows, ["measured", "table"],
                                {"data": str(data)}, out_dir, y="predicted",
                                image=plots.parity(rows))
    except ScenarioError as exc:
        _fail(exc)
    if as_json:
        print(rows.drop(columns="unit").to_json(orient="records", indent=2))
        return
    _print_rows("predicted vs measured", rows.astype(object).to_dict("records"), False)
    _print_rows("error per table", table_errors(rows).astype(object).to_dict("records"), False)
    if host:
        errors = rows[rows["table"].str.startswith("host-")]["error_pct"].abs()
        out.print(f"host rows (held-out models and DDP): median absolute error "
                  f"{errors.median():.1f}% over {len(errors)} rows")
    if not table:
        out.print(f"not run: the Hopper-era tables ({', '.join(MODERN)}) simulate whole H100 "
                  "jobs for many minutes; --table NAME runs one.")
    out.print(f"report: {where / 'index.html'}")


@app.command()
def calibrate(device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
              quick: Annotated[bool, typer.Option(help="A subset, under two minutes.")]
              = False,
              threads: Annotated[int | None, typer.Option(
                  min=1, help="torch.set_num_threads (default: half the CPUs).")] = None,
              out_dir: Annotated[Path, typer.Option("--out", help="Directory of calibration "
                                                    "files.")] = Path("calibration"),
              refit: Annotated[Path | None, typer.Option(
                  help="Fit this calibration file's measurements again (no measuring) and "
                       "rewrite it.")] = None,
              as_json: AsJson = False) -> None:
    """Measure this host with torch microbenchmarks (matmul, conv2d, attention, memory-bound
    kernels, launch overhead, copies, all-reduce across local processes; on a GPU also FP8
    GEMMs and fused attention), fit the cost model's efficiency curves and write
    <out>/<device-fingerprint>.json."""
    try:
        from dlsim.calibration.calibrate import calibrate as run_calibration
        from dlsim.calibration.calibrate import refit as refit_calibration

        cal, path = (refit_calibration(refit) if refit is not None else
                     run_calibration(device, quick, threads, out_dir, progress=not as_json))
    except ImportError as exc:
        _fail(ScenarioError(f"dlsim calibrate needs PyTorch and SciPy ({exc.name} is not "
                            "installed): pip install 'dlsim[calibrate]'."))
    except ScenarioError as exc:
        _fail(exc)
    rows = [{"curve": k, "max": c.max, "half_gflop": c.half_gflop, "tflops": c.rate_tflops,
             "points": c.points, "median_abs_residual_pct": c.median_abs_residual_pct}
            for k, c in cal.curves.items()]
    rows.append({"curve": "memory", "max": cal.memory_efficiency, "half_gflop": 0.0,
                 "tflops": None, "points": len(cal.memory_residuals_pct),
                 "median_abs_residual_pct": float(pd.Series(cal.memory_residuals_pct)
                                                  .abs().median())})
    for label, link_fit in (("all-reduce", cal.allreduce_link), ("DDP bucket", cal.link)):
        if link_fit is not None:
            rows.append({"curve": f"{link_fit.backend} {label}", "max": None,
                         "half_gflop": None, "tflops": None,
                         "points": len(link_fit.residuals_pct),
                         "median_abs_residual_pct": link_fit.median_abs_residual_pct})
    if as_json:
        print(json.dumps({"file": str(path), "fingerprint": cal.fingerprint, "curves": rows},
                         indent=2))
        return
    _print_rows(f"{cal.host.name}, {cal.host.threads} thread(s), peak "
                f"{cal.peak_tflops['fp32'] * 1e3:.1f} GFLOP/s fp32", rows, False)
    link = (f"; loopback {cal.link.backend} link (DDP bucket): {cal.link.latency_us:.0f} us, "
            f"{cal.link.bandwidth_GBps:.2f} GB/s" if cal.link else "")
    out.print(f"memory {cal.memory_bandwidth_GBps:.1f} GB/s, launch "
              f"{cal.kernel_launch_us:.1f} us{link}; {cal.duration_s:.0f} s; wrote {path}")


def _gpu_counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(float(g)) for g in text.split(","))
    except ValueError:
        counts = ()
    if not counts or min(counts) < 1:
        raise ScenarioError(f"--gpus takes a device count or a list like 256,512,1024 "
                            f"(got {text!r}).", field="--gpus")
    return counts


@app.command()
def plan(model: Annotated[str, typer.Option(
             help="Model preset (e.g. gpt3-175b) or a Hugging Face config.json path.")],
         cluster: Annotated[str, typer.Option(help="System preset, e.g. dgx-a100.")],
         gpus: Annotated[str, typer.Option(help="Device count, or counts: 256,512,1024.")],
         global_batch: Annotated[str, typer.Option(
             metavar="N|LIST|LO:HI",
             help="Samples per step: 1536, a list 512,1024,2048 or doublings 512:8192 "
                  "(several batches need --target-loss).")],
         tokens: Annotated[float | None, typer.Option(help="Tokens to train on.")] = None,
         target_loss: Annotated[float | None, typer.Option(
             help="Kaplan et al.'s loss (nats per token) to reach: the global batch is "
                  "searched around the critical batch, plans ranked by time to it.")] = None,
         objective: Annotated[str, typer.Option(help="time | cost | energy")] = "time",
         max_days: Annotated[float | None, typer.Option(help="Deadline in days.")] = None,
         budget: Annotated[float | None, typer.Option(help="Budget in USD.")] = None,
         precision: Annotated[str, typer.Option(help="fp32 | tf32 | fp16 | bf16 | fp8")]
         = "bf16",
         top: Annotated[int, typer.Option(help="Plans to show.")] = 10,
         confirm: Annotated[int, typer.Option(help="Best plans the engine simulates.")] = 3,
         workers: Annotated[int | None, typer.Option(
             help="Processes the engine's confirmations run on, started ahead "
                  "[default: one per CPU].")] = None,
         max_plans: Annotated[int, typer.Option(
             help="Refuse a request that enumerates more plans than this.")] = 50_000_000,
         all_plans: Annotated[bool, typer.Option(
             "--all-plans", help="Estimate every plan, not only those that can reach the "
             "top (slower; plans.csv then lists every plan that fits).")] = False,
         out_dir: OutDir = Path("reports"), as_json: AsJson = False) -> None:
    """Find the fastest (or cheapest, or least energy) way to train a model on a cluster:
    enumerate data/tensor/pipeline plans, drop those that do not fit, rank by a closed-form
    estimate, confirm the best with the engine; writes reports/plan-<model>-<cluster>/."""
    from rich.progress import track

    from dlsim.planner import PlanRequest, plan_to_json, run_plan, write_plan
    from dlsim.planner.batches import parse_global_batch

    try:
        batches = parse_global_batch(global_batch)
        _positive("--target-loss", target_loss, "a positive loss in nats per token")
        _positive("--tokens", tokens)
        _positive("--max-days", max_days)
        _positive("--budget", budget, "a positive amount in USD")
        _at_least("--top", top, 1)
        _at_least("--confirm", confirm, 0)
        _at_least("--workers", workers, 1)
        _at_least("--max-plans", max_plans, 1)
        request = PlanRequest(model, cluster, _gpu_counts(gpus), batches[0], precision,
                              tokens=tokens, objective=objective, max_days=max_days,
                              budget_usd=budget, top=top, confirm=confirm,
                              max_plans=max_plans, exhaustive=all_plans,
                              target_loss=target_loss,
                              global_batches=batches if len(batches) > 1 else (),
                              workers=workers)
        # a bar only while the engine confirms (no live display's thread beside the estimate)
        result = run_plan(request, lambda items, label: track(
            items, description=label, console=err, transient=True, disable=as_json))
        with _writing(out_dir):
            where = write_plan(result, out_dir)
    except ScenarioError as exc:
        _fail(_as_flag(exc))
    if as_json:
        print(plan_to_json(result), end="")
        return
    size = result.space
    _print_rows(f"{size['enumerated']:,} plans enumerated, {size['feasible']:,} feasible, "
                f"{size['fitting']:,} fit in memory, {size['estimated']:,} estimated, "
                f"{size['pruned']:,} pruned", [_plan_row(p) for p in result.plans], False)
    if result.smallest_gpus_meeting_deadline is not None:
        out.print(f"smallest cluster meeting {max_days:g} days: "
                  f"{result.smallest_gpus_meeting_deadline:,} GPUs")
    if result.time_to_loss is not None:
        loss = result.time_to_loss
        out.print(f"target loss {loss['target_loss']:g}: critical batch B_crit = "
                  f"{loss['critical_batch_tokens']:,.0f} tokens "
                  f"({loss['critical_batch_samples']:,.0f} samples), S_min = "
                  f"{loss['min_steps']:,.0f} steps (Kaplan et al. 2020); batches searched: "
                  f"{', '.join(f'{b:,}' for b in loss['batches'])}")
    for line in result.explanation:
        out.print(line, markup=False, highlight=False)
    out.print(f"report: {where / 'index.html'}")


PLAN_FLAGS = {"system": "--cluster", "model": "--model", "preset": "--model",
              "precision": "--precision"}


def _as_flag(exc: ScenarioError) -> ScenarioError:
    """A planner error names the library's field (the hardware lookup says 'system'); the
    user typed a flag."""
    if exc.file is None and exc.field in PLAN_FLAGS:
        return ScenarioError(exc.message, field=PLAN_FLAGS[exc.field])
    return exc


def _plan_row(p: dict[str, Any]) -> dict[str, Any]:
    """One plan on one terminal line: degrees as d·t·p, where the step time came from."""
    schedule = p["schedule"] + (f"×{p['virtual_stages']}" if p["virtual_stages"] > 1 else "")
    batch = ({"batch": p["global_batch"], "steps": round(p["steps_to_target"])}
             if "steps_to_target" in p else {})
    # context, expert and expert-tensor degrees and the ZeRO shard group where they apply
    extra = "".join(f" {tag}{p[k]}" for k, tag in (("context", "c"), ("expert", "e"),
                                                   ("expert_tensor", "et"))
                    if p.get(k, 1) > 1)
    zero = f"{p['zero_stage']}" + (f"/{p['shard_group']}" if p.get("shard_group") else "")
    return {"gpus": p["gpus"], **batch,
            "d·t·p": f"{p['data']}·{p['tensor']}·{p['pipeline']}{extra}",
            "micro": p["microbatch"], "schedule": schedule, "zero": zero,
            "recompute": p["recompute"], "sp": ("overlap" if p.get("tp_comm_overlap") else "yes")
            if p.get("sequence_parallel") else "",
            "placement": p["placement"],
            "algorithm": p["algorithm"] + (f" {p['protocol']}" if p.get("protocol", "auto")
                                           != "auto" else ""),
            "step (s)": float(f"{p['step_time_s']:.3g}"),
            "from": p["step_time_source"][:3],
            "days": float(f"{p['time_to_train_s'] / 86400:.3g}"),
            "USD": round(p["cost_usd"]) if p["cost_usd"] is not None else None}


def _json_option(text: str | None, option: str) -> dict[str, Any]:
    if text is None:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ScenarioError(f"{option} is not JSON ({exc}): {text[:80]}", field=option) from exc
    if not isinstance(value, dict):
        raise ScenarioError(f"{option} must be a JSON object, not {text[:80]}", field=option)
    return value


@app.command("import-model")
def import_model(
        factory: Annotated[str, typer.Argument(help="package.module:factory of an nn.Module.")],
        kwargs: Annotated[str | None, typer.Option(help="The factory's keyword arguments, "
                                                        "as a JSON object.")] = None,
        inputs: Annotated[str | None, typer.Option(help='Its inputs, e.g. \'{"ids": '
                                                        '{"shape": [1, 1024], "dtype": '
                                                        '"int64"}}\'.')] = None,
        microbatch: Annotated[int, typer.Option(help="The first dimension of every input.")]
        = 1,
        precision: Annotated[str, typer.Option(help="Prices bytes at this dtype.")] = "bf16",
        as_json: AsJson = False) -> None:
    """Import a torch model (meta device: no weights) and print its layer table: per layer
    the forward and backward FLOPs by kernel kind, bytes moved, parameters, activations.
    Given a PyTorch execution trace (a .json file) instead, print the operators a replay
    runs and the nodes it cannot map."""
    if factory.endswith(".json"):
        _print_trace(factory, precision, as_json)
        return
    try:
        spec = ModelSpec.model_validate({"torch": factory,
                                         "kwargs": _json_option(kwargs, "--kwargs"),
                                         "inputs": _json_option(inputs, "--inputs")})
        model = build_model(spec, microbatch, max(DTYPE_BYTES[precision], 2))
    except ValidationError as exc:
        _fail(ScenarioError(describe_invalid(exc.errors(), ModelSpec), field="model"))
    except KeyError:
        _fail(ScenarioError(f"unknown precision '{precision}'; one of "
                            f"{', '.join(DTYPE_BYTES)}.", field="--precision"))
    except ScenarioError as exc:
        _fail(exc)
    _print_rows(f"{factory}: {model.parameters:,} parameters", layer_rows(model), as_json)
    if not as_json:
        out.print(parallelism_note(model), markup=False, highlight=False)


def _print_trace(path: str, precision: str, as_json: bool) -> None:
    try:
        work = classify(path, max(DTYPE_BYTES[precision], 2))
    except KeyError:
        _fail(ScenarioError(f"unknown precision '{precision}'; one of "
                            f"{', '.join(DTYPE_BYTES)}.", field="--precision"))
    except ScenarioError as exc:
        _fail(exc)
    unmapped = sum(work.unmapped.values())
    _print_rows(f"{path}: {len(work.ops)} ops over {work.world} rank(s), {unmapped} "
                f"unmapped node(s), {work.groups_assumed} communication op(s) whose process "
                "group the trace does not name (world assumed)", trace_rows(work), as_json)


LISTINGS = ("devices", "links", "systems", "models", "scenarios")


@app.command("list")
def list_(what: Annotated[str, typer.Argument(help=" | ".join(LISTINGS))],
          as_json: AsJson = False) -> None:
    """List hardware profiles, model presets or bundled scenarios."""
    try:
        if what == "devices":
            rows = [_device_row(hardware.device(n)) for n in hardware.available("devices")]
        elif what == "links":
            rows = [_link_row(hardware.link(n)) for n in hardware.available("links")]
        elif what == "systems":
            rows = [{"name": s.name, "device": s.device, "devices_per_node": s.devices_per_node,
                     "intra_node": s.intra_node, "description": s.display_name}
                    for s in map(hardware.system, hardware.available("systems"))]
        elif what == "models":
            rows = preset_rows()
        elif what == "scenarios":
            rows = [{"name": p.stem, "file": f"scenarios/{p.name}",
                     "description": read_yaml(p).get("description", "")}
                    for p in sorted(SCENARIOS.glob("*.yaml"))]
        else:
            raise ScenarioError(f"cannot list '{what}'; choose one of {', '.join(LISTINGS)}.")
    except ScenarioError as exc:
        _fail(exc)
    _print_rows(what, rows, as_json)


def _device_row(d: hardware.DeviceProfile) -> dict[str, Any]:
    return {"name": d.name, "kind": d.kind, "bf16_tflops": d.peak_tflops.get("bf16"),
            "fp32_tflops": d.peak_tflops.get("fp32"), "memory_GB": d.memory_GB,
            "memory_bandwidth_GBps": d.memory_bandwidth_GBps, "power_W": d.power_W,
            "usd_per_hour": d.price_usd_per_hour}


def _link_row(x: hardware.LinkProfile) -> dict[str, Any]:
    return {"name": x.name, "up_GBps": x.up_Bps / 1e9, "down_GBps": x.down_Bps / 1e9,
            "latency_us": x.latency_us, "description": x.display_name}


def main() -> None:
    app(prog_name="dlsim")


if __name__ == "__main__":
    main()  # typer exits with the command's status
