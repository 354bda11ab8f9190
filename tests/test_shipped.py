"""Checkpoints shipped in the package: hash-checked, copied into the zoo by ``models build``, and
only replaced by weights that beat them on validation; plus the pretraining cutoff (``--until``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fmtrade.config import load_settings
from fmtrade.data.corpus import CorpusParams
from fmtrade.data.store import Store
from fmtrade.errors import InputError
from fmtrade.models import shipped
from fmtrade.models.checkpoints import ModelLoadError, stamp_of, verify_hashes
from fmtrade.models.chronos import build_chronos_bolt_checkpoint
from fmtrade.models.registry import active_specs, build_forecaster
from fmtrade.models.zoo import build_zoo
from fmtrade.train.datasets import TRAIN, WindowSpec, _expand
from fmtrade.training import Geometry

NAME = "chronos-bolt-fm-tiny"
CORPUS = "store:BTCUSDT,synthetic"


def training(val_loss: float, steps: int = 10) -> dict:
    return {"arch": "chronos-bolt", "size": "tiny", "corpus": CORPUS, "until": "2022-12-31T00:00:00Z",
            "steps_total": steps, "val_loss_first": 2.0, "val_loss_last": val_loss, "seconds": 1.0}  # fmt: skip


@pytest.fixture
def shipped_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The package's shipped folder redirected to a scratch one (the real one is the product)."""
    folder = tmp_path / "shipped"
    monkeypatch.setattr(shipped, "SHIPPED_DIR", folder)
    return folder


def test_ship_records_hashes_and_refuses_weights_that_do_not_beat_the_shipped(tmp_path, shipped_dir) -> None:
    first = build_chronos_bolt_checkpoint(tmp_path / "first", seed=0)
    path = shipped.ship(first, NAME, training(1.5))
    stamp = stamp_of(path)
    assert stamp["val_loss_last"] == 1.5 and stamp["corpus"] == CORPUS and stamp["steps_total"] == 10
    assert set(stamp["sha256"]) == {"model.safetensors"}
    verify_hashes(path)

    second = build_chronos_bolt_checkpoint(tmp_path / "second", seed=1)
    with pytest.raises(InputError, match="does not beat the shipped 1.5: not shipped"):
        shipped.ship(second, NAME, training(1.6))
    assert stamp_of(shipped.shipped_checkpoint(NAME))["val_loss_last"] == 1.5  # untouched
    shipped.ship(second, NAME, training(1.2, steps=20))
    assert stamp_of(shipped.shipped_checkpoint(NAME))["steps_total"] == 20
    assert not [p for p in shipped_dir.iterdir() if p.name.startswith(".")]  # no staging left


def test_models_build_copies_the_shipped_checkpoint_and_a_damaged_one_is_refused_at_load(
    tmp_path, shipped_dir, isolated_home
) -> None:
    shipped.ship(build_chronos_bolt_checkpoint(tmp_path / "trained", seed=3), NAME, training(1.0))
    [row] = build_zoo(load_settings(), only=[NAME], use_shipped=True)
    assert row["status"] == "shipped"
    zoo_copy = Path(row["checkpoint"])
    spec = next(s for s in active_specs(load_settings()) if s.name == NAME)
    forecast = build_forecaster(spec, load_settings()).forecast([np.linspace(100, 110, 64)], 4)
    assert np.isfinite(forecast.mean).all()

    weights = zoo_copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ModelLoadError, match="model.safetensors: sha256 does not match"):
        build_forecaster(spec, load_settings())
    [rebuilt] = build_zoo(load_settings(), only=[NAME], force=True, use_shipped=True)
    assert rebuilt["status"] == "shipped"
    verify_hashes(zoo_copy)


def test_every_checkpoint_the_package_ships_matches_its_hashes() -> None:
    for folder in sorted(shipped.SHIPPED_DIR.glob("*")) if shipped.SHIPPED_DIR.is_dir() else []:
        stamp = stamp_of(folder)
        assert stamp["sha256"] and "XRPUSDT" not in stamp["corpus"], folder.name  # XRP is held out
        verify_hashes(folder)


def test_until_keeps_only_stored_bars_strictly_before_the_cutoff(tmp_path: Path) -> None:
    index = pd.date_range("2022-12-20", periods=24 * 20, freq="h", tz="UTC")
    closes = 100 + np.arange(index.size, dtype=float)
    bars = pd.DataFrame({"open": closes, "high": closes + 1, "low": closes - 1, "close": closes,
                         "volume": 1.0, "turnover": np.nan}, index=index)  # fmt: skip
    Store(str(tmp_path)).write_bars("spot", "AAAUSDT", "60", bars)
    cutoff = pd.Timestamp("2022-12-31", tz="UTC")
    spec = WindowSpec(Geometry(context=32, horizon=8), CorpusParams(), store_root=str(tmp_path), category="spot",
                      until=cutoff)  # fmt: skip
    rows = _expand({"kind": "store", "seed": 0, "symbol": "AAAUSDT", "id": 0}, spec)
    assert rows and max(float(np.max(r["window"])) for r in rows) < closes[index < cutoff].max() + 1
    assert any(r["part"] == TRAIN for r in rows)
    early = WindowSpec(spec.geometry, CorpusParams(), store_root=str(tmp_path), category="spot",
                       until=pd.Timestamp("2022-01-01", tz="UTC"))  # fmt: skip
    with pytest.raises(InputError, match="until: store:AAAUSDT has no bars before"):
        _expand({"kind": "store", "seed": 0, "symbol": "AAAUSDT", "id": 0}, early)
