"""The ``llm`` reasoner: any OpenAI-compatible chat completions endpoint decides, under rules.

The prompt carries the observation as JSON and the JSON schema of
:class:`~fmtrade.agent.schemas.Decision`; the answer must be that JSON and nothing more (no price,
no size: the schema forbids extra fields), and every reason must cite an observation field by its
path. An answer that is late, refused, malformed, out of range, uncited or an HTTP error is retried
once, then replaced by the rules decision; the record says ``llm->rules``, why, and keeps the raw
answer. Tokens and cost are counted per decision, and once the run's budget is spent the rules
decide without asking. The API key travels only in the Authorization header of the request.

With a :class:`~fmtrade.agent.cassette.Cassette` every exchange is recorded on the first run and
replayed on later ones, so an agent backtest re-runs bit-identically without calling the endpoint.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import httpx
from pydantic import BaseModel, ValidationError

from fmtrade.agent.cassette import Cassette, exchange_key
from fmtrade.agent.reasoners import RulesReasoner
from fmtrade.agent.schemas import Decision, DecisionRecord, Observation, Reasoner
from fmtrade.config import AgentSettings

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 2  # the first answer and one retry
RETRY_WAIT_CAP_S = 5.0  # longest Retry-After honoured before the retry
RAW_LIMIT = 4000  # characters of an answer kept in the record

SYSTEM_PROMPT = """You are the decision step of a crypto trading agent.
You receive one observation of one symbol as JSON. Answer with one JSON object only, no prose,
valid against this JSON schema:
{schema}
Rules:
- action is "long", "short" or "hold"; conviction is a number from 0 to 1.
- Never choose prices, sizes, leverage or orders: a separate risk layer sizes the position from conviction.
- Every reason must cite the observation fields it relies on by their path and value,
  e.g. "indicators.rsi_14=27.1 < 30: oversold" or "forecast.expected_return=+0.012 with forecast.q10=-0.01".
- Use only the observation. The events are the only news you know; all were published before its time."""


def field_paths(model: type[BaseModel], prefix: str = "") -> set[str]:
    """Dotted paths of a model's fields, nested models included (``indicators.rsi_14``, ...)."""
    paths = set()
    for name, info in model.model_fields.items():
        path = f"{prefix}{name}"
        paths.add(path)
        for arg in (info.annotation, *getattr(info.annotation, "__args__", ())):
            if isinstance(arg, type) and issubclass(arg, BaseModel):
                paths |= field_paths(arg, f"{path}.")
    return paths


_ALL_PATHS = field_paths(Observation)
# What counts as citing a field: a dotted path, or a name distinctive enough (rsi_14, last_price).
CITABLE = tuple(sorted(p for p in _ALL_PATHS | {p.rsplit(".", 1)[-1] for p in _ALL_PATHS} if "." in p or "_" in p))
_CITATION = re.compile(r"(?<![\w.])(" + "|".join(re.escape(p) for p in sorted(CITABLE, key=len, reverse=True)) + r")\b")


def cites_a_field(reason: str) -> bool:
    return _CITATION.search(reason) is not None or re.search(r"(?<![\w.])events\b", reason) is not None


@dataclass(frozen=True)
class Attempt:
    """One exchange with the endpoint as the cassette keeps it: the answer, or why there is none."""

    text: str | None = None
    refusal: str | None = None
    finish_reason: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    error: str | None = None  # transport or HTTP failure
    wait_s: float = 0.0  # the server's Retry-After


def judge(attempt: Attempt) -> tuple[Decision | None, str]:
    """The decision in an answer, or None and why it is unusable."""
    if attempt.error is not None:
        return None, attempt.error
    if attempt.refusal:
        return None, f"refused: {attempt.refusal[:200]}"
    if attempt.finish_reason == "content_filter":
        return None, "refused: content filter"
    text = (attempt.text or "").strip()
    start, end = text.find("{"), text.rfind("}")
    if start < 0:
        return None, f"refused: no JSON object in the answer ({text[:80]!r})" if text else "refused: empty answer"
    try:
        data = json.loads(text[start : end + 1] if end > start else text[start:])
    except json.JSONDecodeError as exc:
        return None, f"malformed JSON: {exc.msg} at {exc.pos}"
    try:
        decision = Decision.model_validate(data)
    except ValidationError as exc:
        first = exc.errors(include_url=False)[0]
        where = ".".join(str(p) for p in first["loc"]) or "answer"
        return None, f"invalid decision: {where}: {first['msg']}"
    uncited = [i for i, reason in enumerate(decision.reasons) if not cites_a_field(reason)]
    if uncited:
        return None, f"invalid decision: reasons[{uncited[0]}] cites no observation field"
    return decision, "ok"


def _retry_after(response: httpx.Response) -> float:
    try:
        return min(max(float(response.headers.get("retry-after", 0)), 0.0), RETRY_WAIT_CAP_S)
    except ValueError:
        return 0.0


def parse_completion(response: httpx.Response) -> Attempt:
    """An HTTP answer as an :class:`Attempt` (never raises: a bad body is a failed attempt)."""
    if response.status_code != 200:
        return Attempt(error=f"HTTP {response.status_code} from the LLM endpoint", wait_s=_retry_after(response))
    try:
        payload = response.json()
        choice = payload["choices"][0]
        message = choice["message"]
        usage = payload.get("usage") or {}
        return Attempt(
            text=message.get("content"),
            refusal=message.get("refusal"),
            finish_reason=choice.get("finish_reason"),
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
        )
    except (ValueError, KeyError, IndexError, TypeError, AttributeError):
        return Attempt(text=response.text[:RAW_LIMIT], error="the endpoint's answer is not a chat completion")


class LLMReasoner:
    """Asks an OpenAI-compatible endpoint; falls back to ``fallback`` (the rules) on any bad answer."""

    name = "llm"

    def __init__(
        self,
        settings: AgentSettings,
        fallback: Reasoner | None = None,
        *,
        cassette: Cassette | None = None,
        outcomes: Callable[[str], Sequence[str]] | None = None,
    ) -> None:
        """``outcomes(symbol)`` gives lines on recent decisions' results for the prompt (the journal)."""
        self.settings = settings
        self.fallback = fallback or RulesReasoner()
        self.cassette = cassette
        self.outcomes = outcomes
        self.tokens_used = 0
        self.cost_used = 0.0
        self._lock = threading.Lock()
        self._http = httpx.Client()
        self._system = SYSTEM_PROMPT.format(schema=json.dumps(Decision.model_json_schema(), sort_keys=True))

    def close(self) -> None:
        self._http.close()

    def messages(self, observation: Observation) -> list[dict[str, str]]:
        user = f"Observation:\n{observation.model_dump_json()}"
        recent = list(self.outcomes(observation.symbol)) if self.outcomes else []
        if recent:
            user += f"\nRecent outcomes of your decisions on {observation.symbol}:\n" + "\n".join(
                f"- {line}" for line in recent
            )
        return [{"role": "system", "content": self._system}, {"role": "user", "content": user}]

    def exhausted(self) -> bool:
        s = self.settings
        return self.tokens_used >= s.llm_max_tokens_per_run or self.cost_used >= s.llm_max_cost_per_run

    def _cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        s = self.settings
        return prompt_tokens / 1000 * s.llm_cost_per_1k_prompt + completion_tokens / 1000 * s.llm_cost_per_1k_completion

    def _call(self, messages: list[dict[str, str]]) -> Attempt:
        s = self.settings
        headers = {"Authorization": f"Bearer {s.llm_api_key.get_secret_value()}"} if s.llm_api_key else {}
        body = {
            "model": s.llm_model, "messages": messages, "temperature": 0,
            "response_format": {"type": "json_object"},
        }  # fmt: skip
        url = s.llm_base_url.rstrip("/") + "/chat/completions"
        try:
            return parse_completion(self._http.post(url, json=body, headers=headers, timeout=s.llm_timeout_s))
        except httpx.TimeoutException:
            return Attempt(error=f"timeout: no answer within {s.llm_timeout_s:g}s")
        except httpx.HTTPError as exc:
            return Attempt(error=f"LLM endpoint unreachable ({type(exc).__name__})")

    def _exchange(self, messages: list[dict[str, str]]) -> tuple[list[Attempt], Decision | None, list[str]]:
        """Up to :data:`MAX_ATTEMPTS` answers (replayed from the cassette when it has them)."""
        key = exchange_key(self.settings.llm_model, messages)
        recorded = [Attempt(**a) for a in self.cassette.get(key) or []] if self.cassette else []
        attempts: list[Attempt] = []
        problems: list[str] = []
        decision = None
        for n in range(MAX_ATTEMPTS):
            if n and self.exhausted():
                problems.append("budget")
                break
            live = n >= len(recorded)
            if live and n and attempts[-1].wait_s:
                time.sleep(attempts[-1].wait_s)
            attempt = self._call(messages) if live else recorded[n]
            attempts.append(attempt)
            with self._lock:
                self.tokens_used += attempt.prompt_tokens + attempt.completion_tokens
                self.cost_used += self._cost(attempt.prompt_tokens, attempt.completion_tokens)
            decision, why = judge(attempt)
            if decision is not None:
                break
            problems.append(f"attempt {n + 1}: {why}")
        if self.cassette is not None and attempts != recorded:
            self.cassette.put(key, [asdict(a) for a in attempts])
        return attempts, decision, problems

    def decide(self, observation: Observation) -> DecisionRecord:
        if self.exhausted():
            log.info("LLM budget spent: rules decide %s", observation.symbol)
            return self._fallback(observation, "budget", [])
        attempts, decision, problems = self._exchange(self.messages(observation))
        if decision is None:
            log.warning("LLM answer for %s unusable, rules decide: %s", observation.symbol, "; ".join(problems))
            return self._fallback(observation, "; ".join(problems), attempts)
        return DecisionRecord(
            symbol=observation.symbol,
            decision=decision,
            reasoner=self.name,
            fallback_reason=f"retried after {'; '.join(problems)}" if problems else None,
            **_usage(attempts, self._cost),
        )

    def _fallback(self, observation: Observation, why: str, attempts: list[Attempt]) -> DecisionRecord:
        record = self.fallback.decide(observation)
        update = {"reasoner": f"{self.name}->{record.reasoner}", "fallback_reason": why, **_usage(attempts, self._cost)}
        return record.model_copy(update=update)


def _usage(attempts: list[Attempt], cost: Callable[[int, int], float]) -> dict[str, Any]:
    """Tokens, cost and the last raw answer over every attempt of one decision."""
    prompt = sum(a.prompt_tokens for a in attempts)
    completion = sum(a.completion_tokens for a in attempts)
    texts = [text for a in attempts if (text := a.refusal or a.text)]
    raw = texts[-1][:RAW_LIMIT] if texts else None
    return {"prompt_tokens": prompt, "completion_tokens": completion, "cost": cost(prompt, completion),
            "raw_answer": raw}  # fmt: skip
