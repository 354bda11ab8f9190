"""A destination that refuses writes (``--out`` under a file, an object store without the bucket)
fails before the work whose results it would hold, in one line naming ``--out`` (the backtest's
cases are in test_backtest_cli.py); a fine-tune whose upload is refused after training keeps its
adapters on local disk and says where."""

from __future__ import annotations

from pathlib import Path

import pytest
import ray

from fmtrade.errors import InputError
from fmtrade.io import check_writable
from fmtrade.train.lora import _upload
from tests.conftest import run_cli


def test_finetune_out_that_refuses_writes_fails_before_training(tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    argv = ["finetune", "--symbols", "BTCUSDT", "--base", "chronos-bolt-fm-tiny", "--out", str(tmp_path / "file" / "a")]
    code, out, err = run_cli(argv, capsys)
    assert code == 2 and out == "" and err.startswith("error: out: cannot write to ") and "not a directory" in err
    assert not ray.is_initialized()


def test_a_writable_destination_is_left_as_it_was(tmp_path, s3_root):
    check_writable(tmp_path / "new" / "run", "out")
    assert list(tmp_path.iterdir()) == []  # probed where it would be created, nothing made
    check_writable(f"{s3_root}/runs/x", "out")
    import s3fs

    assert s3fs.S3FileSystem().find("fmtrade-test") == []


def test_a_refused_adapter_upload_keeps_the_trained_adapters_locally(tmp_path, s3_root):
    adapters = {}
    for name in ("BTCUSDT", "ETHUSDT"):
        directory = tmp_path / "scratch" / name
        directory.mkdir(parents=True)
        (directory / "adapter_model.safetensors").write_bytes(name.encode())
        (directory / "adapter_config.json").write_text("{}")
        adapters[name] = str(directory)
    with pytest.raises(InputError) as caught:
        _upload(adapters, "s3://no-such-bucket/adapters", "chronos-bolt-fm-tiny", tmp_path / "runs")
    assert caught.value.field == "out"
    assert caught.value.reason.startswith("cannot write to s3://no-such-bucket/adapters: ")
    kept = Path(caught.value.reason.rsplit("; the trained adapters are kept in ", 1)[1])
    assert kept.parent == tmp_path / "runs"
    assert sorted(p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()) == [
        "BTCUSDT/adapter_config.json", "BTCUSDT/adapter_model.safetensors",
        "ETHUSDT/adapter_config.json", "ETHUSDT/adapter_model.safetensors",
    ]  # fmt: skip
    assert (kept / "ETHUSDT" / "adapter_model.safetensors").read_bytes() == b"ETHUSDT"
