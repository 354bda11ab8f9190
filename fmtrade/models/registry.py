"""The model registry: which models exist, where their weights live, how to build them.

A registry (``models.yaml``) holds named profiles, each a list of :class:`ModelSpec`.
The packaged file ships ``local`` (the offline zoo + statsforecast baselines, the
default) and ``hub`` (the published checkpoints, for machines with internet). Users
point ``models.registry`` at their own file and pick ``models.profile``.

Adapters are imported lazily from :data:`ADAPTERS` so that listing models, or using
only the baselines, never pays for importing torch-heavy model libraries.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any, Literal, Protocol

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from fmtrade.config import Settings
from fmtrade.errors import ConfigError, InputError
from fmtrade.models.base import Forecaster
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.recipes import current_recipe, is_outdated, recipe_of


class ForecasterClass(Protocol):
    """An adapter's forecaster class as the registry calls it: ``cls(name, checkpoint, **kwargs)``,
    with ``max_batch_size``, ``context_length``, ``device``/``dtype`` (weighted families) and the
    spec's options as keyword arguments."""

    def __call__(self, name: str, checkpoint: str | None = ..., /, **kwargs: Any) -> Forecaster: ...


@dataclass(frozen=True)
class Adapter:
    """Where an adapter key's forecaster class and zoo builder live."""

    family: str
    module: str
    cls: str
    builder: str | None = None  # ``build_<family>_checkpoint``; None for baselines (no weights)
    published: bool = False  # the builder copies published trained weights: the zoo build never pretrains them

    @property
    def needs_checkpoint(self) -> bool:
        return self.builder is not None


ADAPTERS: dict[str, Adapter] = {
    "chronos": Adapter("chronos", "fmtrade.models.chronos", "ChronosForecaster", "build_chronos_checkpoint"),
    "chronos-bolt": Adapter(
        "chronos-bolt", "fmtrade.models.chronos", "ChronosBoltForecaster", "build_chronos_bolt_checkpoint"
    ),
    "chronos2": Adapter("chronos2", "fmtrade.models.chronos", "Chronos2Forecaster", "build_chronos2_checkpoint"),
    "timesfm": Adapter("timesfm", "fmtrade.models.timesfm", "TimesFMForecaster", "build_timesfm_checkpoint"),
    "lagllama": Adapter("lagllama", "fmtrade.models.lagllama", "LagLlamaForecaster", "build_lagllama_checkpoint"),
    "fracast": Adapter("fracast", "fmtrade.models.fracast", "FracastForecaster", "build_fracast_checkpoint", True),
    "random-walk": Adapter("baseline", "fmtrade.models.baselines", "RandomWalkForecaster"),
    "naive": Adapter("baseline", "fmtrade.models.baselines", "NaiveForecaster"),
    "seasonal-naive": Adapter("baseline", "fmtrade.models.baselines", "SeasonalNaiveForecaster"),
    "auto-ets": Adapter("baseline", "fmtrade.models.baselines", "AutoETSForecaster"),
    "auto-arima": Adapter("baseline", "fmtrade.models.baselines", "AutoARIMAForecaster"),
    "theta": Adapter("baseline", "fmtrade.models.baselines", "ThetaForecaster"),
}

DEFAULT_REGISTRY = "models.yaml"


def adapter_of(key: str) -> Adapter:
    """A built-in adapter, or ``package.module:Class`` for a Forecaster of one's own (family
    ``custom``, no checkpoint: its constructor gets the spec's name, options and limits)."""
    if key in ADAPTERS:
        return ADAPTERS[key]
    module, _, cls = key.partition(":")
    if not (module and cls):
        raise ValueError(f"unknown adapter {key!r}; known: {', '.join(ADAPTERS)}, or package.module:Class")
    return Adapter("custom", module, cls)


class ModelSpec(BaseModel):
    """One registry entry: enough to build a :class:`Forecaster`."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
    adapter: str
    checkpoint: str | None = Field(
        None, description="Local path, a name inside the zoo directory, or a hub id (owner/name)"
    )
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    batch_size: int = Field(256, ge=1, le=65536)
    context_length: int | None = Field(None, ge=2)
    weight: float = Field(1.0, ge=0.0, description="Static ensemble weight (normalised over the members that answer)")
    calibrate: bool = Field(True, description="Conformally recalibrate its quantiles in walk-forward runs")
    enabled: bool = True
    options: dict[str, Any] = Field(default_factory=dict, description="Extra keyword arguments for the adapter")

    @field_validator("adapter")
    @classmethod
    def _adapter_known(cls, value: str) -> str:
        adapter_of(value)
        return value

    @model_validator(mode="after")
    def _checkpoint_when_needed(self) -> ModelSpec:
        if adapter_of(self.adapter).needs_checkpoint and not self.checkpoint:
            raise ValueError(f"adapter {self.adapter!r} needs a checkpoint (zoo name, path or hub id)")
        return self

    @property
    def family(self) -> str:
        return adapter_of(self.adapter).family


class Registry(BaseModel):
    """Named profiles of model specs; names are unique within a profile."""

    model_config = ConfigDict(extra="forbid")

    profiles: dict[str, list[ModelSpec]] = Field(min_length=1)

    @field_validator("profiles")
    @classmethod
    def _unique_names(cls, profiles: dict[str, list[ModelSpec]]) -> dict[str, list[ModelSpec]]:
        for profile, specs in profiles.items():
            seen: set[str] = set()
            for spec in specs:
                if spec.name in seen:
                    raise ValueError(f"profile {profile!r} lists model {spec.name!r} twice")
                seen.add(spec.name)
        return profiles

    def profile(self, name: str) -> list[ModelSpec]:
        if name not in self.profiles:
            raise ConfigError(f"models.profile: {name!r} is not in the registry (profiles: {', '.join(self.profiles)})")
        return list(self.profiles[name])


def _field_path(loc: Sequence[Any], doc: Any) -> str:
    """``profiles.local[2](chronos-fm-tiny).batch_size``: the position plus the model's name."""
    parts: list[str] = []
    node = doc
    for key in loc:
        if isinstance(key, int):
            parts[-1] += f"[{key}]"
            node = node[key] if isinstance(node, list) and key < len(node) else None
            if isinstance(node, dict) and isinstance(node.get("name"), str):
                parts[-1] += f"({node['name']})"
        else:
            parts.append(str(key))
            node = node.get(key) if isinstance(node, dict) else None
    return ".".join(parts) or "<root>"


def parse_registry(doc: Any, origin: str) -> Registry:
    """Validate a registry document; errors name each bad field and the reason."""
    try:
        return Registry.model_validate(doc)
    except ValidationError as exc:
        problems = "; ".join(f"{_field_path(e['loc'], doc)}: {e['msg']}" for e in exc.errors())
        raise ConfigError(f"invalid model registry ({origin}): {problems}") from exc


def load_registry(path: str | Path | None = None) -> Registry:
    """Load ``path`` (default: the packaged ``models.yaml``)."""
    if path is None:
        text = resources.files("fmtrade.models").joinpath(DEFAULT_REGISTRY).read_text()
        origin = f"packaged {DEFAULT_REGISTRY}"
    else:
        file = Path(path).expanduser()
        origin = str(file)
        try:
            text = file.read_text()
        except FileNotFoundError as exc:
            raise ConfigError(f"models.registry: file {file} does not exist") from exc
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"model registry {origin} is not valid YAML: {exc}") from exc
    return parse_registry(doc, origin)


def active_specs(settings: Settings) -> list[ModelSpec]:
    """The specs of the configured profile, with ``auto`` device/dtype taken from ``settings.models``."""
    specs = load_registry(settings.models.registry).profile(settings.models.profile)
    out = []
    for spec in specs:
        update: dict[str, str] = {}
        if spec.device == "auto":
            update["device"] = settings.models.device
        if spec.dtype == "auto":
            update["dtype"] = settings.models.dtype
        out.append(spec.model_copy(update=update))
    return out


def select_specs(specs: Sequence[ModelSpec], names: Sequence[str] | None, field: str = "models") -> list[ModelSpec]:
    """The named specs in the order given (disabled ones allowed when named), or every enabled spec."""
    if not names:
        return [s for s in specs if s.enabled]
    by_name = {s.name: s for s in specs}
    unknown = [n for n in names if n not in by_name]
    if unknown:
        raise InputError(field, f"unknown model(s) {', '.join(unknown)}; known: {', '.join(by_name)}")
    return [by_name[n] for n in dict.fromkeys(names)]


def resolve_checkpoint(spec: ModelSpec, settings: Settings) -> str | None:
    """Absolute/``~``/``./`` paths as given; a name present in the zoo directory is that
    directory; any other ``owner/name`` is a hub id; a bare name is its zoo directory."""
    ckpt = spec.checkpoint
    if ckpt is None:
        return None
    if ckpt.startswith(("/", "~", ".")):
        return str(Path(ckpt).expanduser())
    in_zoo = settings.zoo_dir() / ckpt
    if in_zoo.exists() or "/" not in ckpt:
        return str(in_zoo)
    return ckpt


def in_zoo(spec: ModelSpec, settings: Settings) -> bool:
    """Whether ``spec``'s checkpoint is a directory directly inside the zoo (fmtrade builds those)."""
    ckpt = resolve_checkpoint(spec, settings)
    if not ckpt:
        return False
    return Path(ckpt).is_absolute() and Path(ckpt).resolve().parent == settings.zoo_dir().resolve()


def is_hub_id(spec: ModelSpec, settings: Settings) -> bool:
    ckpt = resolve_checkpoint(spec, settings)
    return ckpt is not None and not Path(ckpt).is_absolute()


def hub_cached(repo_id: str) -> bool:
    """Whether the Hugging Face cache holds a snapshot of ``repo_id`` (no network)."""
    from huggingface_hub import constants
    from huggingface_hub.file_download import repo_folder_name

    snapshots = Path(constants.HF_HUB_CACHE) / repo_folder_name(repo_id=repo_id, repo_type="model") / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def is_available(spec: ModelSpec, settings: Settings) -> bool:
    """Baselines always; local checkpoints when their directory exists; hub ids when cached."""
    ckpt = resolve_checkpoint(spec, settings)
    if ckpt is None:
        return True
    if Path(ckpt).is_absolute():
        return Path(ckpt).is_dir()
    return hub_cached(ckpt)


def _import(adapter: Adapter, attr: str) -> Any:
    try:
        module = importlib.import_module(adapter.module)
        return getattr(module, attr)
    except (ImportError, AttributeError) as exc:
        raise ModelLoadError(f"adapter {adapter.module}:{attr} is not importable: {exc}") from exc


def adapter_class(adapter_key: str) -> ForecasterClass:
    adapter = adapter_of(adapter_key)
    return _import(adapter, adapter.cls)


def zoo_builder(adapter_key: str) -> Callable[..., Path] | None:
    """The family's ``build_<family>_checkpoint`` (None for baselines and custom adapters)."""
    adapter = adapter_of(adapter_key)
    return _import(adapter, adapter.builder) if adapter.builder else None


def build_forecaster(spec: ModelSpec, settings: Settings) -> Forecaster:
    """Instantiate ``spec`` (weights are loaded once, here, by the adapter)."""
    cls = adapter_class(spec.adapter)
    kwargs: dict[str, Any] = {"max_batch_size": spec.batch_size, "context_length": spec.context_length}
    checkpoint = resolve_checkpoint(spec, settings)
    if adapter_of(spec.adapter).needs_checkpoint:
        kwargs.update(device=spec.device, dtype=spec.dtype)
        built = Path(str(checkpoint))
        if in_zoo(spec, settings) and built.is_dir() and is_outdated(spec.family, built):
            raise ModelLoadError(
                f"{spec.name}: {checkpoint} was built by zoo recipe {recipe_of(built)} of the "
                f"{spec.family} family, which this version replaced (recipe {current_recipe(spec.family)}); "
                "run `fmtrade models build` to rebuild it"
            )
    return cls(spec.name, checkpoint, **kwargs, **spec.options)
