"""Reports opened in real headless Chromium: sections render, nothing errors, untrusted text
stays text, and the page is not blank. CI installs Debian's chromium; a machine without it
skips locally but fails under CI=true."""

from __future__ import annotations

import html
import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import dlsim
from dlsim.output import write_run, write_sweep
from dlsim.results.scaling import scaling_analysis
from dlsim.sweep.grid import run_sweep

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync"]


@pytest.fixture(scope="module")
def chromium():
    if CHROMIUM is None:
        if os.environ.get("CI"):
            pytest.fail("chromium is not installed; .ci/run installs Debian's chromium")
        pytest.skip("chromium is not installed")
    return CHROMIUM


def _browse(chromium: str, page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run([chromium, *FLAGS, f"--user-data-dir={profile}",
                           "--enable-logging=stderr", "--v=0", *extra, page.as_uri()],
                          capture_output=True, text=True, timeout=120)


def _dom(chromium: str, page: Path, tmp_path: Path, sections: tuple[str, ...]) -> str:
    """The page's DOM after Chromium ran it: it loaded, has ``sections``, logged no error."""
    run = _browse(chromium, page, tmp_path / "profile", "--dump-dom")
    assert run.returncode == 0, run.stderr[-2000:]
    assert [line for line in run.stderr.splitlines() if "CONSOLE" in line] == []
    for section in sections:
        assert f'id="{section}"' in run.stdout, section
    return run.stdout


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    result = dlsim.simulate({
        "name": "<script>alert(1)</script>", "model": {"preset": "gpt2-124m"},
        "cluster": {"preset": "dgx-a100", "nodes": 1},
        "training": {"global_batch": 64, "microbatch": 8}})
    return write_run(result, out) / "index.html"


def test_report_renders_in_chromium_with_its_sections(chromium, hostile_report, tmp_path):
    dom = _dom(chromium, hostile_report, tmp_path, ("summary", "breakdown", "timeline",
                                                   "memory", "links", "topology", "scenario"))
    assert "<script>alert(1)</script>" not in dom  # the name is text, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    assert dom.count("data:image/png;base64,") >= 5


def test_report_screenshot_is_not_blank(chromium, hostile_report, tmp_path):
    shot = tmp_path / "page.png"
    run = _browse(chromium, hostile_report, tmp_path / "profile",
                  f"--screenshot={shot}", "--window-size=1280,2000")
    assert run.returncode == 0 and shot.exists(), run.stderr[-2000:]
    pixels = imread(shot)
    assert pixels.shape[0] >= 1000
    assert float(np.std(pixels[..., :3])) > 0.05  # plots and text, not one flat colour


@pytest.fixture(scope="module")
def scaling_sweep_report(tmp_path_factory):
    base = {"name": "<b>scaling</b>", "kind": "collective",
            "cluster": {"topology": "switch", "devices": 8,
                        "link": {"bandwidth_GBps": 25, "latency_us": 5}},
            "collective": {"op": "allreduce", "algorithm": "ring", "size_bytes": 1e6}}
    vary = {"cluster.devices": [2, 4, 8, 16], "collective.algorithm": ["ring", "ps"]}
    table = run_sweep(base, vary, progress=False)
    scaling = scaling_analysis(table, list(vary))
    out = tmp_path_factory.mktemp("reports")
    return write_sweep(base["name"], table, list(vary), base, out, scaling=scaling) / "index.html"


def test_sweep_report_with_scaling_renders_in_chromium(chromium, scaling_sweep_report, tmp_path):
    dom = _dom(chromium, scaling_sweep_report, tmp_path, ("plot", "scaling", "table", "scenario"))
    assert "<b>scaling</b>" not in dom and "&lt;b&gt;scaling&lt;/b&gt;" in dom
    assert dom.count("data:image/png;base64,") == 2  # the sweep plot and the scaling curves
    assert dom.count("algorithm=ring") >= 2  # a fitted row and the curve's points


@pytest.fixture(scope="module")
def plan_report(tmp_path_factory):
    from dlsim.planner import PlanRequest, run_plan, write_plan

    result = run_plan(PlanRequest("gpt2-124m", "dgx-a100", (8,), 16, confirm=1))
    result.explanation.append("<script>alert('plan')</script>")  # text from elsewhere
    return write_plan(result, tmp_path_factory.mktemp("reports")) / "index.html"


def test_plan_report_renders_in_chromium(chromium, plan_report, tmp_path):
    dom = _dom(chromium, plan_report, tmp_path, ("answer", "why", "plans"))
    assert "<script>alert('plan')</script>" not in dom
    assert "&lt;script&gt;alert('plan')&lt;/script&gt;" in dom
    assert "Why this plan" in dom and "simulated" in dom  # the confirmed winner is explained
    assert dom.count("<tr") >= 2  # the top-plans table has a header and at least one plan


@pytest.fixture(scope="module")
def loss_plan_report(tmp_path_factory):
    from dlsim.planner import PlanRequest, run_plan, write_plan

    result = run_plan(PlanRequest("gpt2-124m", "dgx-a100", (8,), 16, confirm=1,
                                  target_loss=3.5, global_batches=(16, 64, 256)))
    return write_plan(result, tmp_path_factory.mktemp("reports")) / "index.html"


def test_plan_report_draws_time_to_loss_against_the_batch(chromium, loss_plan_report,
                                                          tmp_path):
    """The time-to-loss section renders: its cards (target, B_crit, S_min, best batch), the
    three panels (one image, units on every axis are drawn into it) and the batches named."""
    dom = _dom(chromium, loss_plan_report, tmp_path, ("answer", "time-to-loss", "plans"))
    start = dom.index('id="time-to-loss"')
    section = dom[start:dom.index("<section", start)]
    assert section.count("data:image/png;base64,") == 1
    for text in ("Target loss", "Critical batch", "S_min", "Best batch", "16, 64, 256",
                 "B_crit"):
        assert text in section, text
    assert "to loss 3.5 at a global batch of" in dom  # the answer names the batch


def _measured(chromium: str, page: Path, tmp_path: Path, width: int, height: int) -> dict:
    """Layout figures of ``page`` in a ``width`` x ``height`` window, measured by a probe
    script appended to a copy of it: where the answer line ends, how wide the page is."""
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text(encoding="utf-8").replace("</body>", """<script>
      var answer = document.getElementById("result").getBoundingClientRect();
      document.body.setAttribute("data-probe", JSON.stringify({
        answer_bottom: answer.bottom, page_width: document.documentElement.scrollWidth,
        window_width: window.innerWidth}));
    </script></body>"""), encoding="utf-8")
    run = _browse(chromium, probe, tmp_path / "probe-profile", "--dump-dom",
                  f"--window-size={width},{height}")
    assert run.returncode == 0, run.stderr[-2000:]
    found = re.search(r'data-probe="([^"]*)"', run.stdout)
    assert found, run.stdout[-2000:]
    return json.loads(html.unescape(found.group(1)))


def test_plan_report_leads_with_the_answer_and_fits_1400_px(chromium, plan_report, tmp_path):
    """The winner's layout in words and its figures are the first thing on the page (inside
    the first 900 px), and the page does not scroll sideways in a 1400 px window."""
    shown = _measured(chromium, plan_report, tmp_path, 1400, 900)
    assert shown["window_width"] == 1400
    assert 0 < shown["answer_bottom"] <= 900
    assert shown["page_width"] <= 1400


def test_plan_report_table_sorts_on_a_heading_click(chromium, plan_report, tmp_path):
    """Clicking the step-time heading twice orders the rows by step time, longest first."""
    page = plan_report.read_text(encoding="utf-8")
    probe = tmp_path / "sort.html"
    probe.write_text(page.replace("</body>", """<script>
      var table = document.querySelector("#plans table");
      var heads = Array.prototype.map.call(table.tHead.rows[0].cells, function (c) {
        return c.textContent; });
      var column = heads.indexOf("step");
      table.tHead.rows[0].cells[column].click();
      table.tHead.rows[0].cells[column].click();
      var keys = Array.prototype.map.call(table.tBodies[0].rows, function (r) {
        return parseFloat(r.cells[column].dataset.key); });
      document.body.setAttribute("data-probe", JSON.stringify(keys));
    </script></body>"""), encoding="utf-8")
    run = _browse(chromium, probe, tmp_path / "sort-profile", "--dump-dom")
    keys = json.loads(html.unescape(re.search(r'data-probe="([^"]*)"', run.stdout).group(1)))
    assert len(keys) >= 2 and keys == sorted(keys, reverse=True)


@pytest.fixture(scope="module")
def validation_report(tmp_path_factory):
    import pandas as pd

    rows = pd.DataFrame([
        {"table": "zero_memory", "case": "1.5B d=64 stage 3", "predicted": 0.375,
         "measured": 0.37, "error_pct": 1.35, "unit": "GB"},
        {"table": "zero_memory", "case": "7.5B d=64 stage 3", "predicted": 1.875,
         "measured": 1.88, "error_pct": -0.27, "unit": "GB"},
        {"table": "<i>nccl</i>", "case": "<img src=x onerror=alert(1)> 1 GiB",
         "predicted": 230.0, "measured": 228.0, "error_pct": 0.88, "unit": "GB/s"},
        {"table": "<i>nccl</i>", "case": "8 MiB", "predicted": 120.0, "measured": 90.0,
         "error_pct": 33.3, "unit": "GB/s"}])
    # as `dlsim validate` writes it (dlsim/cli.py)
    return write_sweep("validation", rows, ["measured", "table"], {"data": "<b>shared</b>"},
                       tmp_path_factory.mktemp("reports"), y="predicted") / "index.html"


def test_validation_report_renders_in_chromium(chromium, validation_report, tmp_path):
    dom = _dom(chromium, validation_report, tmp_path, ("plot", "table", "scenario"))
    assert "<img src=x" not in dom and "&lt;img src=x onerror=alert(1)&gt;" in dom
    assert "<i>nccl</i>" not in dom and "&lt;i&gt;nccl&lt;/i&gt;" in dom
    assert "<b>shared</b>" not in dom
    assert dom.count("data:image/png;base64,") == 1  # predicted against measured
    assert "zero_memory" in dom and "7.5B d=64 stage 3" in dom
