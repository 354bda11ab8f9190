"""Training corpora: KernelSynth, the time-based split (no validation target leaks into training)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from fmtrade.data.corpus import CorpusParams, Series, corpus_sources, parse_corpus, source_series, split_windows
from fmtrade.data.kernelsynth import kernel_synth
from fmtrade.errors import InputError


def test_kernel_synth_is_seeded_and_varied() -> None:
    a = kernel_synth(6, length=256, seed=3)
    assert a.shape == (6, 256) and np.isfinite(a).all()
    np.testing.assert_array_equal(a, kernel_synth(6, length=256, seed=3))
    assert not np.allclose(a, kernel_synth(6, length=256, seed=4))
    assert len({round(float(s), 6) for s in a.std(axis=1)}) == 6  # different kernel compositions per series


def test_split_keeps_a_gap_and_no_validation_target_in_training() -> None:
    values = np.arange(1000, dtype=np.float64)  # each value is its own index
    context, horizon, split = 64, 16, 800
    train, val = split_windows(Series(values, split), context, horizon, stride=8)
    assert len(train) and len(val)
    assert train.max() < split - horizon  # train windows end a full horizon before the split
    assert val[:, context:].min() >= split  # every validation target lies after the split
    assert train.shape[1] == val.shape[1] == context + horizon
    with pytest.raises(InputError, match="gap"):
        split_windows(Series(values, split), context, horizon, stride=8, gap=horizon - 1)


def test_few_shot_limits_training_targets_to_the_last_bars() -> None:
    values = np.arange(1000, dtype=np.float64)
    context, horizon, split = 64, 16, 800
    train, _ = split_windows(Series(values, split), context, horizon, stride=4, max_train_bars=100)
    targets = train[:, context:]
    assert targets.min() >= split - horizon - 100 and targets.max() < split - horizon


def test_stored_series_is_cut_before_the_test_period() -> None:
    index = pd.date_range("2022-01-01", periods=2000, freq="h", tz="UTC")
    closes = pd.Series(np.arange(2000, dtype=np.float64), index=index)
    start = index[1500]
    (series,) = source_series({"kind": "store", "seed": 0, "symbol": "X"}, closes=closes, val_start=start)
    assert series.values.size == 1500  # nothing from the test period
    assert series.split == 1500 - 150  # the last 10% before it validates


def test_corpus_items_are_validated() -> None:
    assert parse_corpus(["synthetic", "store:BTCUSDT", "synthetic"]) == ["synthetic", "store:BTCUSDT"]
    for bad in (["nope"], ["store:"], ["synthetic:X"], []):
        with pytest.raises(InputError, match="corpus"):
            parse_corpus(bad)
    sources = corpus_sources(["synthetic", "kernelsynth"], CorpusParams(markets=2, kernel_batches=3))
    assert [s["kind"] for s in sources] == ["synthetic"] * 2 + ["kernelsynth"] * 3
    assert len({s["seed"] for s in sources if s["kind"] == "synthetic"}) == 2
