"""``build_app(args)``: the whole Serve application from one config document.

``serve/config.yaml`` names this builder as its ``import_path`` with ``args``, so
``serve run serve/config.yaml``, ``serve deploy`` and a KubeRay RayService
``serveConfigV2`` all build the same graph::

    Ingress (FastAPI)  ->  EnsembleDeployment  ->  model-<name>  (one per served model)
    Ingress            ->  model-<name>  directly, when a request names a single model

Deployment names are ``api``, ``ensemble`` and ``model-<name>``, so Serve's own
per-deployment overrides in a config file can target them too.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any, cast

from ray.serve import Application, Deployment

from fmtrade.errors import ConfigError
from fmtrade.jobs.ray_runtime import with_code_version
from fmtrade.models.registry import active_specs, is_available, select_specs
from fmtrade.serve.deployments import EnsembleDeployment, ModelDeployment
from fmtrade.serve.ingress import Ingress
from fmtrade.serve.options import AppConfig

log = logging.getLogger("fmtrade.serve")


def served_models(cfg: AppConfig) -> list[str]:
    """The models named in the config (each must be available), or every enabled model whose
    weights are present (skipped ones are logged: build them with ``fmtrade models build``)."""
    settings = cfg.load_settings()
    specs = select_specs(active_specs(settings), cfg.models)
    missing = [s.name for s in specs if not is_available(s, settings)]
    if cfg.models and missing:
        raise ConfigError(f"models: {', '.join(missing)} not available (run `fmtrade models build`)")
    if missing:
        log.warning("not serving %s: checkpoints not built (run `fmtrade models build`)", ", ".join(missing))
    names = [s.name for s in specs if s.name not in missing]
    if not names:
        raise ConfigError("models: no model is available to serve")
    unknown = sorted(set(cfg.model_options) - {s.name for s in specs})
    if unknown:
        raise ConfigError(f"model_options: {', '.join(unknown)} not among the served models")
    return names


def cpus_at_start(cfg: AppConfig, models: list[str]) -> float:
    """CPUs the replicas of the graph serving ``models`` reserve when it starts (initial replicas
    x ``num_cpus`` of every deployment): what a Ray must offer before the application is ready."""
    scalings = [cfg.options_for(name) for name in models] + [cfg.ensemble, cfg.ingress]
    return sum(s.initial_replicas * s.num_cpus for s in scalings)


def build_graph(cfg: AppConfig, models: list[str], generation: str | None = None) -> Application:
    """The deployment graph serving ``models`` (see :func:`served_models`).

    The ensemble and the ingress get each member's ``calls_per_caller`` as their ``user_config``,
    which Serve applies in place. With a ``generation`` (``fmtrade serve up`` picks one per
    deployment), every deployment's code version is derived from it and from the document less the
    replica bounds: re-running the graph with other bounds (``fmtrade serve scale``) then changes
    them in place, without restarting a replica. Without one, Serve restarts every replica on each run.
    """
    doc = cfg.to_args()
    # @serve.deployment made Deployments of these classes; Ray's typing still sees the classes.
    model, ensemble, ingress = (cast(Deployment, d) for d in (ModelDeployment, EnsembleDeployment, Ingress))

    version = None if generation is None else code_version(generation, doc)

    def versioned(deployment: Deployment) -> Deployment:
        return deployment if version is None else with_code_version(deployment, version)

    members = {
        name: versioned(model.options(**cfg.options_for(name).deployment_options(f"model-{name}"))).bind(name, doc)
        for name in models
    }
    calls = {name: cfg.options_for(name).in_flight_per_caller() for name in models}
    callers = {"calls_per_caller": calls}
    ensemble_app = versioned(ensemble.options(**cfg.ensemble.deployment_options("ensemble"), user_config=callers))
    api = versioned(ingress.options(**cfg.ingress.deployment_options("api"), user_config=callers))
    return api.bind(ensemble_app.bind(members, doc), members, doc)


#: Options that only bound a deployment's replica count: Serve changes them in place.
REPLICA_BOUNDS = frozenset({"min_replicas", "max_replicas"})


def code_version(generation: str, doc: dict[str, Any]) -> str:
    """A code version that changes with ``generation`` or with anything in ``doc`` but replica bounds."""

    def strip(value: Any) -> Any:
        """``value`` less replica bounds and empty option sets (an override that only held bounds)."""
        if not isinstance(value, dict):
            return value
        kept = {k: strip(v) for k, v in value.items() if k not in REPLICA_BOUNDS}
        return {k: v for k, v in kept.items() if v != {}}

    digest = hashlib.sha256(json.dumps(strip(doc), sort_keys=True, default=str).encode()).hexdigest()
    return f"{generation}-{digest[:16]}"


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for ``import_path: fmtrade.serve.app:build_app``."""
    cfg = AppConfig.parse(args)
    return build_graph(cfg, served_models(cfg))
