"""Where dlsim's bundled data lives: hardware profiles, scenarios, calibration files,
validation tables and federated traces.

git holds each once, as a top-level folder of the checkout (hardware_profiles/, scenarios/,
calibration/, validation/, traces/). A wheel carries the same folders under
``dlsim/_data/`` (setup.py maps them in), found here with importlib.resources; a checkout,
run in place or installed with ``pip install -e``, has no ``dlsim/_data`` and reads the
top-level folders. Either way ``ROOT`` holds the folders side by side, so a path written
relative to the checkout (``calibration/<file>.json``, ``traces/<file>.csv`` in a bundled
scenario) is the same path relative to ``ROOT``.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path


def _root() -> Path:
    bundled = files("dlsim") / "_data"  # a wheel installs as files, so this is a real path
    if bundled.is_dir():
        return Path(str(bundled))
    return Path(__file__).resolve().parent.parent


ROOT = _root()
HARDWARE_PROFILES = ROOT / "hardware_profiles"
SCENARIOS = ROOT / "scenarios"
CALIBRATION = ROOT / "calibration"
VALIDATION = ROOT / "validation"
TRACES = ROOT / "traces"


def bundled_scenarios() -> list[str]:
    """Names of the bundled scenarios (their file names without .yaml)."""
    return sorted(p.stem for p in SCENARIOS.glob("*.yaml"))


def bundled_scenario(name: str) -> Path | None:
    """The bundled scenario called ``name`` (with or without .yaml, or as
    ``scenarios/<name>.yaml``, the way ``dlsim list scenarios`` prints it), else None."""
    path = Path(name)
    if path.parent not in (Path("."), Path("scenarios")):
        return None
    candidate = SCENARIOS / (path.name.removesuffix(".yaml") + ".yaml")
    return candidate if candidate.is_file() else None
