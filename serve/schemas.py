"""Request and response bodies of the HTTP API (FastAPI builds the OpenAPI document from them).

A forecast's answer is the library's forecast document (:class:`fmtrade.schemas.ForecastResponse`),
the one ``fmtrade forecast --json`` prints.

Structural checks live here (types, finite numbers, exactly one of symbol/context);
limits that come from the application config (longest context, most quantiles,
each model's horizon) are checked by the ingress and reported the same way: a 422
whose ``detail[].loc`` names the field.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from fmtrade.data.intervals import BYBIT_INTERVALS, CATEGORIES
from fmtrade.models.base import DEFAULT_QUANTILES
from fmtrade.schemas import ForecastResponse

# Strict: a JSON number only. Lax parsing would read `true` as the price 1.0 and "101.5" as 101.5.
FiniteFloat = Annotated[float, Field(allow_inf_nan=False, strict=True)]
Symbol = Annotated[str, Field(min_length=1, max_length=40, pattern=r"^[A-Za-z0-9]+$")]


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Series(_Body):
    """One series: a stored ``symbol`` (the latest bars are read) or an explicit ``context``."""

    symbol: Symbol | None = Field(None, description="Symbol in the store, e.g. BTCUSDT")
    context: list[FiniteFloat] | None = Field(
        None, min_length=1, description="Explicit price history, oldest first (finite numbers)"
    )

    @field_validator("symbol")
    @classmethod
    def _upper(cls, value: str | None) -> str | None:
        return value.upper() if value else value

    @model_validator(mode="after")
    def _exactly_one(self) -> Series:
        if (self.symbol is None) == (self.context is None):
            raise ValueError("give exactly one of symbol or context")
        return self


class Options(_Body):
    """What to forecast, shared by every series of a request."""

    category: str | None = Field(None, description=f"One of {', '.join(CATEGORIES)} (default: data.category)")
    interval: str | None = Field(None, description=f"Bar interval, one of {' '.join(BYBIT_INTERVALS)}")
    horizon: int = Field(24, ge=1, description="Bars to forecast")
    quantiles: list[FiniteFloat] = Field(list(DEFAULT_QUANTILES), min_length=1, description="Levels in (0, 1)")
    models: list[str] | None = Field(None, min_length=1, description="Subset of served models (default: all)")
    context_length: int | None = Field(None, ge=2, description="Most recent bars each model sees")


class ForecastRequest(Series, Options):
    pass


class BatchRequest(Options):
    series: list[Series] = Field(min_length=1)


class BatchResponse(BaseModel):
    results: list[ForecastResponse]
    latency_ms: float


class ModelInfo(BaseModel):
    name: str
    family: str
    device: str
    replicas: int
    adapters_loaded: list[str]
    max_horizon: int
    max_context: int
    max_batch_size: int
    batch_wait_timeout_s: float
    weight: float


class Ready(BaseModel):
    ready: bool
    models: dict[str, str]


class FieldError(BaseModel):
    loc: list[str | int] = Field(description='Where: "body", then the path of the field')
    msg: str = Field(description="Why it was refused")
    type: str


class InvalidInput(BaseModel):
    """422 (invalid field), 404 (no bars stored for a symbol), 413 (body over the cap)."""

    detail: list[FieldError]


class MembersFailedDetail(BaseModel):
    message: str
    failed: dict[str, str] = Field(description="Each model's reason")


class NoMemberAnswered(BaseModel):
    """503: every requested model failed or timed out."""

    detail: MembersFailedDetail
