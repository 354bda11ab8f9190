"""``POST /v1/agent/decide``: an observation in, the configured reasoner's decision record out.

Mounted by the ingress beside the forecast routes (same token and body cap), so a trading agent
elsewhere, or a person with curl, can ask the service what it would do. The reasoner is
``settings.agent.reasoner``: the deterministic rules unless the settings say ``llm``, whose bad
answers fall back to the rules as in the agent. Invalid observations are 422s naming the field.
"""

from __future__ import annotations

from fastapi import APIRouter

from fmtrade.agent.reasoners import make_reasoner
from fmtrade.agent.schemas import DecisionRecord, Observation
from fmtrade.config import Settings


def agent_router(settings: Settings) -> APIRouter:
    """The agent's routes, with one reasoner (and so one LLM budget) for the life of the replica."""
    reasoner = make_reasoner(settings)
    router = APIRouter(tags=["agent"])

    @router.post("/v1/agent/decide", response_model=DecisionRecord)
    def decide(observation: Observation) -> DecisionRecord:
        """Decide on one observation (a plain function: FastAPI runs it off the event loop, since an
        LLM reasoner blocks on its endpoint)."""
        return reasoner.decide(observation)

    return router
