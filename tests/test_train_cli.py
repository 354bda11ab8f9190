"""``fmtrade pretrain`` / ``fmtrade finetune`` reject bad input with one line and exit code 2 (before Ray starts)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.conftest import run_cli


@pytest.mark.parametrize(
    ("argv", "field"),
    [
        (["pretrain", "--arch", "prophet", "--steps", "5"], "arch"),
        (["pretrain", "--arch", "chronos-bolt"], "steps"),
        (["pretrain", "--arch", "chronos-bolt", "--steps", "5", "--minutes", "1"], "steps"),
        (["pretrain", "--arch", "chronos-bolt", "--steps", "5", "--corpus", "synthetic,nope"], "corpus"),
        (["pretrain", "--arch", "chronos-bolt", "--steps", "5", "--size", "huge"], "size"),
    ],
)
def test_pretrain_bad_input(argv: list[str], field: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli([*argv, "--out", str(tmp_path / "out")], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and field in err and "Traceback" not in err


def test_pretrain_refuses_an_existing_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(["pretrain", "--arch", "lagllama", "--steps", "5", "--out", str(tmp_path)], capsys)
    assert code == 2 and "out" in err and "already exists" in err


@pytest.mark.parametrize(
    ("extra", "field"),
    [
        (["--base", "random-walk"], "base"),
        (["--base", "no-such-model"], "base"),
        (["--base", "chronos-bolt-fm-tiny", "--mode", "sideways"], "mode"),
        (["--base", "chronos-bolt-fm-tiny", "--rank", "0"], "rank"),
        (["--base", "chronos-bolt-fm-tiny", "--val-start", "not-a-date"], "val_start"),
        (["--base", "chronos-bolt-fm-tiny", "--tune", "--tune-ranks", "0,4"], "tune_ranks"),
        (["--base", "chronos-bolt-fm-tiny", "--tune", "--tune-lrs", "fast"], "tune_lrs"),
        (["--base", "chronos-bolt-fm-tiny", "--tune", "--tune-lrs", "-1e-3"], "tune_lrs"),
    ],
)
def test_finetune_bad_input(extra: list[str], field: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run_cli(["finetune", "--symbols", "BTCUSDT", *extra, "--json"], capsys)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and field in err and "Traceback" not in err
