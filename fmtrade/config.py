"""One typed settings object for the whole system.

Sources, highest priority first: explicit overrides (CLI flags), environment
variables ``FMTRADE_*`` (nested with ``__``, e.g. ``FMTRADE_DATA__BASE_URL``),
the YAML file named by ``--config`` / ``FMTRADE_CONFIG`` (default
``./fmtrade.yaml`` when present), then the defaults below. ``FMTRADE_HOME``
(default ``~/.fmtrade``) holds the store, the model zoo and runs unless a
section overrides its own path. Invalid settings raise ``ConfigError`` naming
the field and the reason, so the CLI fails at start, not halfway through a job.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from fmtrade.data.intervals import BYBIT_INTERVALS, CATEGORIES
from fmtrade.errors import ConfigError

BYBIT_MAINNET = "https://api.bybit.com"
BYBIT_TESTNET = "https://api-testnet.bybit.com"

Device = Literal["auto", "cpu", "cuda"]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataSettings(Section):
    """Market data: where the store lives and how the Bybit client behaves."""

    store: str | None = Field(None, description="Store root (path or URI); default $FMTRADE_HOME/store")
    base_url: str = BYBIT_MAINNET
    category: Literal["linear", "inverse", "spot"] = "linear"
    interval: str = "60"
    timeout_s: float = Field(10.0, gt=0)
    max_attempts: int = Field(6, ge=1, le=20)
    backoff_base_s: float = Field(0.5, ge=0)
    backoff_max_s: float = Field(30.0, ge=0)
    # Bybit allows 600 requests per 5 s per IP on market endpoints; stay well under.
    rate_limit_per_s: float = Field(20.0, gt=0)
    rate_limit_enabled: bool = True

    @field_validator("interval")
    @classmethod
    def _interval_known(cls, value: str) -> str:
        if value not in BYBIT_INTERVALS:
            raise ValueError(f"must be one of Bybit's intervals {', '.join(BYBIT_INTERVALS)}")
        return value

    @field_validator("category")
    @classmethod
    def _category_known(cls, value: str) -> str:
        if value not in CATEGORIES:
            raise ValueError(f"must be one of {', '.join(CATEGORIES)}")
        return value


class ModelsSettings(Section):
    """Which registry profile is active and where the local zoo lives."""

    profile: Literal["local", "hub"] = "local"
    registry: str | None = Field(None, description="models.yaml path; default the packaged registry")
    zoo: str | None = Field(None, description="Model zoo directory; default $FMTRADE_HOME/zoo")
    device: Device = "auto"
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    calibrate_ensemble: bool = Field(
        False, description="Recalibrate the walk-forward ensemble from its own errors too (docs/MODELS.md)"
    )
    live_state: str | None = Field(
        None, description="Live calibration state (`fmtrade calibrate`); default $FMTRADE_HOME/live-state.json"
    )


class ServeSettings(Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    config: str = "serve/config.yaml"
    api_token: SecretStr | None = None
    max_body_bytes: int = Field(4 * 1024 * 1024, gt=0)


class TrainSettings(Section):
    storage_path: str | None = Field(None, description="Ray Train storage; default $FMTRADE_HOME/train")
    workers: int = Field(2, ge=1)
    use_gpu: bool = False
    seed: int = 0


class BacktestSettings(Section):
    initial_equity: float = Field(100_000.0, gt=0)
    taker_fee_bps: float = Field(7.5, ge=0)
    slippage_bps: float = Field(2.0, ge=0)
    min_trade_notional: float = Field(5.0, ge=0)
    context: int = Field(512, ge=8)
    horizon: int = Field(24, ge=1)
    rebalance: int = Field(24, ge=1)
    strategy: Literal["threshold", "risk"] = "threshold"
    threshold: float = Field(0.005, ge=0)
    position_fraction: float = Field(1.0, gt=0, le=10)
    target_volatility: float = Field(0.5, gt=0, description="risk strategy: annualised volatility target")
    max_leverage: float = Field(1.0, gt=0, le=10, description="risk strategy: cap on |position| / equity")
    inference_actors: int = Field(1, ge=1)
    use_gpu: bool = False
    runs_dir: str | None = Field(None, description="default $FMTRADE_HOME/runs")


class ClusterSettings(Section):
    address: str = Field("local", description="'local' (embedded Ray), 'auto', or ray://host:port")
    num_cpus: int | None = Field(None, ge=1)
    dashboard_port: int = Field(8265, ge=1, le=65535)


class AgentSettings(Section):
    """The trading agent (fmtrade/agent, docs/AGENT.md): reasoner, broker, risk limits, exchange keys."""

    reasoner: Literal["rules", "llm"] = "rules"
    broker: Literal["paper", "bybit"] = "paper"
    journal: str | None = Field(None, description="SQLite journal path; default $FMTRADE_HOME/agent/journal.sqlite")
    # LLM reasoner: any OpenAI-compatible chat completions endpoint.
    llm_base_url: str = Field("http://127.0.0.1:8000/v1", description="OpenAI-compatible base URL (ends in /v1)")
    llm_model: str = "qwen2.5-7b-instruct"
    llm_api_key: SecretStr | None = None
    llm_timeout_s: float = Field(30.0, gt=0)
    llm_max_tokens_per_run: int = Field(200_000, ge=0, description="token budget per run; then rules decide")
    llm_max_cost_per_run: float = Field(5.0, ge=0, description="money budget per run (USD); then rules decide")
    llm_cost_per_1k_prompt: float = Field(0.0, ge=0)
    llm_cost_per_1k_completion: float = Field(0.0, ge=0)
    # Exchange (bybit broker): keys only from the environment (FMTRADE_AGENT__API_KEY / __API_SECRET).
    api_key: SecretStr | None = None
    api_secret: SecretStr | None = None
    testnet: bool = True
    confirm_live: bool = Field(False, description="must be true (with --live) before any mainnet order")
    recv_window_ms: int = Field(5000, ge=1000, le=60_000)
    # Risk limits (deterministic, outside every reasoner).
    target_volatility: float = Field(0.5, gt=0, description="annualised volatility target per position")
    max_notional_per_symbol: float = Field(25_000.0, gt=0)
    max_gross_exposure: float = Field(1.0, gt=0, description="sum of |notional| / equity")
    max_leverage: float = Field(1.0, gt=0, le=10)
    daily_loss_limit: float = Field(0.05, gt=0, lt=1, description="fraction of equity; flatten and stop beyond it")
    max_disagreement: float = Field(0.02, gt=0, description="gate: hold when members disagree beyond this")
    initial_equity: float = Field(100_000.0, gt=0, description="paper broker starting cash")


class Settings(BaseSettings):
    """Root settings. Build with :func:`load_settings`, not directly."""

    model_config = SettingsConfigDict(
        env_prefix="FMTRADE_", env_nested_delimiter="__", extra="forbid", validate_default=True
    )

    home: Path = Field(default_factory=lambda: Path("~/.fmtrade").expanduser())
    data: DataSettings = Field(default_factory=DataSettings)
    models: ModelsSettings = Field(default_factory=ModelsSettings)
    serve: ServeSettings = Field(default_factory=ServeSettings)
    train: TrainSettings = Field(default_factory=TrainSettings)
    backtest: BacktestSettings = Field(default_factory=BacktestSettings)
    cluster: ClusterSettings = Field(default_factory=ClusterSettings)
    agent: AgentSettings = Field(default_factory=AgentSettings)

    @field_validator("home", mode="before")
    @classmethod
    def _expand_home(cls, value: Any) -> Any:
        return Path(value).expanduser() if isinstance(value, (str, Path)) else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        # init (the YAML document merged with CLI overrides) < env: env wins over the file.
        return env_settings, init_settings

    # Derived locations -------------------------------------------------------------
    def store_uri(self, override: str | None = None) -> str:
        """Store root: ``--store`` > ``FMTRADE_STORE`` > ``data.store`` > ``$FMTRADE_HOME/store``."""
        return override or os.environ.get("FMTRADE_STORE") or self.data.store or str(self.home / "store")

    def zoo_dir(self) -> Path:
        return Path(self.models.zoo).expanduser() if self.models.zoo else self.home / "zoo"

    def live_state_path(self) -> Path:
        return Path(self.models.live_state).expanduser() if self.models.live_state else self.home / "live-state.json"

    def runs_dir(self) -> Path:
        return Path(self.backtest.runs_dir).expanduser() if self.backtest.runs_dir else self.home / "runs"

    def agent_journal(self) -> Path:
        return Path(self.agent.journal).expanduser() if self.agent.journal else self.home / "agent" / "journal.sqlite"

    def train_storage(self) -> str:
        return self.train.storage_path or str(self.home / "train")


# ``FMTRADE_CONFIG`` and ``FMTRADE_STORE`` are read directly, not as settings fields.
_NON_FIELD_ENV = ("FMTRADE_CONFIG", "FMTRADE_STORE", "FMTRADE_API_TOKEN")


def _format_validation_error(exc: ValidationError, origin: str) -> str:
    parts = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err["loc"]) or "<root>"
        parts.append(f"{field}: {err['msg']}")
    return f"invalid configuration ({origin}): " + "; ".join(parts)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        doc = yaml.safe_load(path.read_text()) or {}
    except FileNotFoundError as exc:
        raise ConfigError(f"config file not found: {path}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if not isinstance(doc, dict):
        raise ConfigError(f"config file {path} must hold a mapping of sections, got {type(doc).__name__}")
    return doc


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def config_path(explicit: str | os.PathLike[str] | None = None) -> Path | None:
    """The YAML file in effect: explicit > $FMTRADE_CONFIG > ./fmtrade.yaml if it exists."""
    if explicit:
        return Path(explicit).expanduser()
    env = os.environ.get("FMTRADE_CONFIG")
    if env:
        return Path(env).expanduser()
    local = Path("fmtrade.yaml")
    return local if local.exists() else None


def load_settings(config: str | os.PathLike[str] | None = None, overrides: dict[str, Any] | None = None) -> Settings:
    """Load and validate settings; raise ConfigError naming the bad field and why."""
    path = config_path(config)
    doc = _read_yaml(path) if path else {}
    doc = _deep_merge(doc, overrides or {})
    saved = {k: os.environ.pop(k) for k in _NON_FIELD_ENV if k in os.environ}
    try:
        settings = Settings(**doc)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(exc, str(path) if path else "environment")) from exc
    finally:
        os.environ.update(saved)
    token = os.environ.get("FMTRADE_API_TOKEN")
    if token and settings.serve.api_token is None:
        settings.serve.api_token = SecretStr(token)
    return settings
