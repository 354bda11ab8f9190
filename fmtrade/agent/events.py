"""The text-event feed: timestamped headlines or announcements an LLM reasoner may read.

A feed is a JSONL file or an http(s) URL serving JSONL, one :class:`~fmtrade.agent.schemas.Event`
a line (``{"time": "2024-01-05T12:00:00Z", "text": "...", "source": "...", "symbols": ["BTCUSDT"]}``;
no ``symbols`` means market-wide). A decision at time t sees only events published strictly before
t, so a live run and an agent backtest over the same feed see the same news at the same moments.
A bad line is refused with its line number, never skipped silently.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import httpx
from pydantic import ValidationError

from fmtrade.agent.schemas import Event
from fmtrade.errors import InputError

FEED_TIMEOUT_S = 30.0


def utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime (a naive one is taken to be UTC already)."""
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def visible(events: Iterable[Event], at: datetime, symbol: str) -> list[Event]:
    """Events published strictly before ``at`` that concern ``symbol`` or the whole market, oldest first."""
    cutoff = utc(at)
    chosen = [e for e in events if utc(e.time) < cutoff and (not e.symbols or symbol in e.symbols)]
    return sorted(chosen, key=lambda e: utc(e.time))


def parse_lines(lines: Sequence[str], source: str) -> list[Event]:
    """Events from JSONL text; blank lines are allowed, anything else must be a valid event."""
    events = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        field = f"{source}:{number}"
        try:
            event = Event.model_validate(json.loads(line))
        except json.JSONDecodeError as exc:
            raise InputError(field, f"not JSON ({exc.msg})") from None
        except ValidationError as exc:
            first = exc.errors(include_url=False)[0]
            where = ".".join(str(p) for p in first["loc"]) or "line"
            raise InputError(field, f"{where}: {first['msg']}") from None
        events.append(event.model_copy(update={"time": utc(event.time)}))
    return events


def _read(source: str) -> list[str]:
    if source.startswith(("http://", "https://")):
        try:
            response = httpx.get(source, timeout=FEED_TIMEOUT_S, follow_redirects=True)
        except httpx.HTTPError as exc:
            raise InputError("events", f"cannot fetch the event feed {source} ({type(exc).__name__})") from None
        if response.status_code != 200:
            raise InputError("events", f"event feed {source} answered HTTP {response.status_code}")
        return response.text.splitlines()
    path = Path(source).expanduser()
    if not path.is_file():
        raise InputError("events", f"event feed {source} is not a file or an http(s) URL")
    return path.read_text(encoding="utf-8").splitlines()


class EventFeed:
    """All events of one feed, loaded once; :meth:`before` answers what a decision may see."""

    def __init__(self, events: Iterable[Event] = ()) -> None:
        self.events = sorted(events, key=lambda e: utc(e.time))

    @classmethod
    def from_source(cls, source: str) -> EventFeed:
        """Load a JSONL file or http(s) URL."""
        return cls(parse_lines(_read(source), source))

    def before(self, at: datetime, symbol: str) -> list[Event]:
        return visible(self.events, at, symbol)

    def __len__(self) -> int:
        return len(self.events)
