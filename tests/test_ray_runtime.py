"""The one Ray runtime module: the Ray versions it accepts, and that nothing else reaches into Ray's
private APIs."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib

import pytest
import ray
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from fmtrade.jobs.ray_runtime import RAY_VERSIONS, UnsupportedRay, check_ray_version
from tests.conftest import REPO

RUNTIME = REPO / "jobs" / "ray_runtime.py"


def test_pyproject_requires_the_ray_versions_the_runtime_accepts() -> None:
    dependencies = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    (requirement,) = [r for r in map(Requirement, dependencies) if r.name == "ray"]
    assert requirement.specifier == SpecifierSet(RAY_VERSIONS)
    assert ray.__version__ in requirement.specifier


@pytest.mark.parametrize("version", ["2.50.0", "2.60.0", "2.60.1"])
def test_supported_ray_versions_pass(version: str) -> None:
    check_ray_version(version)


@pytest.mark.parametrize("version", ["2.49.2", "2.61.0", "3.0.0.dev0"])
def test_other_ray_versions_fail_naming_the_range(version: str) -> None:
    with pytest.raises(UnsupportedRay, match=rf"Ray >=2\.50,<2\.61 .* found Ray {version}: pip install"):
        check_ray_version(version)


def test_a_command_on_an_unsupported_ray_fails_in_one_line() -> None:
    code = "import ray; ray.__version__ = '2.61.0'; from fmtrade.cli import main; main(['serve', 'status'])"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "error: fmtrade runs on Ray >=2.50,<2.61 (it relies on Ray internals that change between releases), "
        "found Ray 2.61.0: pip install 'ray[serve,train,tune,data,default]>=2.50,<2.61'"
    ]


def _private_ray_imports(source: str) -> list[str]:
    names = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
    return [n for n in names if n.split(".")[0] == "ray" and any(part.startswith("_") for part in n.split("."))]


def test_only_the_runtime_module_imports_private_ray_apis() -> None:
    offenders = {
        str(path.relative_to(REPO)): found
        for folder in ("fmtrade", "serve", "train", "jobs", "cluster", "tests", "bench")
        for path in (REPO / folder).rglob("*.py")
        if path != RUNTIME and (found := _private_ray_imports(path.read_text()))
    }
    assert offenders == {}
    assert _private_ray_imports(RUNTIME.read_text())  # the check above can see them
