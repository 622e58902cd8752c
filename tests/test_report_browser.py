"""Reports opened in real headless Chromium: sections render, nothing errors, untrusted text
stays text, and the page is not blank. CI installs Debian's chromium; a machine without it
skips locally but fails under CI=true."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from matplotlib.image import imread

import dlsim
from dlsim.analysis.scaling import scaling_analysis
from dlsim.output import write_run, write_sweep
from dlsim.sweep import run_sweep

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


@pytest.fixture(scope="module")
def hostile_report(tmp_path_factory):
    out = tmp_path_factory.mktemp("reports")
    result = dlsim.simulate({
        "name": "<script>alert(1)</script>", "model": {"preset": "gpt2-124m"},
        "cluster": {"preset": "dgx-a100", "nodes": 1},
        "training": {"global_batch": 64, "microbatch": 8}})
    return write_run(result, out) / "index.html"


def test_report_renders_in_chromium_with_its_sections(chromium, hostile_report, tmp_path):
    run = _browse(chromium, hostile_report, tmp_path / "profile", "--dump-dom")
    dom = run.stdout
    assert run.returncode == 0, run.stderr[-2000:]
    for section in ("summary", "breakdown", "timeline", "memory", "links", "topology",
                    "scenario"):
        assert f'id="{section}"' in dom
    assert "<script>alert(1)</script>" not in dom  # the name is text, not markup
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in dom
    console = [line for line in run.stderr.splitlines() if "CONSOLE" in line]
    assert console == []
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
    run = _browse(chromium, scaling_sweep_report, tmp_path / "profile", "--dump-dom")
    dom = run.stdout
    assert run.returncode == 0, run.stderr[-2000:]
    for section in ("plot", "scaling", "table", "scenario"):
        assert f'id="{section}"' in dom
    assert "<b>scaling</b>" not in dom and "&lt;b&gt;scaling&lt;/b&gt;" in dom
    assert [line for line in run.stderr.splitlines() if "CONSOLE" in line] == []
    assert dom.count("data:image/png;base64,") == 2  # the sweep plot and the scaling curves
    assert dom.count("algorithm=ring") >= 2  # a fitted row and the curve's points
