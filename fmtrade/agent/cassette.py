"""A cassette of LLM exchanges, so an agent backtest re-runs bit-identically and costs nothing.

The first run records what the endpoint answered under a key of the exact request (model and
messages); later runs replay the answer for the same key without calling anyone. The file is JSONL
(one ``{"key", "answer"}`` a line, human-readable for an audit) and is rewritten atomically on
every new entry, so a run killed mid-way leaves the previous complete cassette, never half a line.
"""

from __future__ import annotations

import hashlib
import json
import threading
from pathlib import Path
from typing import Any

from fmtrade.errors import InputError
from fmtrade.io import write_text_atomic


def exchange_key(model: str, messages: list[dict[str, str]]) -> str:
    """sha256 of the request that decides the answer (canonical JSON of model and messages)."""
    canonical = json.dumps({"model": model, "messages": messages}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


class Cassette:
    """Answers by request key, backed by a JSONL file (created on the first ``put``)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path).expanduser()
        self._answers: dict[str, Any] = {}
        self._lock = threading.Lock()
        if self.path.exists():
            self._answers.update(_entries(self.path.read_text(encoding="utf-8"), str(self.path)))

    def get(self, key: str) -> Any | None:
        return self._answers.get(key)

    def put(self, key: str, answer: Any) -> None:
        with self._lock:
            self._answers[key] = answer
            self._write()

    def merge(self, text: str, origin: str = "recorded") -> None:
        """Add the entries of another cassette's JSONL ``text`` that this one lacks (one write)."""
        with self._lock:
            for key, answer in _entries(text, origin):
                self._answers.setdefault(key, answer)
            self._write()

    def _write(self) -> None:
        lines = (json.dumps({"key": k, "answer": a}, sort_keys=True) for k, a in self._answers.items())
        write_text_atomic(self.path, "".join(f"{line}\n" for line in lines))

    def __len__(self) -> int:
        return len(self._answers)


def _entries(text: str, origin: str) -> list[tuple[str, Any]]:
    """The ``(key, answer)`` entries of a cassette's JSONL text; a bad line names ``origin:line``."""
    entries = []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
            entries.append((str(entry["key"]), entry["answer"]))
        except (json.JSONDecodeError, KeyError, TypeError):
            raise InputError(f"cassette {origin}:{number}", "not a cassette entry") from None
    return entries
