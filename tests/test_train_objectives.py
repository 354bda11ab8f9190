"""Each family's own training objective on tiny zoo checkpoints, without Ray: it learns, and what it
writes loads back through the adapter's real loader; plus ``models build --pretrain-minutes``."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fmtrade.data.corpus import CorpusParams
from fmtrade.models.registry import zoo_builder
from fmtrade.training import (
    FAMILIES,
    LoraParams,
    TrainingRun,
    batches,
    corpus_windows,
    load_for_training,
    pretrain_checkpoint,
)
from tests.conftest import run_cli

SMALL = CorpusParams(markets=1, market_hours=2000, kernel_batches=1, kernel_series=3)


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """Training steps of these tiny models are fastest single-threaded on a shared 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("family", FAMILIES)
def test_objective_learns_and_checkpoint_round_trips(family: str, tmp_path: Path) -> None:
    checkpoint = zoo_builder(family)(tmp_path / "initial", size="tiny", seed=0)
    run = TrainingRun(load_for_training(family, str(checkpoint)), lr=3e-3)
    train, _ = corpus_windows(["synthetic"], run.geometry, SMALL)
    batch = torch.from_numpy(train[:4])
    before = run.eval_loss([batch])
    for _ in range(10):
        run.train_step(batch)
    assert run.eval_loss([batch]) < before  # the family's loss goes down on the batch it trains on
    saved = run.save(tmp_path / "trained")
    context = [train[5, : run.geometry.context].astype(np.float64)]
    expected = run.forecaster.forecast(context, 12, seeds=[0])
    reloaded = load_for_training(family, str(saved)).forecast(context, 12, seeds=[0])
    np.testing.assert_allclose(reloaded.quantiles, expected.quantiles, rtol=1e-4)


def test_lora_trains_only_the_adapter(tmp_path: Path) -> None:
    checkpoint = zoo_builder("chronos-bolt")(tmp_path / "base", size="tiny", seed=0)
    run = TrainingRun(load_for_training("chronos-bolt", str(checkpoint)), lora=LoraParams(rank=2))
    frozen = {n: p.detach().clone() for n, p in run.net.named_parameters() if not p.requires_grad}
    train, _ = corpus_windows(["synthetic"], run.geometry, SMALL)
    for i in range(3):
        run.train_step(torch.from_numpy(train[4 * i : 4 * i + 4]))
    assert 0 < run.trainable_params < 0.05 * run.total_params
    assert all(torch.equal(p, frozen[n]) for n, p in run.net.named_parameters() if n in frozen)
    adapter = run.save(tmp_path / "adapter")
    assert (adapter / "adapter_config.json").is_file()


def test_pretrain_checkpoint_lowers_validation_loss(tmp_path: Path) -> None:
    checkpoint = zoo_builder("lagllama")(tmp_path / "initial", size="tiny", seed=0)
    summary = pretrain_checkpoint(checkpoint, "lagllama", tmp_path / "out", steps=15, params=SMALL, batch_size=16)
    assert summary["steps"] == 15
    assert summary["val_loss_last"] < summary["val_loss_first"]
    run = TrainingRun(load_for_training("lagllama", summary["checkpoint"]))
    _, val = corpus_windows(["synthetic", "kernelsynth"], run.geometry, SMALL)
    assert run.eval_loss(batches(val, 16)) == pytest.approx(summary["val_loss_last"], rel=1e-4)


@pytest.mark.slow
def test_models_build_pretrains_the_zoo(capsys: pytest.CaptureFixture[str]) -> None:
    args = ["models", "build", "--only", "lagllama-fm-tiny", "--pretrain-minutes", "0", "--json"]
    code, out, _ = run_cli(args, capsys)
    assert code == 0
    raw = Path(json.loads(out)[0]["checkpoint"])
    initial = (raw / "model.safetensors").read_bytes()
    code, out, err = run_cli(
        ["models", "build", "--only", "lagllama-fm-tiny", "--force", "--pretrain-minutes", "0.05", "--json"], capsys
    )
    assert code == 0, err
    assert json.loads(out)[0]["status"] == "built"
    assert (raw / "model.safetensors").read_bytes() != initial  # trained weights replaced the seeded ones
    model = load_for_training("lagllama", str(raw))
    assert model.forecast([np.linspace(100, 110, 800)], 24, seeds=[0]).mean.shape == (1, 24)
