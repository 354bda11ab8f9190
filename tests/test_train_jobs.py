"""The Ray Train jobs end to end on a local 2-worker Ray: pretraining (with a worker killed mid-run)
and LoRA fine-tuning through the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import ray

from fmtrade.config import load_settings
from fmtrade.data.corpus import CorpusParams
from fmtrade.jobs.ray_runtime import init_ray
from fmtrade.models.chronos import ChronosBoltForecaster
from fmtrade.models.lagllama import LagLlamaForecaster
from fmtrade.models.recipes import RECIPE_FILE
from fmtrade.models.zoo import build_zoo
from tests.conftest import run_cli

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    init_ray("local", num_cpus=2)
    yield
    ray.shutdown()


def test_pretrain_resumes_after_a_worker_dies_and_writes_a_loadable_checkpoint(tmp_path: Path) -> None:
    from fmtrade.train.pretrain import PretrainParams, pretrain

    marker = tmp_path / "killed-once"
    params = PretrainParams(
        arch="lagllama", out=tmp_path / "lagllama-pretrained", steps=12, workers=2, batch_size=16,
        corpus_params=CorpusParams(markets=1, market_hours=3000, kernel_batches=1, kernel_series=4),
        storage=str(tmp_path / "ray-train"), max_failures=1, fail_at_step=5, fail_marker=str(marker),
    )  # fmt: skip
    result = pretrain(params)
    assert marker.exists()  # the last worker really exited at step 5 ...
    assert result["resumed_from"] == 3  # ... and the group restarted from the step-3 checkpoint
    assert result["steps"] == 12
    assert result["val_loss_last"] < result["val_loss_first"]
    stamp = json.loads((Path(result["checkpoint"]) / RECIPE_FILE).read_text())  # zoo-loadable by its name
    assert stamp == {"recipe": 1, "family": "lagllama", "size": "tiny", "seed": 0, "steps_total": 12}
    model = LagLlamaForecaster("pretrained", result["checkpoint"], device="cpu", num_samples=20)
    forecast = model.forecast([np.linspace(100.0, 120.0, 800)], 24, seeds=[0])
    assert forecast.quantiles.shape == (1, 24, 9)


def test_finetune_writes_per_symbol_adapters_that_change_the_forecast(
    market_store, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings()
    build_zoo(settings, only=["chronos-bolt-fm-tiny"])
    argv = [
        "finetune", "--base", "chronos-bolt-fm-tiny", "--symbols", "AAAUSDT", "--mode", "per-symbol",
        "--rank", "2", "--alpha", "4", "--epochs", "1", "--max-steps", "4", "--workers", "2",
        "--batch-size", "8", "--store", market_store.root, "--val-start", "2022-03-20", "--json",
    ]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    adapter = Path(doc["adapters"]["AAAUSDT"])
    assert adapter == settings.zoo_dir() / "adapters" / "chronos-bolt-fm-tiny" / "AAAUSDT"
    assert (adapter / "adapter_config.json").is_file()
    assert 0 < doc["trainable_params"] < 0.05 * doc["total_params"]
    settings_seen = {(row["symbol"], row["setting"]) for row in doc["table"]}
    assert settings_seen == {("AAAUSDT", s) for s in ("zero-shot", "fine-tuned", "random-walk")}
    assert all(row["windows"] > 0 and row["wql"] is not None for row in doc["table"])
    checkpoint = str(settings.zoo_dir() / "chronos-bolt-fm-tiny")
    context = [market_store.read("AAAUSDT", "60", category="linear")["close"].to_numpy()[-512:]]
    base = ChronosBoltForecaster("base", checkpoint, device="cpu").forecast(context, 24)
    tuned = ChronosBoltForecaster("tuned", checkpoint, device="cpu", adapter=str(adapter)).forecast(context, 24)
    assert not np.allclose(base.quantiles, tuned.quantiles)


def test_finetune_tune_publishes_the_trial_with_the_best_validation_wql(
    market_store, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = load_settings()
    build_zoo(settings, only=["chronos-bolt-fm-tiny"])
    argv = [
        "finetune", "--base", "chronos-bolt-fm-tiny", "--symbols", "AAAUSDT", "--alpha", "4", "--rank", "2",
        "--tune", "--tune-lrs", "1e-3", "--tune-ranks", "2,4", "--epochs", "1", "--max-steps", "3",
        "--workers", "1", "--batch-size", "8", "--store", market_store.root, "--val-start", "2022-03-20", "--json",
    ]  # fmt: skip
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    doc = json.loads(out)
    swept = doc["tune"]["adapters"]["AAAUSDT"]
    trials = swept["trials"]
    assert sorted(t["rank"] for t in trials) == [2, 4]
    assert all(t["error"] is None and t["best_val_wql"] is not None for t in trials)
    assert {t["rank"]: t["alpha"] for t in trials} == {2: 4, 4: 8}  # alpha keeps the alpha / rank ratio
    best = min(trials, key=lambda t: t["best_val_wql"])
    assert swept["best"] == {"lr": best["lr"], "rank": best["rank"], "alpha": best["alpha"]}
    assert doc["runs"][0]["best_val_wql"] == best["best_val_wql"]
    published = json.loads((Path(doc["adapters"]["AAAUSDT"]) / "adapter_config.json").read_text())
    assert (published["r"], published["lora_alpha"]) == (best["rank"], best["alpha"])
