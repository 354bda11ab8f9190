"""The local zoo: build through each family's real builder, list, reload through the real loaders."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from fmtrade.config import load_settings
from fmtrade.errors import InputError
from fmtrade.models.checkpoints import ModelLoadError
from fmtrade.models.recipes import RECIPE_FILE, ZOO_RECIPES, recipe_of
from fmtrade.models.registry import active_specs, build_forecaster
from fmtrade.models.zoo import adapter_dir, build_zoo, list_models, zoo_specs
from tests.conftest import run_cli

ZOO = [
    "chronos-fm-tiny",
    "chronos-bolt-fm-tiny",
    "chronos2-fm-tiny",
    "timesfm-fm-tiny",
    "lagllama-fm-tiny",
    "fracast-0",
]


@pytest.mark.slow
def test_build_list_round_trip_through_the_cli(capsys: pytest.CaptureFixture[str], isolated_home: Path) -> None:
    code, out, _ = run_cli(["models", "list", "--json"], capsys)
    assert code == 0
    before = {row["name"]: row for row in json.loads(out)}
    assert {row["name"] for row in before.values() if not row["available"]} == set(ZOO)
    assert before["random-walk"]["available"] and before["random-walk"]["family"] == "baseline"
    assert set(before["chronos-fm-tiny"]) >= {"name", "family", "checkpoint", "device", "available"}

    code, out, _ = run_cli(["models", "build", "--pretrain-minutes", "0", "--json"], capsys)
    assert code == 0
    built = json.loads(out)
    assert [row["name"] for row in built] == ZOO
    assert {row["status"] for row in built} == {"built"}
    for row in built:
        assert Path(row["checkpoint"]).parent == isolated_home / "zoo"
        assert (Path(row["checkpoint"]) / "config.json").is_file()
    assert not [p for p in (isolated_home / "zoo").iterdir() if p.name.startswith(".")]  # no scratch left

    code, out, _ = run_cli(["models", "list", "--json"], capsys)
    after = {row["name"]: row for row in json.loads(out)}
    assert all(row["available"] for row in after.values())
    assert after["timesfm-fm-tiny"]["family"] == "timesfm"

    code, out, _ = run_cli(["models", "build", "--pretrain-minutes", "0", "--json"], capsys)
    assert {row["status"] for row in json.loads(out)} == {"exists"}

    # Every zoo checkpoint loads through its family's real loader and forecasts a mixed-length batch.
    settings = load_settings()
    specs = {s.name: s for s in active_specs(settings)}
    rng = np.random.default_rng(0)
    contexts = [100 * np.exp(np.cumsum(rng.normal(0, 0.01, n))) for n in (64, 100)]
    for name in ZOO:
        model = build_forecaster(specs[name], settings)
        fc = model.forecast(contexts, 8, (0.1, 0.5, 0.9), seeds=[1, 2])
        assert fc.quantiles.shape == (2, 8, 3)
        assert (np.diff(fc.quantiles, axis=-1) >= 0).all()


def test_force_rebuild_and_post_build_hook() -> None:
    settings = load_settings()
    seen: list[tuple[str, Path]] = []

    def mark(spec, path: Path) -> None:
        seen.append((spec.name, path))
        (path / "pretrained.txt").write_text("post-build step ran")

    [row] = build_zoo(settings, only=["lagllama-fm-tiny"], post_build=mark)
    target = settings.zoo_dir() / "lagllama-fm-tiny"
    assert row["status"] == "built" and seen[0][0] == "lagllama-fm-tiny"
    assert seen[0][1] != target  # the hook runs before the checkpoint is published
    assert (target / "pretrained.txt").read_text() == "post-build step ran"

    [row] = build_zoo(settings, only=["lagllama-fm-tiny"], force=True, seed=1)
    assert row["status"] == "built"
    assert not (target / "pretrained.txt").exists()  # replaced by the fresh build
    assert sorted(p.name for p in settings.zoo_dir().iterdir()) == ["lagllama-fm-tiny"]


def test_failed_post_build_publishes_nothing() -> None:
    settings = load_settings()

    def explode(spec, path: Path) -> None:
        raise RuntimeError("pretraining crashed")

    with pytest.raises(RuntimeError, match="pretraining crashed"):
        build_zoo(settings, only=["lagllama-fm-tiny"], post_build=explode)
    assert list(settings.zoo_dir().iterdir()) == []


def test_checkpoints_of_an_older_recipe_are_rebuilt_others_kept() -> None:
    settings = load_settings()
    names = ["chronos-fm-tiny", "lagllama-fm-tiny"]
    build_zoo(settings, only=names)
    zoo = settings.zoo_dir()
    assert recipe_of(zoo / "chronos-fm-tiny") == ZOO_RECIPES["chronos"] == 2
    for name in names:  # what a zoo built before the stamps looks like (Chronos T5: 512-bar context)
        (zoo / name / RECIPE_FILE).unlink()
    config = json.loads((zoo / "chronos-fm-tiny" / "config.json").read_text())
    config["chronos_config"]["context_length"] = 512
    (zoo / "chronos-fm-tiny" / "config.json").write_text(json.dumps(config))

    specs = {s.name: s for s in active_specs(settings)}
    with pytest.raises(ModelLoadError, match=r"chronos-fm-tiny: .* zoo recipe 1 .* run `fmtrade models build`"):
        build_forecaster(specs["chronos-fm-tiny"], settings)  # never served under the new weights
    build_forecaster(specs["lagllama-fm-tiny"], settings)  # recipe 1 is current for Lag-Llama

    for name in names:  # per-symbol LoRA adapters trained on those weights
        adapter_dir(settings, name, "BTCUSDT").mkdir(parents=True)
        (adapter_dir(settings, name, "BTCUSDT") / "adapter_config.json").write_text("{}")

    report = {row["name"]: row for row in build_zoo(settings, only=names)}
    assert {n: r["status"] for n, r in report.items()} == {"chronos-fm-tiny": "rebuilt", "lagllama-fm-tiny": "exists"}
    # The rebuilt model's adapters no longer fit its weights: moved aside, so Serve uses the base model.
    assert not adapter_dir(settings, "chronos-fm-tiny", "BTCUSDT").exists()
    retired = Path(report["chronos-fm-tiny"]["adapters_retired"])
    assert retired.parent == zoo / "adapters" and (retired / "BTCUSDT" / "adapter_config.json").is_file()
    assert (
        adapter_dir(settings, "lagllama-fm-tiny", "BTCUSDT").is_dir()
        and "adapters_retired" not in report["lagllama-fm-tiny"]
    )
    config = json.loads((zoo / "chronos-fm-tiny" / "config.json").read_text())
    assert config["chronos_config"]["context_length"] == 128
    assert recipe_of(zoo / "chronos-fm-tiny") == 2 and recipe_of(zoo / "lagllama-fm-tiny") == 1
    assert build_forecaster(specs["chronos-fm-tiny"], settings).max_context == 128
    assert {row["status"] for row in build_zoo(settings, only=names)} == {"exists"}

    (zoo / "lagllama-fm-tiny" / RECIPE_FILE).write_text("{not json")  # a damaged stamp: rebuild
    [row] = build_zoo(settings, only=["lagllama-fm-tiny"])
    assert row["status"] == "rebuilt" and recipe_of(zoo / "lagllama-fm-tiny") == 1


def test_bad_build_requests(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["models", "build", "--only", "random-walk"], capsys)
    assert code == 2
    assert "only: random-walk is not a zoo model" in err
    with pytest.raises(InputError, match="size"):
        build_zoo(load_settings(), size="huge")
    code, _, err = run_cli(["models", "build", "--only", "a,,b"], capsys)
    assert code == 2 and "--only" in err


def test_hub_profile_lists_hub_ids_unavailable_offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("FMTRADE_MODELS__PROFILE", "hub")
    settings = load_settings()
    rows = {row["name"]: row for row in list_models(settings)}
    assert rows["chronos-bolt-small"]["checkpoint"] == "amazon/chronos-bolt-small"
    assert rows["chronos-bolt-small"]["source"] == "hub" and not rows["chronos-bolt-small"]["available"]
    assert rows["random-walk"]["available"]
    assert zoo_specs(settings) == []  # nothing to build for the hub profile


def test_building_off_a_terminal_prints_no_progress_bar(isolated_home: Path) -> None:
    """Where stderr is a log (make demo piped, CI, a Ray job) a build saves without transformers'
    shard-writing bar."""
    build = (
        "from fmtrade.config import load_settings; from fmtrade.models.zoo import build_zoo; "
        "print(build_zoo(load_settings(), only=['chronos-bolt-fm-tiny'])[0]['status'])"
    )
    done = subprocess.run([sys.executable, "-c", build], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "built"
    assert "Writing model shards" not in done.stderr, done.stderr[-2000:]
