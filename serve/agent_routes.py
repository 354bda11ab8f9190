"""``POST /v1/agent/decide``: an observation in, the configured reasoner's decision record out.

Mounted by the ingress beside the forecast routes (same token and body cap), so a trading agent
elsewhere, or a person with curl, can ask the service what it would do. The reasoner is
``settings.agent.reasoner``: the deterministic rules unless the settings say ``llm``, whose bad
answers fall back to the rules as in the agent. Invalid observations are 422s naming the field.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from fmtrade.agent.reasoners import make_reasoner
from fmtrade.agent.schemas import DecisionRecord, Observation
from fmtrade.config import Settings
from fmtrade.serve.api import FORECAST_ERRORS, json_body, parse_body

DECIDE_ERRORS: dict[int | str, dict[str, Any]] = {status: FORECAST_ERRORS[status] for status in (413, 422)}


def agent_router(settings: Settings) -> APIRouter:
    """The agent's routes, with one reasoner (and so one LLM budget) for the life of the replica."""
    reasoner = make_reasoner(settings)
    router = APIRouter(tags=["agent"])

    @router.post(
        "/v1/agent/decide", response_model=DecisionRecord, responses=DECIDE_ERRORS, openapi_extra=json_body(Observation)
    )
    async def decide(request: Request) -> DecisionRecord:
        """Decide on one observation: the raw body parsed like the forecast routes' (any bad body is a
        422 naming the field), the reasoner run off the event loop (an LLM reasoner blocks on its endpoint)."""
        observation = parse_body(Observation, await request.body())
        return await run_in_threadpool(reasoner.decide, observation)

    return router
