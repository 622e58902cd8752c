"""A real wheel, installed in a fresh virtual environment outside the checkout, finds its
hardware profiles, bundled scenarios, calibration files and validation tables.

The wheel is built from the repository root with the environment's setuptools (no build
isolation, so no download); the venv takes dlsim's dependencies from this environment and
only dlsim from the wheel. Everything runs from a directory outside the checkout.
"""

from __future__ import annotations

import json
import os
import site
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from dlsim import __version__

ROOT = Path(__file__).resolve().parents[1]
# folder -> the files of it that ship (setup.py's DATA, restated so that a change to either
# is a decision)
DATA = {
    "hardware_profiles": ["**/*.yaml"],
    "scenarios": ["*.yaml"],
    "calibration": ["*.json"],
    "validation": ["*.csv", "README.md"],
    "traces": ["*.csv", "*.json", "README.md"],
    "examples": ["*.py", "*.yaml", "hf/*.json", "hf/README.md", "traces/*.json"],
}


def _env() -> dict[str, str]:
    """This environment without what would point dlsim back at a checkout."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "DLSIM_PROFILES")}
    return env | {"COLUMNS": "200"}  # rich's tables keep whole device names


def _run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> str:
    done = subprocess.run(args, cwd=cwd, env=env or _env(), capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, (args, done.stdout, done.stderr)
    return done.stdout


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    import setuptools  # noqa: F401  (the build below uses this environment's: dlsim[test])

    out = tmp_path_factory.mktemp("wheel")
    # build/ and dlsim.egg-info go to the temporary folder, not the checkout: no litter, and
    # no stale build/lib from an earlier build leaking into this wheel
    config = out / "build.cfg"
    config.write_text(f"[build]\nbuild_base = {out / 'build'}\n[egg_info]\negg_base = {out}\n")
    _run([sys.executable, "-m", "pip", "wheel", ".", "--no-deps", "--no-build-isolation",
          "--disable-pip-version-check", "-q", "-w", str(out / "dist")], cwd=ROOT,
         env=_env() | {"DIST_EXTRA_CONFIG": str(config)})
    (built,) = (out / "dist").glob("dlsim-*.whl")
    return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> Path:
    where = tmp_path_factory.mktemp("venv") / "env"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", str(where)],
         cwd=where.parent)
    python = where / "bin" / "python"
    if sys.prefix != sys.base_prefix:  # pytest runs in a venv: lend the new one its packages
        (purelib,) = where.glob("lib/python*/site-packages")
        (purelib / "outer.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    # this environment's pip, run by the venv's interpreter, installs into the venv;
    # --ignore-installed leaves an editable dlsim of this environment alone
    _run([str(python), "-m", "pip", "install", "--no-deps", "--ignore-installed",
          "--disable-pip-version-check", "-q", str(wheel)], cwd=where.parent)
    return where


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("elsewhere")


def _shipped(folder: str) -> set[str]:
    return {f"dlsim/_data/{folder}/{p.relative_to(ROOT / folder).as_posix()}"
            for pattern in DATA[folder] for p in (ROOT / folder).glob(pattern) if p.is_file()}


def test_wheel_carries_the_data_and_every_module(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in DATA:
        assert _shipped(folder), folder
    expected = set().union(*map(_shipped, DATA))
    assert {n for n in names if n.startswith("dlsim/_data/")} == expected
    for wanted in ("dlsim/_data/hardware_profiles/devices/a100-sxm4-80gb.yaml",
                   "dlsim/_data/hardware_profiles/links/nvlink3.yaml",
                   "dlsim/_data/hardware_profiles/systems/dgx-a100.yaml",
                   "dlsim/_data/scenarios/quickstart.yaml",
                   "dlsim/_data/calibration/cpu-amd-epyc-2c-1t-32dd4ebe.json",
                   "dlsim/_data/validation/zero_memory.csv",
                   "dlsim/_data/validation/README.md",
                   "dlsim/_data/traces/fedscale_capacity.csv",
                   "dlsim/report/templates/run.html"):
        assert wanted in names
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "dlsim").rglob("*.py")}
    assert modules <= names, f"packages missing from the wheel: {sorted(modules - names)}"
    # nothing else: no reports/, docs/, tests/
    assert {n.split("/")[0] for n in names} == {"dlsim", f"dlsim-{__version__}.dist-info"}


def test_installed_dlsim_is_the_wheel(venv, elsewhere):
    script = ("import json, dlsim, dlsim.data, dlsim.validation as v; "
              "print(json.dumps([dlsim.__file__, str(dlsim.data.ROOT), str(v.DEFAULT_DIR)]))")
    module, root, validation = map(Path, json.loads(
        _run([str(venv / "bin" / "python"), "-c", script], cwd=elsewhere)))
    for path in (module, root, validation):
        assert path.is_relative_to(venv) and not path.is_relative_to(ROOT), path
    assert (validation / "zero_memory.csv").is_file()


def test_installed_wheel_lists_devices(venv, elsewhere):
    listed = _run([str(venv / "bin" / "dlsim"), "list", "devices"], cwd=elsewhere)
    for profile in (ROOT / "hardware_profiles" / "devices").glob("*.yaml"):
        assert profile.stem in listed


def test_installed_wheel_runs_a_bundled_scenario_by_name(venv, elsewhere):
    out = elsewhere / "reports"
    _run([str(venv / "bin" / "dlsim"), "run", "quickstart", "--out", str(out)], cwd=elsewhere)
    assert (out / "quickstart" / "index.html").is_file()
    assert json.loads((out / "quickstart" / "summary.json").read_text())["step_time_s"] > 0


def test_installed_wheel_imports_the_bundled_torch_example(venv, elsewhere):
    """scenarios/torch-import-gpt.yaml names tiny_gpt:tiny_gpt, found in the wheel's
    bundled examples/ (this environment's torch: the venv sees its site-packages)."""
    out = elsewhere / "reports"
    _run([str(venv / "bin" / "dlsim"), "run", "torch-import-gpt", "--out", str(out)],
         cwd=elsewhere)
    summary = json.loads((out / "torch-import-gpt" / "summary.json").read_text())
    assert summary["parameters"] == 124_439_808  # GPT-2 124M's shape, tied embedding


def test_installed_wheel_reads_a_bundled_hf_config(venv, elsewhere):
    """``hf_config: examples/hf/<model>.json`` resolves against the wheel's bundled data."""
    script = ("from dlsim.contract.scenario import ModelSpec; "
              "from dlsim.workload.presets import build_model; "
              "m = build_model(ModelSpec(hf_config='examples/hf/llama-3-8b.json'), 1, 2); "
              "print(m.name, m.parameters)")
    printed = _run([str(venv / "bin" / "python"), "-c", script], cwd=elsewhere).split()
    assert printed == ["llama-3-8b", "8030261248"]
