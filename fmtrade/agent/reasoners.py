"""The deterministic ``rules`` reasoner and :func:`make_reasoner`.

The rules are the seed chapter's signal scoring (its section 2.6) plus the ensemble forecast: each
signal adds or subtracts points, the total picks the action, its size the conviction. Every point
is explained by a reason that names the observation field it came from, so a journaled rules
decision reads like the LLM's must. The rules ignore text events (only an LLM can read them).
It is also every LLM decision's fallback, so it must never fail on a partial observation: a
missing input scores nothing and says so.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from fmtrade.agent.schemas import Action, Decision, DecisionRecord, Observation

if TYPE_CHECKING:
    from fmtrade.agent.llm import Cassette
    from fmtrade.agent.schemas import Reasoner
    from fmtrade.config import Settings

RSI_OVERSOLD, RSI_OVERBOUGHT = 30.0, 70.0
IMBALANCE_EDGE = 0.2
FUNDING_CROWDED = 0.0005  # per settlement: longs (> 0) or shorts (< 0) pay a crowded-trade premium
FORECAST_EDGE = 0.005  # expected horizon return that counts as a forecast signal
FORECAST_POINTS = 2.0  # the forecast counts double
FORECAST_SHARP_RATIO = 0.25  # full weight once |expected return| >= this x the q10..q90 width
MAX_SCORE = 4.0 + FORECAST_POINTS  # trend, RSI, book, funding, forecast
ACTION_SCORE = 2.0  # |score| at which the rules take a side


def _trend(obs: Observation) -> tuple[float, str | None]:
    trend = obs.indicators.trend
    if trend is None:
        return 0.0, None
    points = {"up": 1.0, "down": -1.0, "flat": 0.0}[trend]
    return points, f"indicators.trend={trend} (sma_20 vs sma_50): {points:+g}"


def _rsi(obs: Observation) -> tuple[float, str | None]:
    rsi = obs.indicators.rsi_14
    if rsi is None:
        return 0.0, None
    if rsi < RSI_OVERSOLD:
        return 1.0, f"indicators.rsi_14={rsi:.1f} < {RSI_OVERSOLD:g}: oversold, +1"
    if rsi > RSI_OVERBOUGHT:
        return -1.0, f"indicators.rsi_14={rsi:.1f} > {RSI_OVERBOUGHT:g}: overbought, -1"
    return 0.0, f"indicators.rsi_14={rsi:.1f} within [{RSI_OVERSOLD:g}, {RSI_OVERBOUGHT:g}]: 0"


def _book(obs: Observation) -> tuple[float, str | None]:
    if obs.book is None:
        return 0.0, None
    imbalance = obs.book.imbalance
    if abs(imbalance) <= IMBALANCE_EDGE:
        return 0.0, f"book.imbalance={imbalance:+.2f} within +/-{IMBALANCE_EDGE:g}: 0"
    points = 1.0 if imbalance > 0 else -1.0
    side = "bids" if points > 0 else "asks"
    return points, f"book.imbalance={imbalance:+.2f} beyond +/-{IMBALANCE_EDGE:g}: {side} dominate, {points:+g}"


def _funding(obs: Observation) -> tuple[float, str | None]:
    rate = obs.derivatives.funding_rate if obs.derivatives else None
    if rate is None:
        return 0.0, None
    if rate > FUNDING_CROWDED:
        return -1.0, f"derivatives.funding_rate={rate:.5f} > {FUNDING_CROWDED:g}: crowded longs, -1"
    if rate < -FUNDING_CROWDED:
        return 1.0, f"derivatives.funding_rate={rate:.5f} < -{FUNDING_CROWDED:g}: crowded shorts, +1"
    return 0.0, f"derivatives.funding_rate={rate:.5f} within +/-{FUNDING_CROWDED:g}: 0"


def _forecast(obs: Observation) -> tuple[float, str | None]:
    fc = obs.forecast
    if fc is None:
        return 0.0, None
    er = fc.expected_return
    if abs(er) <= FORECAST_EDGE:
        return 0.0, f"forecast.expected_return={er:+.4f} within +/-{FORECAST_EDGE:g}: 0"
    width = max(fc.q90 - fc.q10, 1e-12)
    sharpness = min(1.0, abs(er) / (FORECAST_SHARP_RATIO * width))
    points = FORECAST_POINTS * sharpness * (1.0 if er > 0 else -1.0)
    return points, (
        f"forecast.expected_return={er:+.4f} beyond +/-{FORECAST_EDGE:g} over {fc.horizon} bars, "
        f"forecast.q10..q90 width {width:.4f}: {points:+.2f}"
    )


SIGNALS = (_trend, _rsi, _book, _funding, _forecast)


def action_of(score: float) -> Action:
    if score >= ACTION_SCORE:
        return "long"
    if score <= -ACTION_SCORE:
        return "short"
    return "hold"


class RulesReasoner:
    """Deterministic scoring; the default reasoner and every LLM decision's fallback."""

    name = "rules"

    def decision(self, observation: Observation) -> Decision:
        scored = [signal(observation) for signal in SIGNALS]
        score = sum(points for points, _ in scored)
        reasons = [reason for _, reason in scored if reason is not None]
        action = action_of(score)
        reasons.append(f"score {score:+.2f} of +/-{MAX_SCORE:g} (side at +/-{ACTION_SCORE:g}): {action}")
        return Decision(action=action, conviction=min(1.0, abs(score) / MAX_SCORE), reasons=reasons)

    def decide(self, observation: Observation) -> DecisionRecord:
        return DecisionRecord(symbol=observation.symbol, decision=self.decision(observation), reasoner=self.name)


def make_reasoner(settings: Settings, cassette: Cassette | None = None) -> Reasoner:
    """The configured reasoner (``settings.agent.reasoner``); ``cassette`` records/replays LLM answers."""
    if settings.agent.reasoner == "llm":
        from fmtrade.agent.llm import LLMReasoner

        return LLMReasoner(settings.agent, fallback=RulesReasoner(), cassette=cassette)
    return RulesReasoner()
