"""The real-market sample shipped in the package: intact, valid, and imported like any exchange dump."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from fmtrade.data import sample
from fmtrade.data.store import Store
from fmtrade.errors import DataError, InputError
from tests.conftest import run_cli


def test_every_shipped_symbol_imports_through_the_importers_validation(tmp_path: Path) -> None:
    store = Store(str(tmp_path / "store"))
    results = sample.import_sample(store)
    assert sorted(r.symbol for r in results) == ["BNBUSDT", "BTCUSDT", "ETHUSDT", "SOLUSDT", "XRPUSDT"]
    for result in results:
        bars = store.read(result.symbol, "60", category="spot")
        assert result.new_bars == len(bars) > 23_900
        assert pd.Timestamp("2021-04-04", tz="UTC") <= bars.index[0] < pd.Timestamp("2021-04-05", tz="UTC")
        assert bars.index[-1] >= pd.Timestamp("2023-12-30", tz="UTC")
        gaps = store.gaps(result.symbol, "60", category="spot")
        assert len(gaps) == 5 and max(g.missing_bars for g in gaps) <= 5  # the real outages, kept
    assert sample.import_sample(store, ["BTCUSDT"])[0].new_bars == 0  # a second import adds nothing


def test_a_symbol_not_shipped_is_refused_by_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="symbols: DOGEUSDT is not in the sample"):
        sample.import_sample(Store(str(tmp_path)), ["BTCUSDT", "DOGEUSDT"])
    assert not (tmp_path / "spot").exists()  # checked before anything is written


def test_a_damaged_file_fails_its_checksum_before_import(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    damaged = tmp_path / "sample"
    shutil.copytree(sample.SAMPLE_DIR, damaged)
    data = bytearray((damaged / "XRPUSDT.parquet").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (damaged / "XRPUSDT.parquet").write_bytes(bytes(data))
    monkeypatch.setattr(sample, "SAMPLE_DIR", damaged)
    with pytest.raises(DataError, match="XRPUSDT.parquet: sha256 does not match"):
        sample.import_sample(Store(str(tmp_path / "store")), ["XRPUSDT"])


def test_cli_imports_the_chosen_symbols_and_refuses_unknown_ones(tmp_path: Path, capsys) -> None:
    store = str(tmp_path / "store")
    code, out, _ = run_cli(["data", "sample", "--symbols", "XRPUSDT", "--store", store, "--json"], capsys)
    assert code == 0
    [row] = json.loads(out)
    assert (row["symbol"], row["category"], row["interval"], row["new_bars"]) == ("XRPUSDT", "spot", "60", 23988)
    code, _, err = run_cli(["data", "sample", "--symbols", "XRPUSDT,NOPE", "--store", store], capsys)
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: symbols: NOPE is not in the sample")
