"""Regenerate the pictures in docs/img/ that the pages in docs/questions/ show.

    python docs/make_pictures.py            # every picture (about 2 minutes on 2 cores)
    python docs/make_pictures.py quickstart # only the pictures whose name starts with this

Each picture runs the page's own command (`dlsim run|sweep|plan|validate ... --out TMP`) from
the repository root into a temporary directory, cuts the named <section>s out of the report's
index.html (with the report's stylesheet), opens that in headless Chromium and takes a
screenshot, then crops the white margin and stores a 256-colour PNG (each under ~250 KB).
Needs chromium (Debian's `chromium` package) and Pillow. Last regenerated 2026-11-23
(deepseek-v3-2048-h800: 2026-12-03).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image, ImageChops

ROOT = Path(__file__).resolve().parent.parent
IMG = ROOT / "docs" / "img"
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync",
         "--hide-scrollbars"]
MAX_BYTES = 250_000

# picture name -> (dlsim arguments without --out, report directory, sections, window width)
PICTURES: dict[str, tuple[list[str], str, list[str], int]] = {
    "quickstart": (["run", "scenarios/quickstart.yaml"], "quickstart",
                   ["summary", "breakdown"], 1100),
    "ps-vs-ring": (["run", "scenarios/ps-vs-ring.yaml"], "ps-vs-ring", ["plot"], 1000),
    "allreduce-dgx-a100": (["run", "scenarios/allreduce-dgx-a100.yaml"], "allreduce-dgx-a100",
                           ["summary", "links"], 1100),
    "hierarchical-vs-ring": (["run", "scenarios/hierarchical-vs-ring.yaml"],
                             "hierarchical-vs-ring", ["plot"], 1000),
    "zero-stages": (["run", "scenarios/zero-stages.yaml"], "zero-stages", ["plot"], 1000),
    "llama2-70b-zero3": (["run", "scenarios/llama2-70b-8xh100-zero3.yaml"],
                         "llama2-70b-8xh100-zero3", ["memory"], 1100),
    "pipeline-bubble": (["run", "scenarios/pipeline-bubble.yaml"], "pipeline-bubble",
                        ["plot"], 1000),
    "gpt3-175b-megatron": (["run", "scenarios/gpt3-175b-megatron.yaml"], "gpt3-175b-megatron",
                           ["summary", "breakdown"], 1100),
    "plan-gpt3-175b": (["plan", "--model", "gpt3-175b", "--cluster", "dgx-a100", "--gpus",
                        "1024", "--global-batch", "1536", "--tokens", "300e9"],
                       "plan-gpt3-175b-dgx-a100", ["answer", "why"], 1100),
    "scaling-gpt2": (["sweep", "scenarios/scaling-gpt2-data-parallel.yaml", "--workers", "1"],
                     "scaling-gpt2-data-parallel", ["scaling"], 1100),
    "stragglers-bsp": (["run", "scenarios/stragglers-bsp.yaml"], "stragglers-bsp",
                       ["summary", "sync"], 1100),
    "ssp-vs-asp": (["run", "scenarios/ssp-vs-asp.yaml"], "ssp-vs-asp", ["plot"], 1000),
    "federated-phones": (["run", "scenarios/federated-phones.yaml"], "federated-phones",
                         ["summary", "rounds"], 1100),
    "edge-split": (["run", "scenarios/edge-split-resnet50.yaml"], "edge-split-resnet50",
                   ["split"], 1100),
    "edge-spatial": (["run", "scenarios/edge-spatial-vgg16.yaml"], "edge-spatial-vgg16",
                     ["spatial"], 1100),
    "validation": (["validate"], "validation", ["plot"], 1100),
    "rail-fabric": (["run", "scenarios/rail-fabric.yaml"], "rail-fabric", ["plot"], 1000),
    "sequence-parallel": (["run", "scenarios/sequence-parallel.yaml"], "sequence-parallel",
                          ["plot"], 1000),
    "gpt3-time-to-loss": (["run", "scenarios/gpt3-time-to-loss.yaml"], "gpt3-time-to-loss",
                          ["sync"], 1100),
    "goodput-16k-h100": (["run", "scenarios/goodput-16k-h100.yaml"], "goodput-16k-h100",
                         ["sync"], 1100),
    "trace-replay": (["run", "examples/trace-replay.yaml"], "trace-replay-dgx-a100",
                     ["summary", "timeline"], 1100),
    "ring-vs-ulysses": (["run", "scenarios/ring-vs-ulysses.yaml"], "ring-vs-ulysses",
                        ["plot"], 1000),
    "deepseek-v3-2048-h800": (["run", "scenarios/deepseek-v3-2048-h800.yaml"],
                              "deepseek-v3-2048-h800", ["summary", "breakdown"], 1100),
}


def _cut(report: Path, sections: list[str], page: Path) -> None:
    """Write a page holding only the report's stylesheet and the named sections."""
    html = report.read_text(encoding="utf-8")
    style = re.search(r"<style>.*?</style>", html, re.S)
    parts = []
    for name in sections:
        found = re.search(rf'<section id="{name}">.*?</section>', html, re.S)
        if found is None:
            raise SystemExit(f"{report}: no section {name!r}")
        parts.append(found.group(0))
    page.write_text("<!DOCTYPE html><html><head><meta charset='utf-8'>"
                    f"{style.group(0) if style else ''}</head><body><main>"
                    + "\n".join(parts) + "</main></body></html>", encoding="utf-8")


def _shoot(page: Path, shot: Path, width: int, profile: Path) -> None:
    run = subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}",
                          f"--screenshot={shot}", f"--window-size={width},2600",
                          page.as_uri()], capture_output=True, text=True, timeout=120)
    if run.returncode != 0 or not shot.exists():
        raise SystemExit(f"chromium failed on {page}:\n{run.stderr[-2000:]}")


def _store(shot: Path, target: Path) -> int:
    image = Image.open(shot).convert("RGB")
    white = Image.new("RGB", image.size, (255, 255, 255))
    box = ImageChops.difference(image, white).getbbox()
    if box is None:
        raise SystemExit(f"{shot} is blank")
    left, top, right, bottom = box
    image = image.crop((max(left - 16, 0), max(top - 16, 0),
                        min(right + 16, image.width), min(bottom + 16, image.height)))
    for colours in (256, 128, 64):
        image.quantize(colours, dither=Image.Dither.NONE).save(target, optimize=True)
        if target.stat().st_size <= MAX_BYTES:
            break
    return target.stat().st_size


def main(prefix: str = "") -> None:
    if CHROMIUM is None:
        raise SystemExit("chromium is not installed")
    IMG.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "COLUMNS": "200"}
    with tempfile.TemporaryDirectory(prefix="dlsim-docs-") as tmp:
        out = Path(tmp)
        for name, (args, report, sections, width) in PICTURES.items():
            if not name.startswith(prefix):
                continue
            # this checkout's dlsim (python -m from ROOT), not whichever one is installed
            run = subprocess.run([sys.executable, "-m", "dlsim", *args, "--out",
                                  str(out / "reports")], cwd=ROOT,
                                 env=env, capture_output=True, text=True, timeout=300)
            if run.returncode != 0:
                raise SystemExit(f"dlsim {' '.join(args)} failed:\n{run.stdout}{run.stderr}")
            page = out / f"{name}.html"
            _cut(out / "reports" / report / "index.html", sections, page)
            _shoot(page, out / f"{name}.png", width, out / "profile")
            size = _store(out / f"{name}.png", IMG / f"{name}.png")
            print(f"docs/img/{name}.png  {size / 1e3:.0f} kB  <- dlsim {' '.join(args)}")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "")
