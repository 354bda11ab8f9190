"""The FastAPI ingress deployment: validates requests, reads symbols from the store,
calls the ensemble and answers the library's forecast document
(:func:`fmtrade.forecasting.forecast_document`, the one ``fmtrade forecast --json`` prints)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from fastapi import FastAPI
from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

from fmtrade.data.closes import LatestCloses
from fmtrade.data.intervals import check_category, check_interval
from fmtrade.data.store import Store
from fmtrade.errors import InputError
from fmtrade.forecasting import forecast_document, future_timestamps
from fmtrade.models.base import check_quantile_levels
from fmtrade.serve.agent_routes import agent_router
from fmtrade.serve.api import UnknownSeries, create_api
from fmtrade.serve.deployments import FanOut
from fmtrade.serve.handles import rebind, rebind_all
from fmtrade.serve.messages import EnsembleRequest, MembersFailed, ServedResult, context_row, unwrap
from fmtrade.serve.options import AppConfig
from fmtrade.serve.schemas import BatchRequest, ForecastRequest, Options, Series

_DESCRIBE_TIMEOUT_S = 30.0
_PROBE_TIMEOUT_S = 5.0  # a readiness probe's wait for each model
FAILED_TO_LOAD = "failed to load"  # a member's readiness state when its model did not load


@serve.deployment
@serve.ingress()
class Ingress:
    """HTTP front door; one replica builds its own FastAPI app from the config."""

    def __init__(self, ensemble: DeploymentHandle, members: dict[str, DeploymentHandle], app_args: dict) -> None:
        cfg = AppConfig.parse(app_args)
        self.settings = cfg.load_settings()
        self.limits = cfg.limits
        self.ensemble = rebind(ensemble)
        self.members = rebind_all(members)
        self.latest = LatestCloses(Store(self.settings.store_uri()))  # symbol windows, re-read on change
        self._token = cfg.token(self.settings)
        self._max_body = cfg.body_limit(self.settings)
        self._info: dict[str, dict[str, Any]] = {}  # static model facts, fetched once
        self.direct = FanOut(self.members, cfg, self.settings)  # one-model requests

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.direct.set_calls_per_caller(user_config.get("calls_per_caller", {}))

    def __serve_build_asgi_app__(self) -> FastAPI:
        api = create_api(self, self._token, self._max_body)
        api.include_router(agent_router(self.settings))
        return api

    # Backend -----------------------------------------------------------------------------
    async def forecast(self, request: ForecastRequest) -> dict[str, Any]:
        start = time.perf_counter()
        docs = await self._run(request, [Series(symbol=request.symbol, context=request.context)], False, start)
        return docs[0]

    async def forecast_batch(self, request: BatchRequest) -> dict[str, Any]:
        start = time.perf_counter()
        if len(request.series) > self.limits.max_series:
            count = len(request.series)
            raise InputError("series", f"at most {self.limits.max_series} series per request, got {count}")
        docs = await self._run(request, request.series, True, start)
        return {"results": docs, "latency_ms": docs[0]["latency_ms"]}

    async def models(self) -> list[dict[str, Any]]:
        info = await self._describe(list(self.members))  # fresh: adapters_loaded changes as adapters load
        replicas = await asyncio.to_thread(_running_replicas)  # a blocking controller call
        return [{**facts, "replicas": replicas.get(f"model-{name}", 0)} for name, facts in info.items()]

    async def ready(self) -> dict[str, Any]:
        async def probe(name: str, handle: DeploymentHandle) -> tuple[str, str]:
            try:
                facts = await asyncio.wait_for(handle.describe.remote(), _PROBE_TIMEOUT_S)
                # A member whose model did not load answers, with its reason: the app serves the others.
                return name, f"{FAILED_TO_LOAD}: {facts['error']}" if facts.get("error") else "ok"
            except TimeoutError:
                return name, f"no answer within {_PROBE_TIMEOUT_S:g}s (replica not running yet?)"
            except Exception as exc:  # noqa: BLE001 - readiness reports, it does not raise
                return name, f"{type(exc).__name__}: {exc}"

        states = dict(await asyncio.gather(*(probe(n, h) for n, h in self.members.items())))
        answered = all(s == "ok" or s.startswith(FAILED_TO_LOAD) for s in states.values())
        return {"ready": answered and any(s == "ok" for s in states.values()), "models": states}

    # Helpers -----------------------------------------------------------------------------
    async def _describe(self, names: list[str]) -> dict[str, dict[str, Any]]:
        answers = await asyncio.gather(
            *(asyncio.wait_for(self.members[n].describe.remote(), _DESCRIBE_TIMEOUT_S) for n in names)
        )
        return dict(zip(names, answers, strict=True))

    async def _limits(self, names: list[str]) -> dict[str, dict[str, Any]]:
        """The members' static facts (horizon/context limits), asked once per ingress replica."""
        missing = [n for n in names if n not in self._info]
        if missing:
            self._info.update(await self._describe(missing))
        return {n: self._info[n] for n in names}

    async def _run(self, opts: Options, series: Sequence[Series], batch: bool, start: float) -> list[dict[str, Any]]:
        """One forecast document per series; ``start`` is when the request arrived (perf_counter)."""
        names = self._select(opts.models)
        info = await self._limits(names)
        levels = self._levels(opts.quantiles)
        horizon = self._horizon(opts.horizon, info)
        category = check_category(opts.category or self.settings.data.category)
        interval = check_interval(opts.interval or self.settings.data.interval)
        length = opts.context_length or self.limits.default_context_length
        if length > self.limits.max_context_points:
            raise InputError("context_length", f"at most {self.limits.max_context_points}, got {length}")
        need = max(f["min_context"] for f in info.values())

        def contexts() -> list[tuple[np.ndarray, list[str] | None]]:
            return [
                self._context(item, f"series[{i}]." if batch else "", category, interval, length, need, horizon)
                for i, item in enumerate(series)
            ]

        # Store reads block: keep them off the event loop that serves every other request.
        reads = any(item.symbol is not None for item in series)
        rows = await asyncio.to_thread(contexts) if reads else contexts()
        # One ensemble call per symbol (adapters are per symbol); explicit contexts share one call.
        groups: dict[str | None, list[int]] = {}
        for i, item in enumerate(series):
            groups.setdefault(item.symbol, []).append(i)

        async def call(symbol: str | None, idx: list[int]) -> ServedResult:
            request = EnsembleRequest([rows[i][0] for i in idx], horizon, levels, tuple(names), symbol)
            try:
                if len(names) == 1:  # nothing to combine: skip the ensemble hop
                    return await self.direct.forecast(request)
                return await self.ensemble.forecast.remote(request)
            except MembersFailed as exc:
                raise _as_input_error(unwrap(exc), idx, batch) from None

        results = await asyncio.gather(*(call(symbol, idx) for symbol, idx in groups.items()))
        elapsed_ms = (time.perf_counter() - start) * 1000.0
        docs: list[dict[str, Any]] = [{}] * len(series)
        for (symbol, idx), result in zip(groups.items(), results, strict=True):
            for row, i in enumerate(idx):
                docs[i] = forecast_document(
                    result, row, symbol=symbol, timestamps=rows[i][1], elapsed_ms=elapsed_ms, calls=result.calls
                )
        return docs

    def _select(self, models: list[str] | None) -> list[str]:
        if not models:
            return list(self.members)
        unknown = [m for m in models if m not in self.members]
        if unknown:
            raise InputError("models", f"unknown model(s) {', '.join(unknown)}; served: {', '.join(self.members)}")
        return list(dict.fromkeys(models))

    def _levels(self, quantiles: list[float]) -> tuple[float, ...]:
        if len(quantiles) > self.limits.max_quantiles:
            raise InputError("quantiles", f"at most {self.limits.max_quantiles} levels, got {len(quantiles)}")
        return check_quantile_levels(quantiles)

    def _horizon(self, horizon: int, info: dict[str, dict[str, Any]]) -> int:
        if horizon > self.limits.max_horizon:
            raise InputError("horizon", f"at most {self.limits.max_horizon}, got {horizon}")
        short = {n: f["max_horizon"] for n, f in info.items() if f["max_horizon"] < horizon}
        if short:
            limits = ", ".join(f"{n} forecasts at most {h}" for n, h in short.items())
            raise InputError("horizon", f"{horizon} is beyond {limits}; lower it or choose models")
        return horizon

    def _context(
        self, item: Series, prefix: str, category: str, interval: str, length: int, need: int, horizon: int
    ) -> tuple[np.ndarray, list[str] | None]:
        """The context array and the forecast steps' timestamps (None for explicit contexts)."""
        if item.context is not None:
            if len(item.context) > self.limits.max_context_points:
                raise InputError(
                    f"{prefix}context", f"{len(item.context)} points exceed the limit {self.limits.max_context_points}"
                )
            values = np.asarray(item.context, dtype=np.float64)[-length:]
            stamps = None
        else:
            assert item.symbol is not None  # Series guarantees exactly one
            values, last = self._latest(item.symbol, prefix, category, interval, length)
            stamps = future_timestamps(last, interval, horizon)
        if int(np.isfinite(values).sum()) < need:
            raise InputError(f"{prefix}context", f"has {int(np.isfinite(values).sum())} values; the models need {need}")
        return values, stamps

    def _latest(self, symbol: str, prefix: str, category: str, interval: str, length: int) -> tuple[np.ndarray, Any]:
        """The last ``length`` closes of ``symbol`` and the open time of its last bar."""
        window = self.latest.get(symbol, interval, category, length)
        if window is None:
            raise UnknownSeries(f"{prefix}symbol", f"no {category}/{interval} bars stored for {symbol}")
        return window


def _as_input_error(exc: BaseException, rows: list[int], batch: bool) -> BaseException:
    """When every member rejected the input itself, report it as the user's field error (422),
    translating the model's ``contexts[k]`` to the request's ``context`` / ``series[i].context``;
    otherwise keep the 503 with every member's reason."""
    if not isinstance(exc, MembersFailed) or not exc.input_errors or len(exc.input_errors) != len(exc.failed):
        return exc
    field, reason = next(iter(exc.input_errors.values()))
    row = context_row(field)
    if row is not None and row[0] < len(rows):
        field = f"series[{rows[row[0]]}].context" if batch else "context"
    return InputError(field, reason)


def _running_replicas() -> dict[str, int]:
    """Running replicas per deployment of this application, from the Serve controller."""
    try:
        status = serve.status()
        app = status.applications[serve.get_replica_context().app_name]
    except Exception:  # noqa: BLE001 - replica counts are informative only
        return {}
    return {name: int(d.replica_states.get(ReplicaState.RUNNING, 0)) for name, d in app.deployments.items()}
