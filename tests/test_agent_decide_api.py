"""``POST /v1/agent/decide`` over real HTTP (uvicorn on a free port, no Ray): the router alone in a
plain FastAPI app, and mounted on the API the ingress builds (create_api: token guard, 422 shape),
whose forecast route also answers the agent's ``--serve-url`` forecasts."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import uvicorn
from fastapi import FastAPI

from fmtrade.agent.observe import ApiForecasts, make_forecasts
from fmtrade.agent.reasoners import RulesReasoner
from fmtrade.agent.schemas import DecisionRecord
from fmtrade.config import load_settings
from fmtrade.forecasting import forecast_symbol
from fmtrade.models.baselines import NaiveForecaster, RandomWalkForecaster
from fmtrade.serve.agent_routes import agent_router
from fmtrade.serve.api import create_api
from fmtrade.serve.schemas import BatchRequest, ForecastRequest
from tests.conftest import free_port
from tests.fake_openai import VALID, FakeOpenAI
from tests.test_agent_reasoners import BULLISH, FAKE_KEY, observation

TOKEN = "test-token"
JSON = {"Content-Type": "application/json"}


@contextmanager
def serving(app: FastAPI) -> Iterator[str]:
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=free_port(), log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{server.config.port}"
    finally:
        server.should_exit = True
        thread.join(10)


MEMBERS = {"random-walk": RandomWalkForecaster("random-walk"), "naive": NaiveForecaster("naive")}


class InProcessBackend:
    """The forecast backend the Ray ingress is, answered in this process by two baselines."""

    async def forecast(self, request: ForecastRequest) -> dict[str, Any]:
        context = request.context or []
        closes = pd.Series(context, index=pd.date_range("2024-01-01", periods=len(context), freq="h", tz="UTC"))
        weights = dict.fromkeys(MEMBERS, 1.0)
        doc = forecast_symbol("series", closes, MEMBERS, weights, "60", request.horizon, request.quantiles, 64)
        return {**doc, "symbol": None, "timestamps": None}

    async def forecast_batch(self, request: BatchRequest) -> dict[str, Any]:
        raise NotImplementedError

    async def models(self) -> list[dict[str, Any]]:
        return []

    async def ready(self) -> dict[str, Any]:
        return {"ready": True, "models": {}}


def test_decide_with_the_rules_over_http(isolated_home) -> None:
    app = FastAPI()
    app.include_router(agent_router(load_settings()))
    obs = observation(**BULLISH)
    with serving(app) as url:
        response = httpx.post(f"{url}/v1/agent/decide", content=obs.model_dump_json(), headers=JSON, timeout=30)
        assert response.status_code == 200
        record = DecisionRecord.model_validate(response.json())
        assert record == RulesReasoner().decide(obs)
        assert record.decision.action == "long" and record.reasoner == "rules"
        bad = obs.model_dump(mode="json")
        bad["indicators"]["rsi_14"] = "high"
        bad["forecast"]["price"] = 43000
        del bad["last_price"]
        response = httpx.post(f"{url}/v1/agent/decide", json=bad, timeout=30)
        assert response.status_code == 422
        locs = {tuple(e["loc"]) for e in response.json()["detail"]}
        assert locs == {
            ("body", "indicators", "rsi_14"),
            ("body", "forecast", "price"),
            ("body", "last_price"),
        }


def test_decide_with_the_llm_when_settings_say_so(isolated_home) -> None:
    with FakeOpenAI(["valid", "malformed"]) as fake:
        settings = load_settings(
            overrides={"agent": {"reasoner": "llm", "llm_base_url": fake.url, "llm_api_key": FAKE_KEY}}
        )
        app = FastAPI()
        app.include_router(agent_router(settings))
        with serving(app) as url:
            first = httpx.post(
                f"{url}/v1/agent/decide", content=observation().model_dump_json(), headers=JSON, timeout=30
            )
            second = httpx.post(
                f"{url}/v1/agent/decide", content=observation(**BULLISH).model_dump_json(), headers=JSON, timeout=30
            )
    assert first.status_code == second.status_code == 200
    assert first.json()["reasoner"] == "llm" and first.json()["decision"] == VALID
    assert second.json()["reasoner"] == "llm->rules" and "malformed JSON" in second.json()["fallback_reason"]
    assert FAKE_KEY not in first.text + second.text


def test_decide_mounted_on_the_ingress_api_and_forecasts_from_it(isolated_home) -> None:
    api = create_api(InProcessBackend(), TOKEN, 1 << 20)
    api.include_router(agent_router(load_settings()))  # what serve/ingress.py does
    obs = observation(**BULLISH)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with serving(api) as url:
        assert (
            httpx.post(f"{url}/v1/agent/decide", content=obs.model_dump_json(), headers=JSON, timeout=30).status_code
            == 401
        )
        ok = httpx.post(f"{url}/v1/agent/decide", content=obs.model_dump_json(), headers={**auth, **JSON}, timeout=30)
        assert ok.status_code == 200 and ok.json()["decision"]["action"] == "long"
        bad = httpx.post(f"{url}/v1/agent/decide", json={"symbol": "X"}, headers=auth, timeout=30)
        assert bad.status_code == 422
        assert {"loc": ["body", "last_price"], "msg": "Field required", "type": "missing"} in bad.json()["detail"]
        assert "/v1/agent/decide" in httpx.get(f"{url}/openapi.json", headers=auth, timeout=30).json()["paths"]
        # The agent's --serve-url forecasts: the closed bars go as an explicit context.
        forecasts = make_forecasts(load_settings(), url, horizon=6, context=64, token=TOKEN)
        assert isinstance(forecasts, ApiForecasts)
        closes = pd.Series(
            100 * np.exp(np.linspace(0, 0.2, 100)), index=pd.date_range("2024", periods=100, freq="h", tz="UTC")
        )
        summary = forecasts("BTCUSDT", closes, "60")
    assert summary.horizon == 6 and summary.members == ["naive", "random-walk"]
    local = forecast_symbol(
        "series", closes, MEMBERS, {"random-walk": 1.0, "naive": 1.0}, "60", 6,
        (0.05, 0.1, 0.5, 0.9, 0.95), 64,
    )  # fmt: skip
    assert summary.expected_return == pytest.approx(local["ensemble"]["mean"][-1] / closes.iloc[-1] - 1)
