"""Settings: YAML + env precedence, derived paths, and field-named validation errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from fmtrade.config import load_settings
from fmtrade.errors import ConfigError


def test_defaults_live_under_home(isolated_home: Path) -> None:
    settings = load_settings()
    assert settings.home == isolated_home
    assert settings.store_uri() == str(isolated_home / "store")
    assert settings.zoo_dir() == isolated_home / "zoo"
    assert settings.backtest.taker_fee_bps == 7.5 and settings.backtest.slippage_bps == 2.0


def test_yaml_then_env_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "fmtrade.yaml"
    cfg.write_text("data:\n  interval: '240'\n  base_url: http://127.0.0.1:1\nmodels:\n  profile: hub\n")
    monkeypatch.setenv("FMTRADE_DATA__BASE_URL", "http://127.0.0.1:2")
    settings = load_settings(cfg)
    assert settings.data.interval == "240"  # from the file
    assert settings.data.base_url == "http://127.0.0.1:2"  # env wins over the file
    assert settings.models.profile == "hub"


def test_config_path_from_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = tmp_path / "other.yaml"
    cfg.write_text("backtest:\n  horizon: 12\n")
    monkeypatch.setenv("FMTRADE_CONFIG", str(cfg))
    assert load_settings().backtest.horizon == 12


def test_store_override_order(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMTRADE_STORE", "/data/env-store")
    settings = load_settings()
    assert settings.store_uri() == "/data/env-store"
    assert settings.store_uri("s3://bucket/x") == "s3://bucket/x"


@pytest.mark.parametrize(
    ("doc", "field"),
    [
        ("data:\n  interval: '7'\n", "data.interval"),
        ("backtest:\n  taker_fee_bps: -1\n", "backtest.taker_fee_bps"),
        ("serve:\n  port: 70000\n", "serve.port"),
        ("modelz:\n  profile: local\n", "modelz"),
        ("agent:\n  paper: true\n", "agent"),  # no trading agent yet, so no settings for one
    ],
)
def test_invalid_yaml_names_the_field(tmp_path: Path, doc: str, field: str) -> None:
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(doc)
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_settings(cfg)


def test_invalid_env_names_the_field(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMTRADE_MODELS__DEVICE", "tpu")
    with pytest.raises(ConfigError, match=r"models\.device"):
        load_settings()


def test_missing_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_settings(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_settings(bad)


def test_api_token_from_env_is_secret(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FMTRADE_API_TOKEN", "s3cret")
    settings = load_settings()
    assert settings.serve.api_token is not None
    assert settings.serve.api_token.get_secret_value() == "s3cret"
    assert "s3cret" not in repr(settings)
