"""A damaged parquet partition is found, named and repairable; it is never read as fewer bars.

Faults are injected into real store files (truncation, emptying, wrong schema, duplicate or
misplaced timestamps, NaN prices, a stray file) and the real CLI is run over them.
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fmtrade.data.replay import ReplayServer
from fmtrade.data.store import CorruptPartition, Store
from tests.conftest import run_cli

SERIES = ("linear", "SYNAUSDT", "60")
BARS = "bars/category=linear/symbol=SYNAUSDT/interval=60"


@pytest.fixture(scope="module")
def source(tmp_path_factory) -> Store:
    """A pristine synthetic market: hourly bars in three yearly files (2022 Dec, 2023, 2024 Jan-Feb)."""
    from fmtrade.data.synthetic import SyntheticSpec, synthesize

    store = Store(str(tmp_path_factory.mktemp("pristine")))
    market = synthesize(["SYNAUSDT", "SYNBUSDT"], SyntheticSpec(hours=10_000, start="2022-12-01", seed=3))
    for symbol, bars in market.bars.items():
        store.write_bars("linear", symbol, "60", bars)
        store.write_funding("linear", symbol, market.funding[symbol])
    return store


@pytest.fixture
def damaged(source, tmp_path) -> Store:
    """A copy of the pristine store to damage."""
    shutil.copytree(source.root, tmp_path / "store")
    return Store(str(tmp_path / "store"))


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def rewrite(path: Path, change) -> None:
    """Rewrite a partition with ``change`` applied to its table (the fault, written as valid parquet)."""
    pq.write_table(change(pq.read_table(path)), path)


def cli(capsys, *args: str) -> tuple[int, str, str]:
    return run_cli(list(args), capsys)


def test_truncated_middle_partition_is_named_by_show_and_never_read_as_fewer_bars(capsys, damaged, source):
    middle = Path(damaged.root) / BARS / "2023.parquet"
    truncate(middle)
    code, out, err = cli(capsys, "data", "show", "--symbol", "SYNAUSDT", "--interval", "60", "--store", damaged.root)
    assert code == 2 and out == "" and "Traceback" not in err
    assert str(middle) in err and "unreadable parquet" in err and "magic bytes" in err
    assert "re-import" in err and "--start 2023-01-01T00:00:00Z --end 2023-12-31T23:59:59Z" in err
    with pytest.raises(CorruptPartition) as info:
        damaged.read("SYNAUSDT", "60")
    assert info.value.path == str(middle)
    # a window that does not touch the damaged year is still served, and equals the original
    pd.testing.assert_frame_equal(
        damaged.read("SYNAUSDT", "60", "2024-01-05", "2024-01-06"),
        source.read("SYNAUSDT", "60", "2024-01-05", "2024-01-06"),
    )
    with pytest.raises(CorruptPartition):  # one that does is refused, not shortened
        damaged.read("SYNAUSDT", "60", "2023-12-31", "2024-01-06")
    # the printed fix works: sync that period into an empty store from the exchange and copy the file back
    fix = shlex.split(err.split("`")[3])  # the second `...` span is the re-sync command
    assert fix[:3] == ["fmtrade", "data", "sync"] and fix[-2:] == ["--store", "DIR"]
    middle.rename(middle.with_name(".2023.parquet.bad"))
    with ReplayServer(source, now=source.read("SYNAUSDT", "60").index[-1] + pd.Timedelta(hours=1)) as server:
        args = [*fix[1:-1], str(damaged.root + "-refetch"), "--base-url", server.url, "--json"]
        code, out, err = cli(capsys, *args)
    assert code == 0, err
    shutil.copy(Path(damaged.root + "-refetch") / BARS / "2023.parquet", middle)
    pd.testing.assert_frame_equal(damaged.read("SYNAUSDT", "60"), source.read("SYNAUSDT", "60"))


def test_sync_names_a_truncated_last_partition_and_its_fix_restores_it(capsys, damaged, source):
    last = Path(damaged.root) / BARS / "2024.parquet"
    truncate(last, keep=0.9)
    newest = source.read("SYNAUSDT", "60").index[-1]
    with ReplayServer(source, now=newest + pd.Timedelta(hours=1)) as server:
        base = ["--base-url", server.url, "--store", damaged.root]
        code, out, err = cli(
            capsys, "data", "sync", "--symbols", "SYNAUSDT", "--interval", "60", "--start", "2022-12-01", *base
        )
        assert code == 2 and "Traceback" not in err
        assert str(last) in err and "re-sync" in err
        assert damaged.version("SYNAUSDT", "60")  # nothing was overwritten with fewer bars
        assert last.stat().st_size < (Path(source.root) / BARS / "2024.parquet").stat().st_size
        fix = shlex.split(err.split("`")[1])
        assert fix[:3] == ["fmtrade", "data", "sync"] and "--start" in fix
        last.rename(last.with_name(".2024.parquet.bad"))
        code, out, err = cli(capsys, *fix[1:], *base, "--json")
    assert code == 0, err
    assert json.loads(out)["symbols"][0]["rows"] == 10_000
    pd.testing.assert_frame_equal(damaged.read("SYNAUSDT", "60"), source.read("SYNAUSDT", "60"))


def test_sync_names_a_truncated_middle_partition(capsys, damaged, source):
    middle = Path(damaged.root) / BARS / "2023.parquet"
    truncate(middle, keep=0.99)
    newest = source.read("SYNAUSDT", "60").index[-1]
    with ReplayServer(source, now=newest + pd.Timedelta(hours=1)) as server:
        code, out, err = cli(
            capsys, "data", "sync", "--symbols", "SYNAUSDT", "--interval", "60", "--start", "2022-12-01",
            "--base-url", server.url, "--store", damaged.root,
        )  # fmt: skip
    assert code == 2 and str(middle) in err and "Traceback" not in err


def test_verify_passes_a_sound_store(capsys, source):
    code, out, _ = cli(capsys, "data", "verify", "--store", source.root, "--json")
    doc = json.loads(out)
    assert code == 0 and doc["ok"] and doc["bad"] == []
    assert doc["files"] == 12  # 2 symbols x (3 bar years + 3 funding years)
    assert doc["rows"] == sum(len(source.read(s, "60")) + len(source.read_funding(s)) for s in ("SYNAUSDT", "SYNBUSDT"))


def test_verify_lists_every_bad_file_and_exits_1(capsys, damaged):
    root = Path(damaged.root)
    other = root / "bars/category=linear/symbol=SYNBUSDT/interval=60"
    funding = root / "funding/category=linear/symbol=SYNAUSDT"
    faults = {
        root / BARS / "2023.parquet": ("unreadable parquet", lambda p: truncate(p)),
        root / BARS / "2024.parquet": ("unreadable parquet", lambda p: p.write_bytes(b"")),
        other / "2022.parquet": ("lacks column(s) close", lambda p: rewrite(p, lambda t: t.drop_columns(["close"]))),
        other / "2023.parquet": ("duplicate timestamp", lambda p: rewrite(p, duplicated)),
        other / "2024.parquet": ("NaN in close (1 rows)", lambda p: rewrite(p, nan_close)),
        funding / "2023.parquet": ("not in increasing order", lambda p: rewrite(p, reversed_rows)),
        funding / "2024.parquet": ("outside the period 2024", lambda p: rewrite(p, shifted)),
        other / "backup.parquet": ("not a period file", lambda p: shutil.copy(other / "2022.parquet", p)),
    }  # fmt: skip
    for path, (_, inject) in faults.items():
        inject(path)
    code, out, err = cli(capsys, "data", "verify", "--store", damaged.root, "--json")
    doc = json.loads(out)
    assert code == 1 and not doc["ok"]
    assert {b["path"]: b["problem"] for b in doc["bad"]}.keys() == {str(p) for p in faults}
    for bad in doc["bad"]:
        assert faults[Path(bad["path"])][0] in bad["problem"], bad
        assert bad["fix"]
    assert doc["files"] == 13  # the 12 partitions and the stray file; the sound ones are not listed
    code, out, err = cli(capsys, "data", "verify", "--store", damaged.root)
    assert code == 1 and "8 of 13 file(s) bad" in out and "Traceback" not in err
    assert sorted(line.removeprefix("BAD ") for line in out.splitlines() if line.startswith("BAD ")) == sorted(
        str(p) for p in faults
    )


def nan_close(table: pa.Table) -> pa.Table:
    close = table.column("close").to_numpy().copy()
    close[10] = np.nan
    return table.set_column(table.schema.get_field_index("close"), "close", pa.array(close))


def duplicated(table: pa.Table) -> pa.Table:
    return pa.concat_tables([table, table.slice(5, 2)])


def reversed_rows(table: pa.Table) -> pa.Table:
    return table.take(np.arange(table.num_rows)[::-1])


def shifted(table: pa.Table) -> pa.Table:
    """The last row again, a year later (a row in a file whose name promises another period)."""
    ts = table.column("timestamp").cast(pa.int64()).to_numpy()[-1:] + 366 * 86_400_000
    row = table.slice(table.num_rows - 1, 1)
    return pa.concat_tables(
        [table, row.set_column(0, "timestamp", pa.array(ts).cast(table.schema.field("timestamp").type))]
    )
