"""KubeRay manifests generated from the files they must agree with.

``serve/config.yaml`` is the single description of the Serve application; the RayService
embeds it verbatim as ``serveConfigV2`` (only the proxy host is widened to 0.0.0.0 so the
Kubernetes Service reaches it) and runs its pods with Ray Serve's throughput settings
(``fmtrade.jobs.ray_runtime.FAST_PATH_ENV``, as ``fmtrade serve up`` does). The RayJob runs the
backtest job and the LoRA fine-tune exactly as ``ray job submit`` would.

Secure by default: every cluster spec turns on Ray's token authentication
(``authOptions.mode: token``, KubeRay 1.5.1+ with Ray 2.52+: the operator creates the token's
Secret and sets ``RAY_AUTH_MODE``/``RAY_AUTH_TOKEN`` in every Ray container), and no manifest
creates a LoadBalancer, NodePort or Ingress: the dashboard and job server (8265) stay behind the
head's ClusterIP Service, reached with ``kubectl port-forward`` (docs/CLUSTER.md). The head binds
the dashboard to 0.0.0.0 only inside the pod network, where the operator submits RayJobs.

Regenerate after editing serve/config.yaml::

    python -m fmtrade.cluster.kuberay        # writes cluster/kuberay/*.yaml

tests/test_cluster_manifests.py fails when the committed manifests are stale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import yaml

from fmtrade.io import write_text_atomic
from fmtrade.jobs.ray_runtime import FAST_PATH_ENV

ROOT = Path(__file__).resolve().parents[1]
SERVE_CONFIG = ROOT / "serve" / "config.yaml"
OUT_DIR = ROOT / "cluster" / "kuberay"
IMAGE = "ghcr.io/fmtrade/fmtrade:0.1.0"  # built from this repository: rayproject/ray base + `pip install .[s3]`
RAY_VERSION = "2.60.0"


def _container(
    name: str, resources: dict[str, str], env: dict[str, str], ports: list[dict[str, Any]] | None = None
) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": name,
        "image": IMAGE,
        "resources": {"limits": dict(resources), "requests": dict(resources)},
        "env": [
            {"name": "FMTRADE_STORE", "value": "s3://fmtrade-data/store"},
            {"name": "FMTRADE_API_TOKEN", "valueFrom": {"secretKeyRef": {"name": "fmtrade", "key": "api-token"}}},
            *({"name": key, "value": value} for key, value in env.items()),
        ],
    }
    if ports:
        container["ports"] = ports
    return container


def _cluster_spec(gpu_workers: int, env: dict[str, str]) -> dict[str, Any]:
    """Head plus CPU (and GPU) worker groups; ``env`` is added to every Ray container."""
    ports = [{"containerPort": 6379, "name": "gcs"}, {"containerPort": 8265, "name": "dashboard"},
             {"containerPort": 8000, "name": "serve"}]  # fmt: skip
    groups = [
        {"groupName": "cpu", "replicas": 1, "minReplicas": 1, "maxReplicas": 6, "rayStartParams": {},
         "template": {"spec": {"containers": [_container("ray-worker", {"cpu": "8", "memory": "16Gi"}, env)]}}},
    ]  # fmt: skip
    if gpu_workers:
        gpu = {"cpu": "4", "memory": "16Gi", "nvidia.com/gpu": "1"}
        groups.append(
            {"groupName": "gpu", "replicas": 0, "minReplicas": 0, "maxReplicas": gpu_workers, "rayStartParams": {},
             "template": {"spec": {"containers": [_container("ray-worker", gpu, env)]}}}
        )  # fmt: skip
    return {
        "rayVersion": RAY_VERSION,
        "authOptions": {"mode": "token"},
        "enableInTreeAutoscaling": True,
        "headGroupSpec": {
            "rayStartParams": {"dashboard-host": "0.0.0.0", "num-cpus": "0"},
            "template": {"spec": {"containers": [_container("ray-head", {"cpu": "2", "memory": "8Gi"}, env, ports)]}},
        },
        "workerGroupSpecs": groups,
    }


def serve_config_v2() -> str:
    """serve/config.yaml as KubeRay wants it: the same document, proxy listening on all interfaces."""
    doc = yaml.safe_load(SERVE_CONFIG.read_text())
    doc["http_options"]["host"] = "0.0.0.0"
    return yaml.safe_dump(doc, sort_keys=False)


def rayservice() -> dict[str, Any]:
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayService",
        "metadata": {"name": "fmtrade"},
        "spec": {
            "serveConfigV2": serve_config_v2(),
            "rayClusterConfig": _cluster_spec(gpu_workers=2, env=FAST_PATH_ENV),
        },
    }


def _rayjob(name: str, entrypoint: str, gpu_workers: int) -> dict[str, Any]:
    """A RayJob on its own cluster; the driver runs on the head, so the run directory goes to a
    persistent volume mounted there."""
    spec = _cluster_spec(gpu_workers=gpu_workers, env={})
    head = spec["headGroupSpec"]["template"]["spec"]
    head["containers"][0]["volumeMounts"] = [{"name": "runs", "mountPath": "/data/runs"}]
    head["volumes"] = [{"name": "runs", "persistentVolumeClaim": {"claimName": "fmtrade-runs"}}]
    return {
        "apiVersion": "ray.io/v1",
        "kind": "RayJob",
        "metadata": {"name": name},
        "spec": {
            "entrypoint": entrypoint,
            "shutdownAfterJobFinishes": True,
            "ttlSecondsAfterFinished": 600,
            "rayClusterSpec": spec,
        },
    }


def rayjob_backtest() -> dict[str, Any]:
    entrypoint = ("python -m fmtrade backtest --symbols BTCUSDT,ETHUSDT,SOLUSDT --start 2023-01-01 --end 2023-12-31 "
                  "--out /data/runs/backtest-2023 --json")  # fmt: skip
    return _rayjob("fmtrade-backtest", entrypoint, gpu_workers=0)


def rayjob_finetune() -> dict[str, Any]:
    """LoRA fine-tuning on the GPU group (scaled up from zero for the job): checkpoints and the
    adapters in S3, so every node reads and writes the same place."""
    entrypoint = ("python -m fmtrade finetune --base chronos-bolt-fm-tiny --symbols BTCUSDT,ETHUSDT --mode per-symbol "
                  "--rank 8 --alpha 16 --epochs 3 --workers 2 --use-gpu --storage s3://fmtrade-data/checkpoints "
                  "--out /data/runs/adapters --json")  # fmt: skip
    return _rayjob("fmtrade-finetune", entrypoint, gpu_workers=2)


MANIFESTS = {
    "rayservice.yaml": rayservice,
    "rayjob-backtest.yaml": rayjob_backtest,
    "rayjob-finetune.yaml": rayjob_finetune,
}
HEADER = (
    "# Generated by `python -m fmtrade.cluster.kuberay` from serve/config.yaml and cluster/kuberay.py: do not edit.\n"
)


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (serveConfigV2) as literal blocks, so the manifest reads like the file."""


_Dumper.add_representer(
    str, lambda d, v: d.represent_scalar("tag:yaml.org,2002:str", v, style="|" if "\n" in v else None)
)


def render(name: str) -> str:
    return HEADER + yaml.dump(MANIFESTS[name](), Dumper=_Dumper, sort_keys=False, width=120)


def main() -> int:
    for name in MANIFESTS:
        write_text_atomic(OUT_DIR / name, render(name))
        print(f"wrote {OUT_DIR / name}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
