"""bench/gpu_check.py: the prepared GPU check, run here on CPU with --smoke (tiny sizes).

The fast test runs the script in the project's venv for one family and checks what it measured and
wrote, and that its import chain stayed lean (no Ray, pydantic, statsforecast, numba ...). The slow
test builds a throwaway venv holding only what the GPU box has that the check needs (torch,
transformers, peft, pandas, pyarrow, einops) plus the wheels scripts/gpu_wheels.sh carries
(chronos-forecasting, timesfm), and runs the full smoke there with fmtrade on PYTHONPATH only.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import subprocess
import sys
import venv
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "bench" / "gpu_check.py"


def _smoke(python: str, out: Path, env: dict[str, str], *extra: str, timeout: float) -> dict[str, Any]:
    done = subprocess.run(
        [python, str(SCRIPT), "--smoke", "--out", str(out), *extra],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        cwd=out.parent,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


def _check_throughput(doc: dict[str, Any], name: str, stock: bool) -> None:
    fam = doc["throughput"][name]
    assert "error" not in fam, fam
    assert fam["size"] == "tiny" and fam["parameters"] > 0
    assert [cell["batch"] for cell in fam["batches"]] == [1, 8]
    for cell in fam["batches"]:
        assert cell["fmtrade"]["forecasts_per_s"] > 0
        if stock:
            assert cell["stock"]["forecasts_per_s"] > 0
            assert cell["ratio"] == pytest.approx(
                cell["fmtrade"]["forecasts_per_s"] / cell["stock"]["forecasts_per_s"], rel=1e-2
            )
        else:
            assert "stock" not in cell and fam["stock"].startswith("no installable package")
    agree = fam["bf16_vs_fp32"]
    assert 0 <= agree["median_rel_error"] <= agree["p99_rel_error"] <= agree["max_rel_error"]


def test_smoke_measures_and_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "gpu-check"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    doc = _smoke(sys.executable, out, env, "--families", "chronos-bolt", timeout=600)

    assert doc["smoke"] is True and doc["device"] == "cpu" and doc["context"] == 128
    assert doc["heavy_modules_loaded"] == []  # installed in this venv, yet never imported
    env_doc = doc["environment"]
    assert env_doc["libraries"]["torch"] == importlib.metadata.version("torch")
    assert env_doc["libraries"]["chronos-forecasting"] == importlib.metadata.version("chronos-forecasting")
    assert list(doc["throughput"]) == ["chronos-bolt-small"]
    _check_throughput(doc, "chronos-bolt-small", stock=True)
    assert doc["throughput"]["chronos-bolt-small"]["stock"] == "chronos.ChronosBoltPipeline.predict"

    serve = doc["serving"]
    assert serve["mode"] == "in-process batching" and "no Ray Serve" in serve["note"]
    bolt = serve["models"]["chronos-bolt-small"]
    assert bolt["max_batch_size"] >= 1 and bolt["batch_wait_timeout_s"] >= 0 and bolt["direct_forecasts_per_s"] > 0
    assert [c["clients"] for c in bolt["clients"]] == [1, 2, 4]
    for c in bolt["clients"]:
        assert c["forecasts_per_s"] > 0 and 0 < c["p50_ms"] <= c["p99_ms"]
        assert 1 <= c["mean_batch"] <= min(c["clients"], bolt["max_batch_size"])
    assert bolt["clients"][0]["mean_batch"] == 1  # one closed-loop client never has a batch-mate

    lora = doc["lora"]
    assert lora["family"] == "chronos-bolt" and lora["lora"]["steps"] >= 1 and lora["full"]["steps"] >= 1
    assert 0 < lora["lora"]["trainable_parameters"] < lora["full"]["trainable_parameters"] / 5
    assert lora["lora_vs_full"] == pytest.approx(lora["lora"]["steps_per_s"] / lora["full"]["steps_per_s"], rel=2e-2)

    md = (out / "gpu_check.md").read_text()
    assert "CPU smoke, tiny sizes: not GPU numbers" in md
    assert "| chronos-bolt-small | tiny |" in md and "LoRA vs full fine-tuning (chronos-bolt tiny" in md
    assert md.count("| chronos-bolt-small | ") == 2 + 1 + 3  # two batch rows, the bf16 row, three client rows


def _lean_venv(root: Path) -> Path:
    """A venv with only the GPU box's packages the check needs and the carried wheels; skips the
    test when pip cannot install them here (no package index reachable)."""
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    pins = {name: importlib.metadata.version(name) for name in ("torch", "chronos-forecasting", "timesfm")}
    steps = [
        [f"torch=={pins['torch'].split('+')[0]}", "transformers", "peft", "pandas", "pyarrow", "einops"],
        ["--no-deps", f"chronos-forecasting=={pins['chronos-forecasting']}", f"timesfm=={pins['timesfm']}"],
    ]
    wheels = sorted((REPO / ".whl").glob("*.whl"))
    if wheels:  # what scripts/gpu_wheels.sh carries to the GPU box
        steps[1] = ["--no-deps", *map(str, wheels)]
    for args in steps:
        done = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=1200
        )
        if done.returncode != 0:
            pytest.skip(f"cannot build the lean venv here: pip install {' '.join(args)}: {done.stderr[-500:]}")
    return python


@pytest.mark.slow
def test_full_smoke_in_a_lean_venv(tmp_path: Path) -> None:
    python = _lean_venv(tmp_path / "venv")
    listed = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True, check=True).stdout
    for heavy in ("ray", "statsforecast", "numba", "fastapi", "pydantic", "jax"):
        assert f"\n{heavy} " not in listed.lower(), f"{heavy} is in the lean venv"
    out = tmp_path / "gpu-check"
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME")}
    env["PYTHONPATH"] = str(REPO)
    doc = _smoke(str(python), out, env, timeout=1500)

    assert doc["heavy_modules_loaded"] == []
    names = ["chronos-bolt-small", "timesfm-2.5-200m", "chronos-2", "chronos-t5-small", "lag-llama"]
    assert list(doc["throughput"]) == names
    for name in doc["throughput"]:
        _check_throughput(doc, name, stock=name != "lag-llama")
        assert "error" not in doc["serving"]["models"][name]
    assert doc["lora"]["lora"]["steps_per_s"] > 0
