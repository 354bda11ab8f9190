"""bench/gpu_check.py: the prepared GPU check, run here on CPU with --smoke (tiny sizes).

The fast test runs the script in the project's venv for one family and checks what it measured and
wrote, and that its import chain stayed lean (no Ray, pydantic, statsforecast, numba ...). The slow
test builds a throwaway venv holding only what the GPU box has that the check needs (torch,
transformers, peft, pandas, pyarrow, einops) and runs ``make gpu-check`` with it as the GPU box would:
first without the carried wheels (the families needing them are reported, the others measured), then
with the chronos-forecasting and timesfm wheels scripts/gpu_wheels.sh downloads, fmtrade on PYTHONPATH.
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
    """A venv with only the GPU box's packages the check needs (not chronos-forecasting, not timesfm:
    those travel as wheels); skips the test when pip cannot install them here."""
    venv.EnvBuilder(with_pip=True, clear=True).create(root)
    python = root / "bin" / "python"
    torch_version = importlib.metadata.version("torch").split("+")[0]
    args = [f"torch=={torch_version}", "transformers", "peft", "pandas", "pyarrow", "einops"]
    done = subprocess.run(
        [str(python), "-m", "pip", "install", "-q", *args], capture_output=True, text=True, timeout=1200
    )
    if done.returncode != 0:
        pytest.skip(f"cannot build the lean venv here: pip install {' '.join(args)}: {done.stderr[-500:]}")
    return python


def _make_gpu_check(python: Path, tmp_path: Path, wheels: Path, *args: str) -> dict[str, Any]:
    """``make gpu-check`` as the GPU box runs it, with this venv's python and ``args`` for the script."""
    out = tmp_path / f"out-{wheels.name}"
    make_args = [f"GPU_PYTHON={python}", f"GPU_SITE={tmp_path / 'site'}", f"WHL_DIR={wheels}"]
    make_args.append(f"GPU_CHECK_ARGS=--smoke --out {out} {' '.join(args)}")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONHOME", "PYTHONPATH")}
    done = subprocess.run(
        ["make", "gpu-check", *make_args], capture_output=True, text=True, timeout=900, env=env, cwd=REPO
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-3000:]
    return json.loads((out / "gpu_check.json").read_text())


@pytest.mark.slow
def test_make_gpu_check_in_a_lean_venv(tmp_path: Path) -> None:
    """The GPU box's situation: no Ray, no statsforecast, no chronos/timesfm until the carried wheels
    are installed by ``make gpu-check``; without them the families that need them are reported, not fatal."""
    python = _lean_venv(tmp_path / "venv")
    listed = subprocess.run([str(python), "-m", "pip", "list"], capture_output=True, text=True, check=True).stdout
    for absent in ("ray", "statsforecast", "numba", "fastapi", "jax", "chronos-forecasting", "timesfm"):
        assert f"\n{absent} " not in listed.lower(), f"{absent} is in the lean venv"

    empty = tmp_path / "no-wheels"
    empty.mkdir()
    degraded = _make_gpu_check(python, tmp_path, empty, "--families", "chronos-bolt,lagllama")
    assert "No module named 'chronos'" in degraded["throughput"]["chronos-bolt-small"]["error"]
    _check_throughput(degraded, "lag-llama", stock=False)
    assert degraded["lora"] == {"error": "no Chronos-Bolt checkpoint was built"}

    wheels = tmp_path / "whl"
    fetched = subprocess.run(
        ["bash", "scripts/gpu_wheels.sh"], capture_output=True, text=True, timeout=600, cwd=REPO,
        env={**os.environ, "WHL_DIR": str(wheels)},
    )  # fmt: skip
    if fetched.returncode != 0:
        pytest.skip(f"cannot download the carried wheels here: {fetched.stderr[-500:]}")
    assert sorted(w.name.split("-")[0] for w in wheels.glob("*.whl")) == ["chronos_forecasting", "timesfm"]
    doc = _make_gpu_check(python, tmp_path, wheels)
    assert doc["heavy_modules_loaded"] == []
    names = ["chronos-bolt-small", "timesfm-2.5-200m", "chronos-2", "chronos-t5-small", "lag-llama"]
    assert list(doc["throughput"]) == names
    for name in names:
        _check_throughput(doc, name, stock=name != "lag-llama")
        assert "error" not in doc["serving"]["models"][name]
    assert doc["lora"]["lora"]["steps_per_s"] > 0
