"""GPU placement in the serve config (serve/options.py), checked without a GPU and without Serve running:
per-family options, the GPU-only family options, and when a model's replica asks Ray for a GPU share."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import ray
import yaml

from fmtrade.errors import ConfigError
from fmtrade.serve.app import cpus_at_start
from fmtrade.serve.options import AppConfig, cluster_gpus

REPO = Path(__file__).resolve().parents[1]
BOLT, T5, BASELINE = "chronos-bolt-fm-tiny", "chronos-fm-tiny", "auto-ets"
GPU_BOLT = {"gpu_share": 0.5, "max_batch_size": 512, "max_ongoing_requests": 1024}


def config(device: str = "auto", **args: Any) -> AppConfig:
    return AppConfig.parse({"settings": {"models": {"device": device}}, **args})


def test_family_options_sit_between_the_defaults_and_the_model_options() -> None:
    cfg = config(
        "cpu",
        model_defaults={"max_batch_size": 16, "batch_wait_timeout_s": 0.01},
        family_options={"chronos-bolt": {"max_batch_size": 128, "max_ongoing_requests": 256}},
        model_options={BOLT: {"max_ongoing_requests": 300}},
    )
    bolt = cfg.options_for(BOLT)
    assert (bolt.max_batch_size, bolt.max_ongoing_requests, bolt.batch_wait_timeout_s) == (128, 300, 0.01)
    other = cfg.options_for("timesfm-fm-tiny")
    assert (other.max_batch_size, other.max_ongoing_requests) == (16, 64)  # another family: defaults only


def test_cuda_device_places_weighted_models_on_a_gpu_share() -> None:
    cfg = config("cuda", gpu_family_options={"chronos-bolt": GPU_BOLT})
    bolt = cfg.options_for(BOLT)
    assert bolt.num_gpus == 0.5 and (bolt.max_batch_size, bolt.max_ongoing_requests) == (512, 1024)
    assert bolt.deployment_options("model-x")["ray_actor_options"]["num_gpus"] == 0.5
    t5 = cfg.options_for(T5)  # no GPU options for its family: the default share, the default batch
    assert (t5.num_gpus, t5.max_batch_size) == (0.25, 32)
    baseline = cfg.options_for(BASELINE)  # statsforecast: never on a GPU
    assert baseline.num_gpus == 0 and baseline.max_batch_size == 32


def test_an_explicit_num_gpus_decides() -> None:
    pinned = config(
        "cuda",
        gpu_family_options={"chronos-bolt": GPU_BOLT},
        model_options={BOLT: {"num_gpus": 0}, BASELINE: {"num_gpus": 1}},
    )
    on_cpu = pinned.options_for(BOLT)
    assert on_cpu.num_gpus == 0 and on_cpu.max_batch_size == 32  # kept off the GPU: no GPU batch sizes either
    assert pinned.options_for(BASELINE).num_gpus == 1
    every = config("cpu", model_defaults={"num_gpus": 0.125}, gpu_family_options={"chronos-bolt": GPU_BOLT})
    bolt = every.options_for(BOLT)
    assert bolt.num_gpus == 0.125 and bolt.max_batch_size == 512  # on a GPU by request: its GPU options apply


def test_auto_device_without_a_ray_cluster_stays_on_cpu() -> None:
    assert not ray.is_initialized() and cluster_gpus() == 0
    cfg = config("auto", gpu_family_options={"chronos-bolt": GPU_BOLT})
    assert cfg.options_for(BOLT).num_gpus == 0 and cfg.options_for(BOLT).max_batch_size == 32


def test_unknown_family_and_bad_gpu_options_are_named() -> None:
    with pytest.raises(ConfigError, match=r"gpu_family_options: .*unknown family chronos-3"):
        config(gpu_family_options={"chronos-3": {"gpu_share": 0.5}})
    cfg = config("cuda", gpu_family_options={"chronos-bolt": {"gpu_share": 0}})
    with pytest.raises(ConfigError, match=rf"model_options.{BOLT}: gpu_share: .*greater than 0"):
        cfg.options_for(BOLT)


def test_config_yaml_gpu_options() -> None:
    doc = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    args = doc["applications"][0]["args"]
    assert "num_gpus" not in args["model_defaults"]  # unset, so the device decides
    gpu = AppConfig.parse({**args, "settings": {"models": {"device": "cuda"}}})
    cpu = AppConfig.parse({**args, "settings": {"models": {"device": "cpu"}}})
    for name, family in ((BOLT, "chronos-bolt"), ("chronos2-fm-tiny", "chronos2"), ("timesfm-fm-tiny", "timesfm")):
        placed, unplaced = gpu.options_for(name), cpu.options_for(name)
        assert placed.num_gpus == args["gpu_family_options"][family]["gpu_share"] > 0
        assert placed.max_batch_size == args["gpu_family_options"][family]["max_batch_size"]
        assert placed.max_ongoing_requests >= placed.max_batch_size
        assert unplaced.num_gpus == 0 and unplaced.max_batch_size == args["model_defaults"]["max_batch_size"]
    assert gpu.options_for(BASELINE).num_gpus == 0
    # The CPU footprint of the graph does not change with the placement.
    models = [BOLT, "timesfm-fm-tiny", BASELINE]
    assert cpus_at_start(gpu, models) == cpus_at_start(cpu, models)


@pytest.mark.slow
def test_auto_device_on_a_ray_cluster_with_gpus_takes_a_share() -> None:
    """A real local Ray that declares one GPU (Ray schedules on declared resources; no device needed)."""
    ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
    try:
        assert cluster_gpus() == 1
        cfg = config("auto", gpu_family_options={"chronos-bolt": GPU_BOLT})
        assert cfg.options_for(BOLT).num_gpus == 0.5 and cfg.options_for(BOLT).max_batch_size == 512
        assert cfg.options_for(BASELINE).num_gpus == 0
        assert config("cpu").options_for(BOLT).num_gpus == 0  # device cpu: never, whatever the cluster has
    finally:
        ray.shutdown()
