"""Fake secrets to set in a test's environment, and a scan for them in everything a run wrote."""

from __future__ import annotations

import uuid
from pathlib import Path

SECRETS = {
    "FMTRADE_API_TOKEN": f"fake-api-token-{uuid.uuid4().hex}",
    "FMTRADE_SERVE__API_TOKEN": f"fake-serve-token-{uuid.uuid4().hex}",
    "FMTRADE_AGENT__API_KEY": f"fake-bybit-key-{uuid.uuid4().hex}",
    "FMTRADE_AGENT__API_SECRET": f"fake-bybit-secret-{uuid.uuid4().hex}",
    "AWS_SECRET_ACCESS_KEY": f"fake-aws-secret-{uuid.uuid4().hex}",
}


def leaks(roots: list[Path], texts: dict[str, str]) -> list[str]:
    """Where a secret of :data:`SECRETS` appears: a file under ``roots`` or a labelled output text."""
    found = []
    for root in roots:
        for path in [root] if root.is_file() else root.rglob("*"):
            if path.is_file() and not path.is_symlink():
                try:
                    data = path.read_bytes()
                except OSError:
                    continue
                found += [f"{path}: {name}" for name, value in SECRETS.items() if value.encode() in data]
    for label, text in texts.items():
        found += [f"{label}: {name}" for name, value in SECRETS.items() if value in text]
    return found
