"""Which files the wheel carries; the rest of the build is in pyproject.toml.

The data folders stay at the top of the checkout, once in git, and ship as
``dlsim/_data/<folder>/`` (dlsim/data.py finds them): each is a package of its own mapped
onto its folder, which pyproject.toml cannot add to the packages it discovers.
"""

from setuptools import find_namespace_packages, setup
from setuptools.command.build_py import build_py

DATA = {  # folder -> the files of it that ship
    "hardware_profiles": ["**/*.yaml"],
    "scenarios": ["*.yaml"],
    "calibration": ["*.json"],
    "validation": ["*.csv", "README.md"],
    "traces": ["*.csv", "*.json", "README.md"],  # federated-traces and -flash read these
    "examples": ["*.py", "*.yaml", "hf/*.json", "hf/README.md", "traces/*.json"],  # torch
    # modules that scenarios import by name (torch-import-gpt); Hugging Face configs for
    # model: {hf_config: examples/hf/..}; an execution trace for model: {trace: ...}
}


class BuildPy(build_py):
    """A data folder ships its data, not the scripts beside it (traces/make_synthetic.py)."""

    def find_package_modules(self, package, package_dir):
        if package.startswith("dlsim._data."):
            return []
        return super().find_package_modules(package, package_dir)


setup(
    packages=find_namespace_packages(include=["dlsim*"]) + [f"dlsim._data.{d}" for d in DATA],
    package_dir={f"dlsim._data.{d}": d for d in DATA},
    package_data={"dlsim.report": ["templates/*.html"],
                  **{f"dlsim._data.{d}": globs for d, globs in DATA.items()}},
    cmdclass={"build_py": BuildPy},
)
