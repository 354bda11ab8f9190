"""The serve application's config and HTTP plumbing, without starting Ray."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from ray.serve.schema import ServeDeploySchema

from fmtrade.config import load_settings
from fmtrade.errors import ConfigError
from fmtrade.jobs.ray_runtime import FAST_PATH_ENV, HAPROXY_SWITCH, ray_cpu_count
from fmtrade.models.registry import active_specs, build_forecaster
from fmtrade.serve.api import field_loc
from fmtrade.serve.app import code_version, cpus_at_start, served_models
from fmtrade.serve.options import AppConfig
from fmtrade.serve.runner import PACKAGED_CONFIG, embedded_cpus, read_config

REPO = Path(__file__).resolve().parents[1]


def test_config_yaml_is_a_valid_ray_serve_config() -> None:
    """`serve run` / `serve deploy` / KubeRay serveConfigV2 accept the file as it is."""
    doc = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    schema = ServeDeploySchema.model_validate(doc)
    (application,) = schema.applications
    assert application.import_path == "fmtrade.serve.app:build_app"
    cfg = AppConfig.parse(application.args)
    assert cfg.model_defaults.num_cpus < 1  # fractional: Ray's default of 1 CPU would not place the graph
    assert cfg.options_for("auto-ets").max_batch_size == 8
    assert cfg.options_for("random-walk").max_batch_size == cfg.model_defaults.max_batch_size


def test_options_validation_names_the_field() -> None:
    with pytest.raises(ConfigError, match="model_defaults: .*max_ongoing_requests 8 is below max_batch_size 32"):
        AppConfig.parse({"model_defaults": {"max_batch_size": 32, "max_ongoing_requests": 8}})
    with pytest.raises(ConfigError, match=r"model_options\.naive: .*max_ongoing_requests"):
        AppConfig.parse({"model_options": {"naive": {"max_batch_size": 100}}}).options_for("naive")
    with pytest.raises(ConfigError, match="ensemble.timeout_s"):
        AppConfig.parse({"ensemble": {"timeout_s": 0}})
    with pytest.raises(ConfigError, match="min_replicas 3 exceeds max_replicas 2"):
        AppConfig.parse({"ingress": {"min_replicas": 3, "max_replicas": 2}})
    with pytest.raises(ConfigError, match="unexpected_field"):
        AppConfig.parse({"unexpected_field": 1})
    # Faults come from test models (tests/faulty_models.py), not from production settings.
    with pytest.raises(ConfigError, match=r"model_defaults\.fail_with: Extra inputs"):
        AppConfig.parse({"model_defaults": {"fail_with": "boom", "delay_s": 1.0}})


def test_a_registry_entry_names_a_forecaster_class_of_its_own(tmp_path: Path) -> None:
    """How the end-to-end tests add faulty members: ``adapter: package.module:Class``."""
    faulty = [
        {"name": "broken", "adapter": "tests.faulty_models:FailingForecaster"},
        {"name": "late", "adapter": "tests.faulty_models:LateForecaster", "options": {"delay_s": 0.2}},
    ]
    registry = tmp_path / "models.yaml"
    registry.write_text(yaml.safe_dump({"profiles": {"local": faulty}}))
    overrides = {"models": {"registry": str(registry)}}
    assert served_models(AppConfig.parse({"settings": overrides})) == ["broken", "late"]
    settings = load_settings(None, overrides)
    broken, late = (build_forecaster(spec, settings) for spec in active_specs(settings))
    context = np.linspace(100.0, 101.0, 64)
    assert broken.forecast([context], 1).mean.shape == (1, 1)  # the replica health probe passes
    with pytest.raises(RuntimeError, match="injected failure"):
        broken.forecast([context], 4)
    start = time.perf_counter()
    late.forecast([context], 4)
    assert time.perf_counter() - start >= 0.2


def test_deployment_options_carry_resources_batching_and_autoscaling() -> None:
    cfg = AppConfig.parse({"model_defaults": {"num_cpus": 0.1, "num_gpus": 0.25, "max_replicas": 3}})
    options = cfg.options_for("naive").deployment_options("model-naive")
    assert options["ray_actor_options"] == {"num_cpus": 0.1, "num_gpus": 0.25}
    assert options["autoscaling_config"]["max_replicas"] == 3
    assert options["max_ongoing_requests"] >= cfg.options_for("naive").max_batch_size
    # Model replicas see coalesced calls, so their autoscaling target counts calls.
    assert options["autoscaling_config"]["target_ongoing_requests"] == 2.0
    assert cfg.options_for("naive").in_flight_per_caller() == 6  # 2 per replica at most
    pinned = AppConfig.parse({"model_options": {"naive": {"calls_per_caller": 1}}})
    assert pinned.options_for("naive").in_flight_per_caller() == 1


def test_autoscaler_reaction_times_pass_through_when_set() -> None:
    from ray.serve.config import AutoscalingConfig

    unset = AppConfig.parse({}).options_for("naive").deployment_options("model-naive")["autoscaling_config"]
    assert not {"upscale_delay_s", "downscale_delay_s", "look_back_period_s"} & set(unset)
    fast = {"upscale_delay_s": 0, "downscale_delay_s": 5, "look_back_period_s": 12}
    cfg = AppConfig.parse({"model_options": {"naive": fast}, "ingress": {"downscale_delay_s": 60}})
    scaling = cfg.options_for("naive").deployment_options("model-naive")["autoscaling_config"]
    assert {k: scaling[k] for k in fast} == fast
    assert AutoscalingConfig(**scaling).downscale_delay_s == 5  # Ray accepts what fmtrade hands it
    assert cfg.ingress.deployment_options("api")["autoscaling_config"]["downscale_delay_s"] == 60
    # Shorter than the 10 s between load reports: Ray warns it will become an error.
    with pytest.raises(ConfigError, match="model_options.naive: look_back_period_s: .*must exceed the 10 s between"):
        AppConfig.parse({"model_options": {"naive": {"look_back_period_s": 2}}}).options_for("naive")


def test_token_from_config_or_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert AppConfig.parse({}).token(load_settings()) is None
    monkeypatch.setenv("FMTRADE_API_TOKEN", "from-env")
    assert AppConfig.parse({}).token(load_settings()) == "from-env"
    cfg = AppConfig.parse({"api_token": "from-config"})
    assert cfg.token(load_settings()) == "from-config"
    assert "from-config" not in repr(cfg)  # a SecretStr: never printed
    assert AppConfig.parse(cfg.to_args()).token(load_settings()) == "from-config"


def test_served_models_skip_unbuilt_checkpoints_unless_named() -> None:
    cfg = AppConfig.parse({})
    names = served_models(cfg)  # a fresh FMTRADE_HOME: no zoo built, baselines only
    assert "random-walk" in names and "chronos-bolt-fm-tiny" not in names
    assert "auto-arima" not in names  # disabled in the registry
    with pytest.raises(ConfigError, match="chronos-bolt-fm-tiny not available"):
        served_models(AppConfig.parse({"models": ["chronos-bolt-fm-tiny"]}))
    with pytest.raises(ConfigError, match="model_options: nope"):
        served_models(AppConfig.parse({"model_options": {"nope": {}}}))


def test_read_config_falls_back_to_the_packaged_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    path, doc = read_config(None, load_settings())
    assert path == PACKAGED_CONFIG and doc["applications"]
    bad = tmp_path / "bad.yaml"
    bad.write_text("applications: []\n")
    with pytest.raises(ConfigError, match="non-empty list"):
        read_config(str(bad), load_settings())


def test_field_loc_matches_pydantic_shape() -> None:
    assert field_loc("horizon") == ["body", "horizon"]
    assert field_loc("series[2].context") == ["body", "series", 2, "context"]


def test_cpus_at_start_counts_every_deployment_at_its_initial_replicas() -> None:
    cfg = AppConfig.parse(
        {
            "models": ["random-walk", "naive"],
            "model_defaults": {"num_cpus": 0.25},
            "model_options": {"naive": {"num_cpus": 0.5, "min_replicas": 2, "max_replicas": 3}},
            "ensemble": {"num_cpus": 0.1, "min_replicas": 0},  # scaled to zero: still starts one replica
            "ingress": {"num_cpus": 0.2},
        }
    )
    assert cpus_at_start(cfg, served_models(cfg)) == pytest.approx(0.25 + 2 * 0.5 + 0.1 + 0.2)


def test_the_embedded_ray_counts_at_least_what_the_replicas_reserve() -> None:
    cores = ray_cpu_count()
    assert embedded_cpus(cores) is None  # fits: Ray's own count
    assert embedded_cpus(cores + 0.7) == math.ceil(cores + 0.7)


def _local_env_in_subprocess(**env: str) -> tuple[dict[str, str], str]:
    """``fast_path_env()`` in a fresh interpreter (Ray reads its HAProxy settings at import)."""
    code = "import json; from fmtrade.jobs.ray_runtime import fast_path_env; print(json.dumps(fast_path_env()))"
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_SERVE_")}
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env={**base, **env}, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_haproxy_ingress_is_on_where_ray_finds_its_binary_and_off_with_a_warning_where_not() -> None:
    found, _ = _local_env_in_subprocess()
    assert found == FAST_PATH_ENV and found[HAPROXY_SWITCH] == "1"
    missing, stderr = _local_env_in_subprocess(RAY_SERVE_HAPROXY_BINARY_PATH="/nonexistent/haproxy")
    assert HAPROXY_SWITCH not in missing
    assert missing.items() <= FAST_PATH_ENV.items() and len(missing) == len(FAST_PATH_ENV) - 1
    assert "no HAProxy binary" in stderr
    _, stderr = _local_env_in_subprocess(RAY_SERVE_HAPROXY_BINARY_PATH="/nonexistent/haproxy",
                                              RAY_SERVE_ENABLE_HA_PROXY="0")  # fmt: skip
    assert "no HAProxy binary" not in stderr  # the caller's own setting stands, no lookup


def test_code_version_ignores_only_replica_bounds() -> None:
    """``serve scale`` re-runs the graph: the same code versions (nothing restarts) unless something
    beyond the replica bounds changed, or ``up`` started a new generation."""
    base = AppConfig.parse({"models": ["naive"]}).to_args()
    scaled = AppConfig.parse({"models": ["naive"], "model_options": {"naive": {"min_replicas": 2, "max_replicas": 4}},
                              "ensemble": {"max_replicas": 3}}).to_args()  # fmt: skip
    batched = AppConfig.parse({"models": ["naive"], "model_options": {"naive": {"max_batch_size": 8}}}).to_args()
    assert code_version("g1", base) == code_version("g1", scaled)
    assert code_version("g1", base) != code_version("g1", batched)
    assert code_version("g1", base) != code_version("g2", base)
