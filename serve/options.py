"""The serve application's configuration: the ``args`` of ``serve/config.yaml``.

One validated document describes the whole application (which models, how each
deployment is placed, batched, scaled and multiplexed), so the same YAML works
for ``fmtrade serve up``, ``serve run``, ``serve deploy`` and a KubeRay
``serveConfigV2``. Replicas receive the document (not a live Settings object) and
rebuild their settings from it, because they may run on another machine.
"""

from __future__ import annotations

from typing import Any

import ray
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from ray.serve.config import DEFAULT_METRICS_INTERVAL_S

from fmtrade.config import Settings, load_settings
from fmtrade.errors import ConfigError
from fmtrade.models.base import MAX_QUANTILES
from fmtrade.models.registry import ADAPTERS, ModelSpec, active_specs, adapter_of

#: Families ``family_options`` / ``gpu_family_options`` may name.
FAMILIES = frozenset(a.family for a in ADAPTERS.values())


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# Callers report their load this often (Ray 2.60 deprecated the per-deployment setting); a shorter
# look-back window would average fewer than one report, which Ray warns will become an error.
LOAD_REPORT_INTERVAL_S = DEFAULT_METRICS_INTERVAL_S
_REACTION = ("upscale_delay_s", "downscale_delay_s", "look_back_period_s")


class Scaling(_Strict):
    """Replica placement and autoscaling shared by every deployment kind."""

    # Ray gives a replica 1 CPU by default, which cannot place a multi-model graph on a small
    # machine: every deployment states its (fractional) share explicitly.
    num_cpus: float = Field(0.25, ge=0)
    num_gpus: float = Field(0.0, ge=0)
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(16.0, gt=0)
    max_ongoing_requests: int = Field(256, ge=1)
    runtime_env: dict[str, Any] | None = Field(None, description="Per-deployment Ray runtime_env (e.g. pip pins)")
    # How fast the autoscaler reacts; unset keeps Ray's defaults (in brackets), which suit a
    # cluster that adds nodes for new replicas. The load reports (LOAD_REPORT_INTERVAL_S) bound it.
    upscale_delay_s: float | None = Field(None, ge=0, description="Seconds of high load before adding a replica [30]")
    downscale_delay_s: float | None = Field(None, ge=0, description="Seconds of low load before removing one [600]")
    look_back_period_s: float | None = Field(None, description="Window the load is averaged over, s [30]")

    @field_validator("look_back_period_s")
    @classmethod
    def _spans_load_reports(cls, value: float | None) -> float | None:
        if value is not None and value <= LOAD_REPORT_INTERVAL_S:
            raise ValueError(f"must exceed the {LOAD_REPORT_INTERVAL_S:g} s between Ray's load reports, got {value:g}")
        return value

    @model_validator(mode="after")
    def _replica_bounds(self) -> Scaling:
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas {self.min_replicas} exceeds max_replicas {self.max_replicas}")
        return self

    @property
    def initial_replicas(self) -> int:
        """Replicas a deployment starts with (one even when it may scale to zero)."""
        return max(self.min_replicas, 1)

    def deployment_options(self, name: str) -> dict[str, Any]:
        """Keyword arguments for ``Deployment.options``."""
        actor: dict[str, Any] = {"num_cpus": self.num_cpus, "num_gpus": self.num_gpus}
        if self.runtime_env:
            actor["runtime_env"] = self.runtime_env
        return {
            "name": name,
            "ray_actor_options": actor,
            "max_ongoing_requests": self.max_ongoing_requests,
            "autoscaling_config": {
                "min_replicas": self.min_replicas,
                "initial_replicas": self.initial_replicas,
                "max_replicas": self.max_replicas,
                "target_ongoing_requests": self.target_ongoing_requests,
                **{key: value for key in _REACTION if (value := getattr(self, key)) is not None},
            },
        }


class ModelOptions(Scaling):
    """One model deployment: placement, dynamic batching, adapter multiplexing."""

    max_ongoing_requests: int = Field(64, ge=1)
    # Callers coalesce requests into calls (serve.member_calls), so a model replica's ongoing
    # requests are calls: about 2 per replica is one computing and one queued behind it.
    target_ongoing_requests: float = Field(2.0, gt=0)
    max_batch_size: int = Field(32, ge=1, description="Series per batched model call")
    calls_per_caller: int | None = Field(
        None,
        ge=1,
        description="Calls each caller (ingress/ensemble replica) keeps in flight to this model; requests "
        "beyond wait and leave together in the next call. Default 2 x max_replicas",
    )
    batch_wait_timeout_s: float = Field(0.005, ge=0)
    max_adapters_per_replica: int = Field(4, ge=1, description="LoRA adapters kept loaded per replica (LRU)")
    health_check_period_s: float = Field(10.0, gt=0)
    gpu_share: float = Field(
        0.25,
        gt=0,
        description="num_gpus of a replica placed on a GPU (models.device cuda, or auto on a Ray cluster with "
        "GPUs) when num_gpus is not set: fractions pack several models on one GPU (no memory isolation)",
    )

    @model_validator(mode="after")
    def _queue_holds_a_batch(self) -> ModelOptions:
        # Ray Serve's @serve.batch assumes a replica can hold a batch's worth of requests (it warns
        # otherwise); callers that do not coalesce (a plain handle, one series per call) would
        # never fill a batch.
        if self.max_ongoing_requests < self.max_batch_size:
            raise ValueError(
                f"max_ongoing_requests {self.max_ongoing_requests} is below max_batch_size {self.max_batch_size}; "
                "one-series calls could never fill a batch"
            )
        return self

    def deployment_options(self, name: str) -> dict[str, Any]:
        return {**super().deployment_options(name), "health_check_period_s": self.health_check_period_s}

    def in_flight_per_caller(self) -> int:
        return self.calls_per_caller or 2 * self.max_replicas


class EnsembleOptions(Scaling):
    num_cpus: float = Field(0.1, ge=0)
    timeout_s: float = Field(10.0, gt=0, description="Per-member time budget; late members are dropped")


class IngressOptions(Scaling):
    num_cpus: float = Field(0.1, ge=0)


class Limits(_Strict):
    """Request limits enforced by the HTTP API before any model runs."""

    max_context_points: int = Field(16384, ge=2, description="Longest explicit context / context_length")
    max_horizon: int = Field(1024, ge=1)
    max_quantiles: int = Field(21, ge=1, le=MAX_QUANTILES)
    max_series: int = Field(256, ge=1, description="Series per batch request")
    default_context_length: int = Field(512, ge=2, description="Bars read from the store for a symbol")


class AppConfig(_Strict):
    """``args`` of the Serve application (see serve/config.yaml for every field in use)."""

    config: str | None = Field(None, description="fmtrade.yaml to load (default: FMTRADE_CONFIG / ./fmtrade.yaml)")
    settings: dict[str, Any] = Field(default_factory=dict, description="Overrides merged over the fmtrade settings")
    models: list[str] | None = Field(None, description="Models to serve (default: every enabled, available model)")
    model_defaults: ModelOptions = Field(default_factory=ModelOptions)
    family_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="Per-family overrides (chronos-bolt, timesfm ...), under model_options"
    )
    gpu_family_options: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Per-family overrides for replicas placed on a GPU (batch sizes, gpu_share), over family_options",
    )
    model_options: dict[str, dict[str, Any]] = Field(default_factory=dict, description="Per-model overrides")
    ensemble: EnsembleOptions = Field(default_factory=EnsembleOptions)
    ingress: IngressOptions = Field(default_factory=IngressOptions)
    limits: Limits = Field(default_factory=Limits)
    api_token: SecretStr | None = Field(None, description="Bearer token; default settings.serve.api_token")
    max_body_bytes: int | None = Field(None, gt=0, description="Default settings.serve.max_body_bytes")
    _specs: dict[str, ModelSpec] | None = PrivateAttr(None)

    @field_validator("family_options", "gpu_family_options")
    @classmethod
    def _known_families(cls, value: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        unknown = sorted(set(value) - FAMILIES)
        if unknown:
            raise ValueError(f"unknown famil{'y' if len(unknown) == 1 else 'ies'} {', '.join(unknown)}; known: "
                             f"{', '.join(sorted(FAMILIES))}")  # fmt: skip
        return value

    @classmethod
    def parse(cls, args: dict[str, Any] | None) -> AppConfig:
        """Validate ``args``; errors name the field and reason."""
        try:
            return cls.model_validate(args or {})
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or '<root>'}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid serve application config: {problems}") from exc

    def to_args(self) -> dict[str, Any]:
        """The JSON-able document handed to replicas (the token travels as a plain string)."""
        doc = self.model_dump(mode="json", exclude={"api_token"})
        doc["api_token"] = self.api_token.get_secret_value() if self.api_token else None
        return doc

    def load_settings(self) -> Settings:
        return load_settings(self.config, self.settings)

    def options_for(self, model: str) -> ModelOptions:
        """``model``'s options: model_defaults < family_options < gpu_family_options (a replica placed on a
        GPU) < model_options. A replica goes on a GPU when its num_gpus is set above 0, or, unset, when
        its registry device is ``cuda``, or ``auto`` on a Ray cluster that has GPUs (a weighted family
        only); it then takes ``gpu_share`` of one."""
        spec = self._spec(model)
        family = spec.family if spec is not None else None
        layers = [self.model_defaults.model_dump(exclude_unset=True), self.family_options.get(family or "", {})]
        override = self.model_options.get(model, {})
        merged = {k: v for layer in (*layers, override) for k, v in layer.items()}
        # An explicit num_gpus decides; unset, the registry device (and the cluster's GPUs) decide.
        on_gpu = merged["num_gpus"] > 0 if "num_gpus" in merged else spec is not None and wants_gpu(spec)
        if on_gpu:
            merged = {k: v for layer in (*layers, self.gpu_family_options.get(family or "", {}), override)
                      for k, v in layer.items()}  # fmt: skip
        try:
            options = ModelOptions.model_validate(merged)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
            raise ConfigError(f"invalid serve config model_options.{model}: {problems}") from exc
        if on_gpu and "num_gpus" not in merged:
            options = options.model_copy(update={"num_gpus": options.gpu_share})
        return options

    def _spec(self, model: str) -> ModelSpec | None:
        """``model``'s registry spec (device resolved from settings), None for a name the registry lacks."""
        if self._specs is None:
            self._specs = {spec.name: spec for spec in active_specs(self.load_settings())}
        return self._specs.get(model)

    def token(self, settings: Settings) -> str | None:
        """The bearer token in effect: the app config, else settings (FMTRADE_API_TOKEN)."""
        secret = self.api_token or settings.serve.api_token
        return secret.get_secret_value() if secret else None

    def body_limit(self, settings: Settings) -> int:
        return self.max_body_bytes or settings.serve.max_body_bytes


def wants_gpu(spec: ModelSpec) -> bool:
    """Whether ``spec``'s replicas belong on a GPU: a weighted (torch) family whose device is ``cuda``,
    or ``auto`` while this process is connected to a Ray cluster with GPUs."""
    if not adapter_of(spec.adapter).needs_checkpoint or spec.device == "cpu":
        return False
    return spec.device == "cuda" or cluster_gpus() > 0


def cluster_gpus() -> float:
    """GPUs of the Ray cluster this process is connected to (0 when it is not connected to one)."""
    return float(ray.cluster_resources().get("GPU", 0.0)) if ray.is_initialized() else 0.0
