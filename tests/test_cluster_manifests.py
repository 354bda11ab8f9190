"""Cluster manifests stay valid and in sync with the files they are generated from."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from fmtrade.cluster import kuberay
from fmtrade.jobs.ray_runtime import FAST_PATH_ENV
from fmtrade.serve.options import AppConfig

REPO = Path(__file__).resolve().parents[1]


def test_launcher_config_satisfies_rays_schema() -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]


def test_committed_kuberay_manifests_are_current() -> None:
    for name in kuberay.MANIFESTS:
        assert (REPO / "cluster" / "kuberay" / name).read_text() == kuberay.render(name), (
            f"cluster/kuberay/{name} is stale: run `python -m fmtrade.cluster.kuberay`"
        )


def test_rayservice_embeds_the_serve_config_unchanged_but_for_the_host() -> None:
    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    embedded = yaml.safe_load(manifest["spec"]["serveConfigV2"])
    original = yaml.safe_load((REPO / "serve" / "config.yaml").read_text())
    assert embedded["http_options"].pop("host") == "0.0.0.0"
    original["http_options"].pop("host")
    assert embedded == original
    (application,) = ServeDeploySchema.model_validate(embedded).applications
    AppConfig.parse(application.args)  # the args validate as the application will read them


def test_rayjob_runs_the_backtest_module() -> None:
    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob-backtest.yaml").read_text())
    assert manifest["kind"] == "RayJob"
    assert manifest["spec"]["entrypoint"].startswith("python -m fmtrade backtest ")
    assert manifest["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__


def test_serve_nodes_run_with_the_fast_path_settings() -> None:
    """Ray reads Serve's settings when its processes start: every node of the RayService and of
    the launcher config starts Ray with them (as `fmtrade serve up` does)."""
    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayservice.yaml").read_text())
    spec = manifest["spec"]["rayClusterConfig"]
    groups = [spec["headGroupSpec"], *spec["workerGroupSpecs"]]
    for group in groups:
        (container,) = group["template"]["spec"]["containers"]
        env = {item["name"]: item.get("value") for item in container["env"]}
        assert FAST_PATH_ENV.items() <= env.items(), group.get("groupName", "head")
    config = yaml.safe_load((REPO / "cluster" / "aws.yaml").read_text())
    settings = " ".join(f"{key}={value}" for key, value in FAST_PATH_ENV.items())
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert start.startswith(settings + " ray start"), start
