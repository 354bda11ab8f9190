"""Atomic file writes: nothing on disk is ever left half written.

Local paths are written to a temporary file in the destination directory and
renamed over the target (rename is atomic on POSIX). Object stores (s3://...)
publish an object only when its upload completes, so a plain fsspec write is
already all-or-nothing there.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, TypeAlias

import fsspec
import pyarrow as pa
import pyarrow.parquet as pq

from fmtrade.errors import InputError, first_line

if TYPE_CHECKING:  # only run directories need universal-pathlib; a lean install (make gpu-check) lacks it
    from upath import UPath

#: A local path, or an object-store URI / path object (``s3://bucket/key``).
Target: TypeAlias = "str | os.PathLike[str] | UPath"


def is_remote(uri: Target) -> bool:
    """True for fsspec URIs with a non-local protocol (s3://, gs://, memory://...)."""
    text = str(uri)
    return "://" in text and not text.startswith("file://")


def atomic_write(path: Target, writer: Callable[[IO[bytes]], Any]) -> None:
    """Call ``writer`` with a binary file object and publish the result atomically at ``path``."""
    text = str(path)
    if is_remote(text):
        with fsspec.open(text, "wb") as handle:
            writer(handle)
        return
    target = Path(text.removeprefix("file://"))
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            writer(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: Target, data: bytes) -> None:
    atomic_write(path, lambda handle: handle.write(data))


def write_text_atomic(path: Target, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: Target, obj: Any, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(obj, indent=indent, default=str) + "\n")


def write_parquet_atomic(path: Target, table: pa.Table) -> None:
    atomic_write(path, lambda handle: pq.write_table(table, handle))


PROBE = ".fmtrade-write-probe"


def write_failure(target: Target, exc: BaseException) -> str:
    """``cannot write to <target>: <the error's first line>`` (an object store's refusal, a full disk)."""
    return f"cannot write to {target}: {first_line(exc)}"


def check_writable(target: Target, field: str) -> None:
    """Write and delete a small object under the directory ``target``, so a
    destination that refuses writes fails before the work whose results it would hold, with
    :class:`InputError` naming ``field``. Any failure counts: object-store clients raise their own
    types (missing credentials, an unknown bucket) besides OSError."""
    text = str(target)
    try:
        if is_remote(text):
            fs, root = fsspec.core.url_to_fs(text)
            fs.pipe_file(f"{root.rstrip('/')}/{PROBE}", b"")
            fs.rm_file(f"{root.rstrip('/')}/{PROBE}")
        else:  # probed where it would be created, so a run that fails leaves no empty directory
            directory = Path(text.removeprefix("file://")).expanduser()
            existing = next(p for p in (directory, *directory.parents) if p.exists())
            if not existing.is_dir():
                raise NotADirectoryError(f"{existing} is not a directory")
            with tempfile.TemporaryFile(prefix=PROBE, dir=existing):
                pass
    except Exception as exc:
        raise InputError(field, write_failure(target, exc)) from None


@contextmanager
def writes_to(target: Target, field: str) -> Iterator[None]:
    """Turn a write under ``target`` that fails after :func:`check_writable` passed (a full disk,
    a revoked key) into :class:`InputError` naming ``field``."""
    try:
        yield
    except OSError as exc:
        raise InputError(field, write_failure(target, exc)) from None


def upload_dir(local: Path, uri: str, last: str) -> str:
    """Copy the directory ``local`` to ``uri`` on an object store, replacing what was there, with the
    file named ``last`` uploaded after every other: an object store publishes each object whole but
    not a set of them, so a reader that finds ``last`` finds the rest complete. Returns ``uri``."""
    fs, root = fsspec.core.url_to_fs(uri)
    if fs.exists(root):
        fs.rm(root, recursive=True)
    files = sorted((p for p in local.rglob("*") if p.is_file()), key=lambda p: (p.name == last, str(p)))
    for path in files:
        fs.put_file(str(path), f"{root}/{path.relative_to(local).as_posix()}")
    return uri


def write_dir_atomic(path: str | os.PathLike[str], writer: Callable[[Path], Any]) -> Path:
    """Let ``writer`` fill a scratch directory beside ``path`` and rename it to ``path`` when complete
    (model checkpoints: several files that only make sense together). ``path`` must not exist yet."""
    target = Path(path)
    if target.exists():
        raise FileExistsError(f"{target} already exists")
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{target.name}.", dir=target.parent) as tmp:
        build = Path(tmp) / target.name
        build.mkdir()
        writer(build)
        build.rename(target)
    return target
