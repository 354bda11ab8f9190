"""The model registry: validation names the bad field, profiles, selection, checkpoint resolution."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from fmtrade.config import load_settings
from fmtrade.errors import ConfigError, InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.registry import (
    ADAPTERS,
    ModelSpec,
    active_specs,
    build_forecaster,
    is_available,
    load_registry,
    parse_registry,
    resolve_checkpoint,
    select_specs,
)

ZOO = {
    "chronos-fm-tiny",
    "chronos-bolt-fm-tiny",
    "chronos2-fm-tiny",
    "timesfm-fm-tiny",
    "lagllama-fm-tiny",
    "fracast-0",
}
BASELINES = {"random-walk", "naive", "seasonal-naive", "auto-ets", "theta", "auto-arima"}


def test_packaged_registry_has_local_default_and_hub_profiles() -> None:
    registry = load_registry()
    local = {s.name: s for s in registry.profile("local")}
    assert set(local) == ZOO | BASELINES
    assert not local["auto-arima"].enabled
    # Members far worse than the random walk on held-out data stay out of the default ensemble.
    assert {n for n, s in local.items() if not s.enabled} == {"auto-arima", "chronos-fm-tiny", "lagllama-fm-tiny"}
    hub = {s.checkpoint for s in registry.profile("hub") if s.checkpoint}
    assert {"amazon/chronos-t5-small", "amazon/chronos-bolt-small", "amazon/chronos-2"} <= hub
    assert "google/timesfm-2.5-200m-pytorch" in hub
    assert load_settings().models.profile == "local"


@pytest.mark.parametrize(
    ("entry", "field", "reason"),
    [
        ({"name": "m", "adapter": "chronos", "checkpoint": "x", "batch_size": 0}, "local[0](m).batch_size", "greater"),
        ({"name": "m", "adapter": "moirai", "checkpoint": "x"}, "local[0](m).adapter", "unknown adapter 'moirai'"),
        ({"name": "m", "adapter": "timesfm"}, "local[0](m)", "needs a checkpoint"),
        ({"name": "m", "adapter": "naive", "weight": -1}, "local[0](m).weight", "greater than or equal to 0"),
        ({"name": "m", "adapter": "naive", "colour": "red"}, "local[0](m).colour", "Extra inputs"),
        ({"adapter": "naive"}, "local[0].name", "Field required"),
        ({"name": "m", "adapter": "naive", "device": "tpu"}, "local[0](m).device", "'auto', 'cpu' or 'cuda'"),
    ],
)
def test_validation_error_names_field_and_reason(entry: dict, field: str, reason: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_registry({"profiles": {"local": [entry]}}, "test.yaml")
    message = str(info.value)
    assert "test.yaml" in message
    assert f"profiles.{field}" in message
    assert reason in message


def test_duplicate_names_rejected() -> None:
    doc = {"profiles": {"local": [{"name": "a", "adapter": "naive"}, {"name": "a", "adapter": "theta"}]}}
    with pytest.raises(ConfigError, match="profile 'local' lists model 'a' twice"):
        parse_registry(doc, "x")


def test_user_registry_and_profile_from_settings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "models.yaml"
    specs = [{"name": "rw", "adapter": "random-walk", "weight": 2.0}, {"name": "n", "adapter": "naive"}]
    doc = {"profiles": {"hub": specs}}
    path.write_text(yaml.safe_dump(doc))
    monkeypatch.setenv("FMTRADE_MODELS__REGISTRY", str(path))
    monkeypatch.setenv("FMTRADE_MODELS__PROFILE", "hub")
    monkeypatch.setenv("FMTRADE_MODELS__DEVICE", "cpu")
    specs = active_specs(load_settings())
    assert [s.name for s in specs] == ["rw", "n"]
    assert specs[0].weight == 2.0
    assert {s.device for s in specs} == {"cpu"}  # "auto" takes the models.device setting

    monkeypatch.setenv("FMTRADE_MODELS__PROFILE", "local")
    with pytest.raises(ConfigError, match="models.profile: 'local' is not in the registry"):
        active_specs(load_settings())


def test_missing_or_broken_registry_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load_registry(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("profiles: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_registry(bad)


def test_select_specs() -> None:
    specs = load_registry().profile("local")
    enabled = select_specs(specs, None)
    assert "auto-arima" not in {s.name for s in enabled}
    assert [s.name for s in select_specs(specs, ["theta", "auto-arima"])] == ["theta", "auto-arima"]
    with pytest.raises(InputError) as info:
        select_specs(specs, ["random-walk", "gpt-5"])
    assert info.value.field == "models"
    assert "gpt-5" in info.value.reason


def test_checkpoint_resolution(tmp_path: Path) -> None:
    settings = load_settings()
    zoo = settings.zoo_dir()
    assert resolve_checkpoint(ModelSpec(name="a", adapter="chronos", checkpoint="m"), settings) == str(zoo / "m")
    hub = ModelSpec(name="b", adapter="chronos-bolt", checkpoint="amazon/chronos-bolt-small")
    assert resolve_checkpoint(hub, settings) == "amazon/chronos-bolt-small"
    assert not is_available(hub, settings)  # not in the (isolated, empty) HF cache
    (zoo / "amazon" / "chronos-bolt-small").mkdir(parents=True)  # a hub snapshot copied into the zoo wins
    assert resolve_checkpoint(hub, settings) == str(zoo / "amazon" / "chronos-bolt-small")
    absolute = ModelSpec(name="c", adapter="timesfm", checkpoint=str(tmp_path))
    assert resolve_checkpoint(absolute, settings) == str(tmp_path)
    assert is_available(absolute, settings)
    assert is_available(ModelSpec(name="rw", adapter="random-walk"), settings)


def test_hub_cache_detection(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    spec = ModelSpec(name="b", adapter="chronos2", checkpoint="amazon/chronos-2")
    assert not is_available(spec, load_settings())
    (tmp_path / "models--amazon--chronos-2" / "snapshots" / "abc123").mkdir(parents=True)
    assert is_available(spec, load_settings())


def test_every_adapter_key_maps_to_the_contract_names() -> None:
    assert ADAPTERS["chronos-bolt"].cls == "ChronosBoltForecaster"
    assert ADAPTERS["timesfm"].builder == "build_timesfm_checkpoint"
    assert all(a.builder is None for a in ADAPTERS.values() if a.family == "baseline")


def test_build_forecaster_baseline_and_missing_checkpoint() -> None:
    settings = load_settings()
    specs = {s.name: s for s in active_specs(settings)}
    rw = build_forecaster(specs["random-walk"], settings)
    assert rw.name == "random-walk"
    assert rw.max_batch_size == specs["random-walk"].batch_size
    with pytest.raises(ModelLoadError, match="fmtrade models build"):
        build_forecaster(specs["chronos-bolt-fm-tiny"], settings)  # zoo not built in this FMTRADE_HOME
