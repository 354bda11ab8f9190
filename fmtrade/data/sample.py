"""The real-market sample shipped in the package (``fmtrade/data/binance_spot_1h``: Binance spot
hourly bars of five symbols, 2021-04 to 2023-12; provenance in the README beside the files).

Every file is checked against ``SHA256SUMS`` and then imported through :func:`import_file`, the
same validation a user's exchange dump gets, so a damaged install cannot put bad bars in a store.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from fmtrade.data.importer import ImportResult, import_file
from fmtrade.data.store import Store
from fmtrade.errors import DataError, InputError

SAMPLE_DIR = Path(__file__).with_name("binance_spot_1h")
SAMPLE_CATEGORY, SAMPLE_INTERVAL = "spot", "60"


def _checksums() -> dict[str, str]:
    lines = (SAMPLE_DIR / "SHA256SUMS").read_text().splitlines()
    return {name.removesuffix(".parquet"): digest for digest, name in (line.split() for line in lines if line)}


def sample_symbols() -> list[str]:
    """The symbols the package ships, in the order of its checksum file."""
    return list(_checksums())


def sample_file(symbol: str) -> Path:
    """The shipped file of ``symbol`` after its sha256 matched; InputError for a symbol not shipped."""
    checksums = _checksums()
    if symbol not in checksums:
        raise InputError("symbols", f"{symbol} is not in the sample (it holds {', '.join(checksums)})")
    path = SAMPLE_DIR / f"{symbol}.parquet"
    if hashlib.sha256(path.read_bytes()).hexdigest() != checksums[symbol]:
        raise DataError(f"{path}: sha256 does not match SHA256SUMS (a damaged install: reinstall fmtrade)")
    return path


def import_sample(store: Store, symbols: list[str] | None = None) -> list[ImportResult]:
    """Import ``symbols`` (default: all five) into ``store`` as spot hourly bars."""
    chosen = symbols or sample_symbols()
    paths = {symbol: sample_file(symbol) for symbol in chosen}  # every check before any write
    return [import_file(store, path, symbol, SAMPLE_INTERVAL, SAMPLE_CATEGORY) for symbol, path in paths.items()]
