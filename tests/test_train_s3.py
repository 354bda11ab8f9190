"""``fmtrade pretrain --storage s3://...``: Ray Train checkpoints go to an S3 API (moto in server mode)
and the published model comes back from there."""

from __future__ import annotations

import json

import boto3
import numpy as np
import pytest
import ray

from fmtrade.jobs.ray_runtime import init_ray
from fmtrade.models.lagllama import LagLlamaForecaster
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture
def s3_ray(s3_root):
    """A local 2-CPU Ray started after ``s3_root`` set the AWS variables, so every node has the credentials."""
    init_ray("local", num_cpus=2)
    yield s3_root
    ray.shutdown()


def test_pretrain_checkpoints_to_s3_and_publishes_a_loadable_model(s3_ray, tmp_path, capsys) -> None:
    bucket = s3_ray.removeprefix("s3://").split("/")[0]
    out = tmp_path / "lagllama-s3"
    argv = [
        "pretrain", "--arch", "lagllama", "--steps", "4", "--workers", "2", "--batch-size", "8",
        "--corpus", "synthetic", "--storage", f"s3://{bucket}/ray-train", "--out", str(out), "--json",
    ]  # fmt: skip
    code, stdout, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = json.loads(stdout)
    assert doc["steps"] == 4
    s3 = boto3.client("s3")  # AWS_ENDPOINT_URL points it at moto
    keys = [
        obj["Key"]
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix="ray-train/")
        for obj in page.get("Contents", [])
    ]
    assert any("/checkpoint_" in key for key in keys), keys
    assert any(key.endswith("/state.pt") for key in keys)
    assert any("/model/" in key for key in keys)
    assert not (tmp_path / "fmtrade-home" / "train").exists()  # nothing went to the local default storage
    model = LagLlamaForecaster("s3-pretrained", doc["checkpoint"], device="cpu", num_samples=20)
    forecast = model.forecast([np.linspace(100.0, 120.0, 800)], 24, seeds=[0])
    assert forecast.quantiles.shape == (1, 24, 9)
    assert np.isfinite(forecast.quantiles).all()
