"""The API's bodies. Requests: parsed by pydantic's JSON parser with FastAPI's error shape, and
documented in the OpenAPI document although the routes read the raw body themselves. Answers: the
library's forecast document, the one ``fmtrade forecast --json`` prints, is what the API documents."""

from __future__ import annotations

import json
import math
from typing import Any

import jsonschema
import numpy as np
import pytest
from fastapi.exceptions import RequestValidationError
from openapi_spec_validator import validate

from fmtrade.ensemble import Ensemble
from fmtrade.forecasting import MemberCalls, forecast_document
from fmtrade.models.baselines import NaiveForecaster, RandomWalkForecaster
from fmtrade.serve.api import create_api, parse_body
from fmtrade.serve.schemas import BatchRequest, ForecastRequest
from tests.conftest import run_cli


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


@pytest.fixture(scope="module")
def served_schema() -> dict[str, Any]:
    """The JSON schema of ``POST /v1/forecast``'s 200 answer, as the API serves it at /openapi.json."""
    openapi = create_api(_NoBackend(), None, 1024).openapi()
    answer = openapi["paths"]["/v1/forecast"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    return {**answer, "components": openapi["components"]}


def _validate(doc: dict[str, Any], schema: dict[str, Any]) -> None:
    jsonschema.Draft202012Validator(schema).validate(doc)


def test_the_cli_document_is_the_served_response(market_store, capsys, served_schema) -> None:
    argv = ["forecast", "--symbol", "AAAUSDT", "--category", "linear", "--interval", "60", "--store", market_store.root]
    code, out, err = run_cli([*argv, "--horizon", "6", "--models", "random-walk,naive", "--json"], capsys)
    assert code == 0, err
    doc = json.loads(out)
    _validate(doc, served_schema)
    assert doc["last_value"] == market_store.read("AAAUSDT", "60", category="linear")["close"].iloc[-1]
    facts = {(m["adapter"], m["latency_ms"], m["batch_size"]) for m in doc["models"].values()}
    assert facts == {(None, None, 1)}  # in-process: base models, one series, not timed
    assert doc["latency_ms"] > 0
    # The check can fail: a missing field, an extra one, a wrong type.
    for broken in ({k: v for k, v in doc.items() if k != "last_value"}, {**doc, "extra": 1}, {**doc, "horizon": "6"}):
        with pytest.raises(jsonschema.ValidationError):
            _validate(broken, served_schema)


def test_a_batch_row_is_its_own_series_with_the_service_call_facts(served_schema) -> None:
    rng = np.random.default_rng(1)
    contexts = [100.0 + rng.normal(0, 1, 64).cumsum(), 50.0 + rng.normal(0, 1, 64).cumsum()]
    members = {"naive": NaiveForecaster("naive"), "random-walk": RandomWalkForecaster("random-walk")}
    result = Ensemble(members, {"naive": 2.0, "random-walk": 1.0}).forecast(contexts, 4, (0.1, 0.5, 0.9))
    calls = MemberCalls({"naive": "SYNAUSDT", "random-walk": None}, {"naive": 3.5, "random-walk": 1.0}, {"naive": 16})
    doc = forecast_document(result, 1, symbol=None, timestamps=None, elapsed_ms=7.0, calls=calls)
    _validate(doc, served_schema)
    assert doc["horizon"] == 4 and doc["last_value"] == contexts[1][-1]
    assert doc["models"]["random-walk"]["quantiles"]["0.5"] == pytest.approx([contexts[1][-1]] * 4)  # no drift
    naive = doc["models"]["naive"]
    assert (naive["adapter"], naive["latency_ms"], naive["batch_size"]) == ("SYNAUSDT", 3.5, 16)
    assert doc["models"]["random-walk"]["batch_size"] == 2  # not given: the rows of the one call
    assert doc["weights"] == pytest.approx({"naive": 2 / 3, "random-walk": 1 / 3})
