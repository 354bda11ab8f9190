"""The forecast document's shape: what ``fmtrade forecast --json`` prints and ``POST /v1/forecast``
answers (:func:`fmtrade.forecasting.forecast_document` builds it).

It lives in the library, not the service, because the CLI emits it too; the HTTP API names these
models as its response, so the OpenAPI document describes exactly what the library builds. Extra
keys are refused: a field the builder adds without adding it here fails the API's response check.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field


class _Document(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Quantiles(_Document):
    mean: list[float]
    quantiles: dict[str, list[float]] = Field(description='Each level ("0.1", "0.5", ...) per forecast step')


class ModelForecast(Quantiles):
    adapter: str | None = Field(description="LoRA adapter used (None: the base model)")
    latency_ms: float | None = Field(description="Ensemble-side wait for this member, ms (None: not timed, in-process)")
    batch_size: int = Field(description="Series in the batched model call this forecast rode in")


class EnsembleForecast(Quantiles):
    disagreement: list[float] = Field(description="Weighted spread of the member medians per step (price units)")


class Calibration(_Document):
    asof: str = Field(description="Last bar the live state learned from (`fmtrade calibrate`)")
    models: list[str] = Field(description="Members whose quantiles were recalibrated from their own recent errors")
    learned_weights: bool = Field(description="Weights learned online from the members' recent quantile loss")
    ensemble: bool = Field(description="The ensemble's quantiles recalibrated from its own recent errors")


class ForecastResponse(_Document):
    """One series' forecast by every model that answered and by their weighted ensemble."""

    symbol: str | None
    horizon: int
    timestamps: list[str] | None = Field(description="Open times of the forecast bars (None for explicit contexts)")
    last_value: float = Field(description="The last value of the context the forecast starts from")
    models: dict[str, ModelForecast]
    ensemble: EnsembleForecast
    weights: dict[str, float] = Field(description="Ensemble weights, renormalised over the members that answered")
    failed: dict[str, str] = Field(description="Members dropped from this answer, with the reason")
    latency_ms: float = Field(description="Time spent forecasting (in the service: answering the request)")
    calibration: Calibration | None = Field(
        None, description="What the live calibration state changed (None: raw quantiles and registry weights)"
    )
