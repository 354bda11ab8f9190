"""Fuzz the served HTTP API from its own OpenAPI document (schemathesis) on the real Serve app.

Every operation the document lists gets a bounded, derandomized set of generated requests,
valid and invalid (25 per operation). The service must never answer a 5xx other than the
documented 503, every status and JSON body must be one the document declares, and no replica
may be restarted by a request (the replica actors' PIDs are the same before and after).
"""

from __future__ import annotations

import json
from collections import Counter
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings

from tests.reliability.conftest import HEALTHY, SYMBOL, replica_pids

pytestmark = pytest.mark.slow

schemathesis = pytest.importorskip("schemathesis")
pytest.importorskip("ray.serve")

from schemathesis import GenerationMode  # noqa: E402  (after the importorskip above)
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CASES_PER_OPERATION = 25


def no_undocumented_server_error(ctx: Any, response: Any, case: Any) -> bool | None:
    """A 5xx is a failure unless it is the 503 the operation documents (no member answered / not ready)."""
    status = response.status_code
    if status >= 500 and not (status == 503 and "503" in case.operation.definition.raw.get("responses", {})):
        raise AssertionError(f"{case.operation.label} answered {status}: {response.text[:500]}")
    return None


CHECKS = [no_undocumented_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]


def pin(case: Any) -> Any:
    """Keep a generated forecast body's numbers but point it at what is served: the served models and
    symbol, three levels, a horizon up to 48, at least two context points. Random contexts (huge, tiny,
    negative, constant prices) then reach the models themselves, not only the validators."""
    body = case.body
    if not isinstance(body, dict):
        return case
    items = body.get("series") if isinstance(body.get("series"), list) else [body]
    for item in items[:16] if isinstance(items, list) else []:
        if isinstance(item, dict):
            if "symbol" in item:
                item["symbol"] = SYMBOL
            if isinstance(item.get("context"), list):
                item["context"] = [*item["context"], 1.0, 1.0][: max(2, len(item["context"]))]
    if "series" in body and isinstance(body["series"], list):
        body["series"] = body["series"][:16]
    for key in ("category", "interval", "context_length"):
        body.pop(key, None)
    body.update(models=HEALTHY, quantiles=[0.1, 0.5, 0.9])
    horizon = body.get("horizon")
    body["horizon"] = min(max(horizon, 1), 48) if isinstance(horizon, int) and not isinstance(horizon, bool) else 24
    return case


def fuzz(operation: Any, mode: str, url: str, statuses: list[int]) -> None:
    """``CASES_PER_OPERATION`` generated requests of one kind to one operation: ``positive`` (valid by
    the document), ``negative`` (invalid by it) or ``pinned`` (valid, aimed at the served models)."""
    strategy = operation.as_strategy(generation_mode=GenerationMode(mode.replace("pinned", "positive")))

    @given(case=strategy.map(pin) if mode == "pinned" else strategy)
    @settings(
        max_examples=CASES_PER_OPERATION,
        derandomize=True,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Any) -> None:
        response = case.call(base_url=url, timeout=60)
        statuses.append(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()


def test_api_survives_generated_requests(served: dict[str, Any]) -> None:
    schema = schemathesis.openapi.from_url(f"{served['url']}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    assert {"POST /v1/forecast", "POST /v1/forecast/batch", "POST /v1/agent/decide", "GET /v1/models"} <= labels
    counts: dict[str, Counter[int]] = {}
    failures: dict[str, str] = {}
    for operation in operations:
        modes = ["positive"] + (["negative"] if operation.body else [])
        modes += ["pinned"] if operation.path.startswith("/v1/forecast") else []
        for mode in modes:
            statuses: list[int] = []
            key = f"{operation.label} {mode}"
            try:
                fuzz(operation, mode, served["url"], statuses)
            except (Exception, BaseExceptionGroup) as exc:  # noqa: BLE001 - every operation is fuzzed, findings together
                failures[key] = str(exc)[:2000]
            counts[key] = Counter(statuses)
    print("fuzzed:", json.dumps({k: dict(v) for k, v in counts.items()}))  # the figures docs/RELIABILITY.md quotes
    assert not failures, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
    for route in ("POST /v1/forecast", "POST /v1/forecast/batch"):  # generated numbers reached the models
        assert counts[f"{route} pinned"][200] > 0, counts[f"{route} pinned"]
    assert all(sum(c.values()) > 0 for c in counts.values())


def test_no_replica_was_restarted_by_a_request(served: dict[str, Any]) -> None:
    """Runs after the fuzz cases (pytest keeps file order): the same replica actors, same PIDs."""
    assert replica_pids() == served["replicas"]
    assert httpx.get(f"{served['url']}/readyz", timeout=30).status_code == 200
