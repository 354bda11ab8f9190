"""Shared storage across nodes, end to end: a real 2-node local cluster and a real S3 API (moto in
server mode on 127.0.0.1). The store, the backtest's run directory, Ray Train's checkpoints and the
LoRA adapters all live on ``s3://``; the jobs go through ``fmtrade cluster submit``; this process
(the laptop) reads every result back from S3. Nothing lands on the local disk, and the S3
credentials travel in the nodes' environment, never in a job's metadata."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
from pathlib import Path

import fsspec
import numpy as np
import pytest

from fmtrade.cluster.dashboard import get_json
from fmtrade.cluster.local import LocalCluster, ray_env
from fmtrade.config import load_settings
from fmtrade.models.registry import active_specs, build_forecaster, select_specs
from tests.conftest import free_port

pytestmark = pytest.mark.slow

BUCKET = "s3://fmtrade-test"


def _fmtrade(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fmtrade", *args], capture_output=True, text=True, timeout=timeout, env=ray_env()
    )


def _submit(cluster: LocalCluster, job_dir: Path, submission_id: str, home: Path, *entry: str) -> dict:
    done = _fmtrade(
        "cluster", "submit", "--address", cluster.dashboard_url, "--working-dir", str(job_dir),
        "--submission-id", submission_id, "--env", f"FMTRADE_HOME={home}", "--json", "--", *entry,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["status"] == "SUCCEEDED", result["logs"][-3000:]
    return result


def _job_json(logs: str) -> object:
    """The JSON document a job printed (its one line that parses as a JSON array or object)."""
    return json.loads(next(line for line in logs.splitlines() if line.startswith(("[", '{"'))))


def test_backtest_and_finetune_on_a_cluster_share_s3_with_the_laptop(
    s3_root: str, tmp_path: Path, isolated_home: Path
) -> None:
    store = s3_root  # s3://fmtrade-test/store
    synth = _fmtrade("data", "synth", "--symbols", "SYNAUSDT", "--hours", "2400", "--seed", "2", "--store", store)
    assert synth.returncode == 0, synth.stderr[-2000:]
    built = _fmtrade("models", "build", "--only", "chronos-bolt-fm-tiny", "--pretrain-minutes", "0")
    assert built.returncode == 0, built.stderr[-2000:]
    job_dir = tmp_path / "job"
    job_dir.mkdir()
    # The nodes start with this process's environment: the S3 endpoint and credentials (as an
    # instance role would give them on a cloud); the head takes no tasks, so the work (the asset
    # tasks, the Train workers and their checkpoint uploads) runs on the worker node.
    cluster = LocalCluster(workers=1, cpus_per_node=2, head_cpus=0, gcs_port=free_port(), dashboard_port=free_port())
    cluster.up()
    try:
        backtest = _submit(
            cluster, job_dir, "s3-backtest", isolated_home,
            "python", "-m", "fmtrade", "backtest", "--store", store, "--symbols", "SYNAUSDT",
            "--models", "random-walk,naive", "--start", "2022-02-10", "--end", "2022-03-20",
            "--out", f"{BUCKET}/runs/bt", "--json",
        )  # fmt: skip
        finetune = _submit(
            cluster, job_dir, "s3-finetune", isolated_home,
            "python", "-m", "fmtrade", "finetune", "--base", "chronos-bolt-fm-tiny", "--symbols", "SYNAUSDT",
            "--store", store, "--epochs", "1", "--max-steps", "3", "--workers", "1", "--batch-size", "8",
            "--storage", f"{BUCKET}/train", "--out", f"{BUCKET}/adapters", "--json",
        )  # fmt: skip
        metadata = [get_json(cluster.dashboard_url, f"/api/jobs/{job}") for job in ("s3-backtest", "s3-finetune")]
    finally:
        cluster.down()

    fs = fsspec.filesystem("s3")
    # The backtest's run directory, read back from S3: what the job printed, and every output.
    summary = json.loads(fs.cat(f"{BUCKET}/runs/bt/summary.json"))
    assert summary == _job_json(backtest["logs"])
    assert {r["model"] for r in summary} == {"random-walk", "naive", "buy-and-hold"}
    outputs = {Path(p).name for p in fs.ls(f"{BUCKET}/runs/bt")}
    assert {"summary.json", "metrics.json", "positions.parquet", "trades.parquet", "report.html", "plots"} <= outputs
    # Ray Train's checkpoints, and the adapter, published on S3 with its config last.
    doc = _job_json(finetune["logs"])
    assert isinstance(doc, dict) and doc["adapters"] == {"SYNAUSDT": f"{BUCKET}/adapters/chronos-bolt-fm-tiny/SYNAUSDT"}
    assert any("/checkpoint_" in key for key in fs.find(f"{BUCKET}/train"))
    # The laptop loads the adapter it reads back, through the same loading code Serve uses.
    with tempfile.TemporaryDirectory() as local:
        fs.get(f"{BUCKET}/adapters/chronos-bolt-fm-tiny/SYNAUSDT/", local, recursive=True)
        settings = load_settings()
        spec = select_specs(active_specs(settings), ["chronos-bolt-fm-tiny"])[0]
        tuned = spec.model_copy(update={"options": {**spec.options, "adapter": local}})
        forecast = build_forecaster(tuned, settings).forecast([np.linspace(100.0, 110.0, 300)], 12)
    assert np.isfinite(forecast.quantiles).all() and forecast.quantiles.shape[:2] == (1, 12)
    # Nothing went to the local disk; no credential in the jobs' metadata.
    assert not (isolated_home / "runs").exists() and not (isolated_home / "train").exists()
    assert not (isolated_home / "zoo" / "adapters").exists()
    assert all("AWS_SECRET_ACCESS_KEY" not in json.dumps(m) for m in metadata)
