"""The documents the agent passes between its stages: what it observed, what a reasoner decided.

These are the contract between observe (fmtrade.agent.observe), decide (fmtrade.agent.reasoners),
risk (fmtrade.agent.risk), the journal and the served ``POST /v1/agent/decide``: every stage reads
and writes these pydantic models, so the journal and the API carry exactly what a stage saw.
Field names are what an LLM reasoner cites in its ``reasons``.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal, Protocol

from pydantic import BaseModel, ConfigDict, Field

Action = Literal["long", "short", "hold"]


class Indicators(BaseModel):
    """Technical state from the bars up to the decision time (computed with the ``ta`` library)."""

    model_config = ConfigDict(extra="forbid")

    rsi_14: float | None = None
    sma_20: float | None = None
    sma_50: float | None = None
    trend: Literal["up", "down", "flat"] | None = None  # sma_20 vs sma_50
    volatility_24h: float | None = None  # std of the last 24 hourly log returns (not annualised)
    return_1h: float | None = None
    return_24h: float | None = None
    volume_z: float | None = None  # last bar's volume vs the last 50 bars, in standard deviations


class BookState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    mid: float
    spread_bps: float
    imbalance: float  # (bid volume - ask volume) / (bid + ask), in [-1, 1]
    synthetic: bool = False  # the replay server's book is synthesised, and says so


class Derivatives(BaseModel):
    """Perpetual-only state (None on spot)."""

    model_config = ConfigDict(extra="forbid")

    funding_rate: float | None = None
    open_interest_change_24h: float | None = None  # relative change


class ForecastSummary(BaseModel):
    """The ensemble's view of the horizon return, from the served API or computed in-process."""

    model_config = ConfigDict(extra="forbid")

    horizon: int
    expected_return: float  # mean path's return at the horizon vs the last close
    q10: float  # horizon-return quantiles
    q50: float
    q90: float
    disagreement: float  # member medians' spread at the horizon, relative to the last close
    var_95: float | None = None  # loss quantile of the horizon return (positive = loss)
    es_95: float | None = None
    members: list[str] = Field(default_factory=list)


class PortfolioState(BaseModel):
    model_config = ConfigDict(extra="forbid")

    equity: float
    cash: float
    position_qty: float = 0.0  # this symbol's signed quantity
    position_notional: float = 0.0
    gross_exposure: float = 0.0  # all symbols, |notional| / equity


class Event(BaseModel):
    """A timestamped text item (headline, announcement) from the configured feed."""

    model_config = ConfigDict(extra="forbid")

    time: datetime
    text: str = Field(max_length=2000)
    source: str | None = None
    symbols: list[str] = Field(default_factory=list)  # empty: market-wide


class Observation(BaseModel):
    """Everything a reasoner may use for one symbol at one decision time, and nothing after it."""

    model_config = ConfigDict(extra="forbid")

    symbol: str
    category: str
    time: datetime  # the decision time: every input is from strictly before it
    last_price: float
    indicators: Indicators
    book: BookState | None = None
    derivatives: Derivatives | None = None
    forecast: ForecastSummary | None = None
    portfolio: PortfolioState | None = None
    events: list[Event] = Field(default_factory=list)


class Decision(BaseModel):
    """A reasoner's answer. It never carries a price or a size: risk sizes it from ``conviction``."""

    model_config = ConfigDict(extra="forbid")

    action: Action
    conviction: float = Field(ge=0.0, le=1.0)
    reasons: list[str] = Field(min_length=1, max_length=12)


class DecisionRecord(BaseModel):
    """A decision with how it was reached: which reasoner answered, and why a fallback happened."""

    model_config = ConfigDict(extra="forbid")

    symbol: str
    decision: Decision
    reasoner: str  # "rules" | "llm" | "llm->rules" (fell back)
    fallback_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    raw_answer: str | None = None  # the LLM's text as received (journaled; never a key)


class Reasoner(Protocol):
    """Turns an observation into a decision. Deterministic for ``rules``; the LLM's falls back to it."""

    name: str

    def decide(self, observation: Observation) -> DecisionRecord: ...
