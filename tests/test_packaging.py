"""The product as a user installs it: one import name, every file a command needs inside the
wheel, and the library core never reaching up into the Ray layers."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest

from tests.conftest import REPO, free_port

RAY_LAYERS = ("fmtrade.serve", "fmtrade.train", "fmtrade.jobs", "fmtrade.cluster")


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_library_core_never_imports_the_ray_layers() -> None:
    """Data flows one way: only the CLI (the top layer) may reach into serve/train/jobs/cluster."""
    offenders = {
        f"{path.relative_to(REPO)}: {name}"
        for path in (REPO / "fmtrade").rglob("*.py")
        if "cli" not in path.relative_to(REPO / "fmtrade").parts
        for name in _imports(path)
        if name.startswith(RAY_LAYERS)
    }
    assert not offenders, sorted(offenders)


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out),
                    str(REPO)], check=True, capture_output=True, text=True, timeout=300)  # fmt: skip
    return next(out.glob("fmtrade-*.whl"))


def test_wheel_holds_one_top_level_package_and_its_data_files(wheel: Path) -> None:
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"fmtrade", "fmtrade-0.1.0.dist-info"}
    needed = [
        "fmtrade/serve/config.yaml",
        "fmtrade/models/models.yaml",
        "fmtrade/serve/app.py",
        "fmtrade/train/lora.py",
        "fmtrade/jobs/backtest.py",
        "fmtrade/cluster/local.py",
        "fmtrade/data/binance_spot_1h/SHA256SUMS",
        "fmtrade/data/binance_spot_1h/XRPUSDT.parquet",
    ]
    assert not set(needed) - set(names)


@pytest.mark.slow
def test_installed_wheel_runs_the_demo_and_serves_from_an_empty_directory(wheel: Path, tmp_path: Path) -> None:
    """Not editable, outside the checkout: a fresh venv holding only the wheel (its dependencies are
    borrowed from this environment through a path file, so nothing is downloaded)."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    python = venv / "bin" / "python"
    site = subprocess.run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          check=True, capture_output=True, text=True).stdout.strip()  # fmt: skip
    (Path(site) / "borrowed_dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)], check=True,
                   capture_output=True, timeout=300)  # fmt: skip
    empty = tmp_path / "empty"
    empty.mkdir()
    env = {**os.environ, "FMTRADE_HOME": str(tmp_path / "home")}
    env.pop("PYTHONPATH", None)

    def run(*args: str, timeout: float = 900) -> subprocess.CompletedProcess[str]:
        return subprocess.run([str(venv / "bin" / "fmtrade"), *args], cwd=empty, env=env, capture_output=True,
                              text=True, timeout=timeout)  # fmt: skip

    where = subprocess.run([python, "-c", "import fmtrade.serve, sys; print(fmtrade.serve.__file__)\n"
                            "import importlib.util as u; print([m for m in ('serve', 'train', 'jobs', 'cluster')"
                            " if u.find_spec(m)])"], cwd=empty, env=env, capture_output=True, text=True)  # fmt: skip
    assert where.returncode == 0, where.stderr
    location, stray = where.stdout.splitlines()
    assert location.startswith(site) and stray == "[]"

    assert run("--help").returncode == 0
    demo = run(
        "demo",
        "--synthetic",
        "--no-serve",
        "--pretrain-minutes",
        "0",
        "--hours",
        "1500",
        "--backtest-days",
        "3",
        "--json",
    )
    assert demo.returncode == 0, demo.stderr[-3000:]
    assert "Traceback" not in demo.stderr
    assert json.loads(demo.stdout)["data"]["ok"] is True

    port = free_port()
    up = run("serve", "up", "--detach", "--address", "local", "--port", str(port), "--json")
    try:
        assert up.returncode == 0, up.stderr[-3000:]
        assert json.loads(up.stdout)["url"] == f"http://127.0.0.1:{port}"
    finally:
        down = run("serve", "down", "--json")
    assert down.returncode == 0 and json.loads(down.stdout)["stopped"] is True, down.stderr[-3000:]
