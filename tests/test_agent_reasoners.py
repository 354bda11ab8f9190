"""The rules reasoner on constructed observations, and the LLM reasoner against a real
OpenAI-compatible HTTP server (tests/fake_openai.py) answering well and badly."""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

import pytest

from fmtrade.agent.cassette import Cassette
from fmtrade.agent.llm import LLMReasoner
from fmtrade.agent.reasoners import RulesReasoner, make_reasoner
from fmtrade.agent.schemas import (
    BookState,
    Derivatives,
    Event,
    ForecastSummary,
    Indicators,
    Observation,
)
from fmtrade.config import AgentSettings, load_settings
from tests.fake_openai import COMPLETION_TOKENS, PROMPT_TOKENS, VALID, FakeOpenAI

FAKE_KEY = "sk-fake-0123456789-SECRET-abcdef"


def observation(
    symbol: str = "BTCUSDT",
    *,
    rsi: float | None = 50.0,
    trend: str | None = "flat",
    imbalance: float | None = 0.0,
    funding: float | None = 0.0,
    expected_return: float | None = 0.0,
    width: float = 0.02,
    events: tuple[Event, ...] = (),
) -> Observation:
    forecast = None
    if expected_return is not None:
        forecast = ForecastSummary(
            horizon=24,
            expected_return=expected_return,
            q10=expected_return - width / 2,
            q50=expected_return,
            q90=expected_return + width / 2,
            disagreement=0.001,
        )
    return Observation(
        symbol=symbol,
        category="linear",
        time=datetime(2024, 1, 5, 12, tzinfo=UTC),
        last_price=43000.0,
        indicators=Indicators(rsi_14=rsi, trend=trend),  # type: ignore[arg-type]
        book=BookState(mid=43000.0, spread_bps=1.0, imbalance=imbalance) if imbalance is not None else None,
        derivatives=Derivatives(funding_rate=funding) if funding is not None else None,
        forecast=forecast,
        events=list(events),
    )


BULLISH = {"rsi": 25.0, "trend": "up", "imbalance": 0.5, "funding": -0.001, "expected_return": 0.02}
BEARISH = {"rsi": 80.0, "trend": "down", "imbalance": -0.5, "funding": 0.001, "expected_return": -0.02}


# Rules -------------------------------------------------------------------------------------------
def test_rules_go_long_on_bullish_signals_and_cite_every_field() -> None:
    record = RulesReasoner().decide(observation(**BULLISH))
    assert record.reasoner == "rules" and record.fallback_reason is None
    assert record.decision.action == "long"
    assert record.decision.conviction == pytest.approx(1.0)  # 1+1+1+1+2 = the maximum score
    text = "\n".join(record.decision.reasons)
    for cited in ("indicators.rsi_14=25.0 < 30", "indicators.trend=up", "book.imbalance=+0.50",
                  "derivatives.funding_rate=-0.00100", "forecast.expected_return=+0.0200"):  # fmt: skip
        assert cited in text


def test_rules_go_short_on_bearish_signals() -> None:
    record = RulesReasoner().decide(observation(**BEARISH))
    assert record.decision.action == "short"
    assert record.decision.conviction == pytest.approx(1.0)
    assert any("overbought" in r for r in record.decision.reasons)
    assert any("crowded longs" in r for r in record.decision.reasons)


def test_rules_hold_on_neutral_or_mixed_signals() -> None:
    neutral = RulesReasoner().decide(observation())
    assert neutral.decision.action == "hold" and neutral.decision.conviction == 0.0
    mixed = RulesReasoner().decide(observation(rsi=25.0, trend="down", imbalance=0.5, funding=0.001))
    assert mixed.decision.action == "hold"  # +1 -1 +1 -1 = 0
    one = RulesReasoner().decide(observation(rsi=25.0))
    assert one.decision.action == "hold" and one.decision.conviction == pytest.approx(1 / 6)


def test_rules_forecast_counts_double_scaled_by_its_band() -> None:
    sharp = RulesReasoner().decide(observation(expected_return=0.01, width=0.02))  # 0.01 >= 0.25 * 0.02
    assert sharp.decision.action == "long" and sharp.decision.conviction == pytest.approx(2 / 6)
    vague = RulesReasoner().decide(observation(expected_return=0.01, width=0.2))  # band 20x the signal
    assert vague.decision.action == "hold"
    assert vague.decision.conviction == pytest.approx(2 * 0.01 / (0.25 * 0.2) / 6)
    small = RulesReasoner().decide(observation(expected_return=0.004))  # within +/-0.5%
    assert small.decision.conviction == 0.0


def test_rules_survive_a_bare_observation_and_ignore_events() -> None:
    bare = observation(rsi=None, trend=None, imbalance=None, funding=None, expected_return=None)
    record = RulesReasoner().decide(bare)
    assert record.decision.action == "hold" and len(record.decision.reasons) == 1
    news = Event(time=datetime(2024, 1, 5, 11, tzinfo=UTC), text="Exchange hacked, withdrawals halted")
    with_news = RulesReasoner().decide(observation(**BULLISH, events=(news,)))
    assert with_news.decision == RulesReasoner().decide(observation(**BULLISH)).decision


def test_make_reasoner_follows_settings(isolated_home) -> None:
    assert isinstance(make_reasoner(load_settings()), RulesReasoner)
    llm = make_reasoner(load_settings(overrides={"agent": {"reasoner": "llm"}}))
    assert isinstance(llm, LLMReasoner) and isinstance(llm.fallback, RulesReasoner)


# LLM ---------------------------------------------------------------------------------------------
def settings_for(fake: FakeOpenAI, **extra: Any) -> AgentSettings:
    return AgentSettings(
        llm_base_url=fake.url, llm_model="fake-model", llm_api_key=FAKE_KEY, llm_timeout_s=0.5, **extra
    )


def test_llm_valid_answer_is_the_decision_with_usage_recorded() -> None:
    with FakeOpenAI(["valid"]) as fake:
        reasoner = LLMReasoner(settings_for(fake, llm_cost_per_1k_prompt=0.01, llm_cost_per_1k_completion=0.03))
        record = reasoner.decide(observation())
    assert record.reasoner == "llm" and record.fallback_reason is None
    assert record.decision.model_dump() == VALID
    assert (record.prompt_tokens, record.completion_tokens) == (PROMPT_TOKENS, COMPLETION_TOKENS)
    assert record.cost == pytest.approx(1.2 * 0.01 + 0.08 * 0.03)
    assert json.loads(record.raw_answer or "") == VALID
    (request,) = fake.requests
    body = request["body"]
    assert body["model"] == "fake-model" and body["temperature"] == 0
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert '"conviction"' in system["content"] and "Never choose prices" in system["content"]
    sent = Observation.model_validate_json(user["content"].removeprefix("Observation:\n"))
    assert sent == observation()
    assert request["headers"]["Authorization"] == f"Bearer {FAKE_KEY}"


BAD = {
    "malformed": "malformed JSON",
    "out_of_range": "conviction",
    "refusal": "refused: I can't help",
    "refusal_text": "refused: no JSON object",
    "price": "price: Extra inputs are not permitted",
    "uncited": "reasons[0] cites no observation field",
    "not_completion": "not a chat completion",
    "429": "HTTP 429",
    "500": "HTTP 500",
    "timeout": "timeout",
}


@pytest.mark.parametrize("kind", sorted(BAD))
def test_llm_bad_answer_is_retried_once_then_the_rules_decide(kind: str) -> None:
    obs = observation(**BULLISH)
    with FakeOpenAI([kind], delay_s=1.5) as fake:
        record = LLMReasoner(settings_for(fake)).decide(obs)
        assert len(fake.requests) == 2  # the answer and one retry, never more
    assert record.reasoner == "llm->rules"
    assert record.decision == RulesReasoner().decide(obs).decision
    reason = record.fallback_reason or ""
    assert reason.startswith("attempt 1: ") and "; attempt 2: " in reason and BAD[kind] in reason
    if kind in ("malformed", "out_of_range", "price", "uncited", "refusal_text", "refusal"):
        assert record.raw_answer  # the rejected text is kept for the journal
        assert record.prompt_tokens == 2 * PROMPT_TOKENS


@pytest.mark.parametrize("first", ["malformed", "429", "timeout"])
def test_llm_retry_that_succeeds_is_the_llm_decision(first: str) -> None:
    with FakeOpenAI([first, "valid"], delay_s=1.5) as fake:
        record = LLMReasoner(settings_for(fake)).decide(observation())
        assert len(fake.requests) == 2
    assert record.reasoner == "llm" and record.decision.model_dump() == VALID
    assert (record.fallback_reason or "").startswith("retried after attempt 1: ")


@pytest.mark.parametrize(
    ("budget", "expected_calls"),
    [
        ({"llm_max_tokens_per_run": 2 * (PROMPT_TOKENS + COMPLETION_TOKENS) - 1}, 2),
        ({"llm_max_cost_per_run": 0.02, "llm_cost_per_1k_prompt": 0.01, "llm_cost_per_1k_completion": 0.03}, 2),
        ({"llm_max_tokens_per_run": 0}, 0),
    ],
)
def test_llm_budget_switches_to_rules_once_spent(budget: dict[str, float], expected_calls: int) -> None:
    with FakeOpenAI(["valid"]) as fake:
        reasoner = LLMReasoner(settings_for(fake, **budget))
        records = [reasoner.decide(observation(**BULLISH)) for _ in range(4)]
        assert len(fake.requests) == expected_calls
    assert [r.reasoner for r in records] == ["llm"] * expected_calls + ["llm->rules"] * (4 - expected_calls)
    for spent in records[expected_calls:]:
        assert spent.fallback_reason == "budget" and spent.prompt_tokens == 0 and spent.cost == 0
        assert spent.decision.action == "long"  # the rules' answer on bullish signals


def test_llm_cassette_records_then_replays_bit_identically_without_the_server(tmp_path) -> None:
    path = tmp_path / "cassette.jsonl"
    observations = [observation("AAAUSDT", **BULLISH), observation("BBBUSDT", **BEARISH), observation("CCCUSDT")]
    with FakeOpenAI(["valid", "malformed", "timeout", "timeout", "valid"], delay_s=1.0) as fake:
        first = [LLMReasoner(settings_for(fake), cassette=Cassette(path)).decide(o) for o in observations]
        assert len(fake.requests) == 5
    assert [r.reasoner for r in first] == ["llm", "llm->rules", "llm"]
    assert len(Cassette(path)) == 3
    # The server is gone: every answer must come from the cassette file.
    replayed = LLMReasoner(settings_for(fake), cassette=Cassette(path))
    second = [replayed.decide(o) for o in observations]
    assert [r.model_dump_json() for r in second] == [r.model_dump_json() for r in first]
    assert replayed.tokens_used == 3 * (PROMPT_TOKENS + COMPLETION_TOKENS)  # the two timeouts used none
    # A different observation is not in the cassette: with the server gone it falls back.
    missing = replayed.decide(observation("DDDUSDT", rsi=10.0))
    assert missing.reasoner == "llm->rules" and "unreachable" in (missing.fallback_reason or "")


def test_llm_key_never_appears_in_logs_records_reprs_or_cassette(tmp_path, caplog) -> None:
    caplog.set_level(logging.DEBUG)
    path = tmp_path / "cassette.jsonl"
    with FakeOpenAI(["valid", "malformed", "refusal", "429", "timeout", "timeout"], delay_s=1.0) as fake:
        settings = settings_for(fake)
        reasoner = LLMReasoner(settings, cassette=Cassette(path))
        records = [reasoner.decide(observation(s, **BULLISH)) for s in ("A", "B", "C")]
        assert all(r["headers"]["Authorization"] == f"Bearer {FAKE_KEY}" for r in fake.requests)
    outputs = [
        caplog.text,
        *(r.model_dump_json() for r in records),
        repr(reasoner),
        repr(settings),
        settings.model_dump_json(),
        path.read_text(),
    ]
    assert [r.reasoner for r in records] == ["llm", "llm->rules", "llm->rules"]
    assert "LLM answer for B unusable" in caplog.text  # the fallbacks were logged...
    for text in outputs:
        assert FAKE_KEY not in text and "SECRET" not in text  # ...without the key


def test_llm_prompt_carries_recent_outcomes_from_the_journal() -> None:
    lines = {"BTCUSDT": ["2024-01-04T12:00Z long conviction 0.8: pnl -1.2%, forecast error +0.9%"]}
    with FakeOpenAI(["valid"]) as fake:
        reasoner = LLMReasoner(settings_for(fake), outcomes=lambda symbol: lines.get(symbol, []))
        reasoner.decide(observation("BTCUSDT"))
        reasoner.decide(observation("ETHUSDT"))
        with_outcomes, without = (r["body"]["messages"][1]["content"] for r in fake.requests)
    assert "Recent outcomes of your decisions on BTCUSDT:\n- 2024-01-04T12:00Z long" in with_outcomes
    assert "Recent outcomes" not in without
