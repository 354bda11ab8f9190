"""Cluster manifests stay valid and in sync with the files they are generated from."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
import ray
import yaml
from ray.serve.schema import ServeDeploySchema

from fmtrade.cluster import kuberay
from fmtrade.jobs.ray_runtime import FAST_PATH_ENV
from fmtrade.serve.options import AppConfig

REPO = Path(__file__).resolve().parents[1]


LAUNCHERS = ("aws.yaml", "gcp.yaml")


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_config_satisfies_rays_schema(name: str) -> None:
    schema = json.loads((Path(ray.__file__).parent / "autoscaler" / "ray-schema.json").read_text())
    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    jsonschema.validate(config, schema)
    assert config["head_node_type"] in config["available_node_types"]
    assert config["provider"]["type"] == name.removesuffix(".yaml")


def test_gcp_config_has_a_cpu_head_gpu_workers_and_installs_fmtrade() -> None:
    config = yaml.safe_load((REPO / "cluster" / "gcp.yaml").read_text())
    types = config["available_node_types"]
    assert types[config["head_node_type"]]["resources"] == {"CPU": 0}  # drivers only, no GPU
    gpu = {name: t for name, t in types.items() if t["resources"].get("GPU")}
    assert len(gpu) >= 2 and all(t["min_workers"] == 0 and t["max_workers"] >= 1 for t in gpu.values())
    for node in gpu.values():  # GCE needs the GPU VM to stop on host maintenance
        assert {"onHostMaintenance": "TERMINATE"} in node["node_config"]["scheduling"]
    assert sum(t.get("max_workers", 0) for t in types.values()) >= config["max_workers"] > 0
    assert any("pip install" in c and "/home/ubuntu/fmtrade" in c for c in config["setup_commands"])
    assert config["file_mounts"]["/home/ubuntu/fmtrade"] == "."


@pytest.mark.parametrize("name", LAUNCHERS)
def test_launcher_clusters_are_secure_by_default(name: str) -> None:
    """Token auth on every node (the laptop's token mounted), the dashboard on the head's loopback."""
    config = yaml.safe_load((REPO / "cluster" / name).read_text())
    assert config["file_mounts"]["/home/ubuntu/.ray/auth_token"] == "~/.ray/auth_token"
    for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        (start,) = [c for c in commands if "ray start" in c]
        assert "RAY_AUTH_MODE=token ray start" in start, start
    (head,) = [c for c in config["head_start_ray_commands"] if "ray start" in c]
    assert "--dashboard-host=127.0.0.1" in head and "0.0.0.0" not in head


@pytest.mark.parametrize("name", sorted(kuberay.MANIFESTS))
def test_kuberay_clusters_use_token_auth_and_expose_nothing(name: str) -> None:
    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / name).read_text())
    spec = manifest["spec"].get("rayClusterConfig") or manifest["spec"]["rayClusterSpec"]
    assert spec["authOptions"] == {"mode": "token"}
    text = (REPO / "cluster" / "kuberay" / name).read_text()
    assert not any(word in text for word in ("LoadBalancer", "NodePort", "Ingress", "serviceType", "hostPort"))


def test_rayjob_finetune_runs_a_parsable_finetune_command() -> None:
    import typer

    from fmtrade.cli import app

    manifest = yaml.safe_load((REPO / "cluster" / "kuberay" / "rayjob-finetune.yaml").read_text())
    assert manifest["kind"] == "RayJob" and manifest["spec"]["rayClusterSpec"]["rayVersion"] == ray.__version__
    words = manifest["spec"]["entrypoint"].split()
    assert words[:4] == ["python", "-m", "fmtrade", "finetune"]
    group = typer.main.get_command(app)
    root = group.make_context("fmtrade", ["finetune"])
    command = group.get_command(root, "finetune")  # type: ignore[attr-defined]  # a group: it has subcommands
    params = command.make_context("finetune", words[4:], parent=root).params  # parses, without running
    assert params["storage"].startswith("s3://") and params["use_gpu"] is True
    gpu = [g for g in manifest["spec"]["rayClusterSpec"]["workerGroupSpecs"] if g["groupName"] == "gpu"]
    assert gpu and gpu[0]["maxReplicas"] >= params["workers"]


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
    settings = " ".join(f"{key}={value}" for key, value in FAST_PATH_ENV.items())
    for name in LAUNCHERS:
        config = yaml.safe_load((REPO / "cluster" / name).read_text())
        for commands in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
            (start,) = [c for c in commands if "ray start" in c]
            assert start.startswith(settings + " "), (name, start)
