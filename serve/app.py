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

import logging
from typing import Any, cast

from ray.serve import Application, Deployment

from fmtrade.errors import ConfigError
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


def build_graph(cfg: AppConfig, models: list[str]) -> Application:
    """The deployment graph serving ``models`` (see :func:`served_models`)."""
    doc = cfg.to_args()
    # @serve.deployment made Deployments of these classes; Ray's typing still sees the classes.
    model, ensemble, ingress = (cast(Deployment, d) for d in (ModelDeployment, EnsembleDeployment, Ingress))
    members = {
        name: model.options(**cfg.options_for(name).deployment_options(f"model-{name}")).bind(name, doc)
        for name in models
    }
    ensemble_app = ensemble.options(**cfg.ensemble.deployment_options("ensemble")).bind(members, doc)
    return ingress.options(**cfg.ingress.deployment_options("api")).bind(ensemble_app, members, doc)


def build_app(args: dict[str, Any] | None = None) -> Application:
    """Application builder for ``import_path: fmtrade.serve.app:build_app``."""
    cfg = AppConfig.parse(args)
    return build_graph(cfg, served_models(cfg))
