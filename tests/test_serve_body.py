"""The API's request bodies: parsed by pydantic's JSON parser with FastAPI's error shape, and
documented in the OpenAPI document although the routes read the raw body themselves."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest
from fastapi.exceptions import RequestValidationError
from openapi_spec_validator import validate

from fmtrade.serve.api import create_api, parse_body
from fmtrade.serve.schemas import BatchRequest, ForecastRequest


def _errors(model: Any, raw: bytes) -> list[tuple[str, tuple[Any, ...]]]:
    with pytest.raises(RequestValidationError) as caught:
        parse_body(model, raw)
    return [(e["type"], tuple(e["loc"])) for e in caught.value.errors()]


def test_valid_bodies_parse() -> None:
    request = parse_body(ForecastRequest, json.dumps({"context": [1.0, 2.5, 3], "horizon": 5}).encode())
    assert request.context == [1.0, 2.5, 3.0] and request.horizon == 5 and request.symbol is None
    batch = parse_body(BatchRequest, json.dumps({"series": [{"symbol": "btcusdt"}, {"context": [1.0, 2.0]}]}).encode())
    assert batch.series[0].symbol == "BTCUSDT" and batch.series[1].context == [1.0, 2.0]


def test_errors_name_the_field_under_body() -> None:
    nan = json.dumps({"context": [1.0, math.nan, 2.0]}).encode()  # Python writes the NaN literal
    assert _errors(ForecastRequest, nan) == [("finite_number", ("body", "context", 1))]
    inf = json.dumps({"series": [{"context": [1.0]}, {"context": [math.inf]}]}).encode()
    assert _errors(BatchRequest, inf) == [("finite_number", ("body", "series", 1, "context", 0))]
    assert _errors(ForecastRequest, b'{"context": [1e400]}') == [("finite_number", ("body", "context", 0))]
    assert _errors(ForecastRequest, b'{"context": [1, 2') == [("json_invalid", ("body",))]
    assert _errors(ForecastRequest, b"") == [("json_invalid", ("body",))]
    assert _errors(ForecastRequest, b"[1, 2]") == [("model_type", ("body",))]
    assert _errors(ForecastRequest, b'{"context": [1.0], "horizn": 3}') == [("extra_forbidden", ("body", "horizn"))]
    # Only JSON numbers are prices: neither a boolean nor a numeric string is read as one.
    assert _errors(ForecastRequest, b'{"context": [1.0, true, "2.5"]}') == [
        ("float_type", ("body", "context", 1)),
        ("float_type", ("body", "context", 2)),
    ]
    assert _errors(ForecastRequest, b'{"context": [1.0], "quantiles": ["0.5"]}') == [
        ("float_type", ("body", "quantiles", 0))
    ]


class _NoBackend:
    """Building the OpenAPI document never calls the backend."""

    async def forecast(self, request: ForecastRequest) -> dict[str, Any]:
        raise AssertionError("not called")

    async def forecast_batch(self, request: BatchRequest) -> dict[str, Any]:
        raise AssertionError("not called")

    async def models(self) -> list[dict[str, Any]]:
        raise AssertionError("not called")

    async def ready(self) -> dict[str, Any]:
        raise AssertionError("not called")


def test_openapi_documents_bodies_and_errors() -> None:
    doc = create_api(_NoBackend(), None, 1024).openapi()
    validate(doc)
    schemas = doc["components"]["schemas"]
    for path, model in (("/v1/forecast", ForecastRequest), ("/v1/forecast/batch", BatchRequest)):
        post = doc["paths"][path]["post"]
        ref = post["requestBody"]["content"]["application/json"]["schema"]["$ref"]
        assert ref == f"#/components/schemas/{model.__name__}"
        assert set(schemas[model.__name__]["properties"]) == set(model.model_fields)
        assert {"200", "404", "413", "422", "503"} <= set(post["responses"])
    assert schemas["BatchRequest"]["properties"]["series"]["items"]["$ref"] == "#/components/schemas/Series"
