"""The model and ensemble deployments.

``ModelDeployment`` is one class configured per registry model: each replica loads
its forecaster once, merges concurrent requests with ``@serve.batch`` (batch size
counted in series, not requests) and keeps per-symbol LoRA variants through
``@serve.multiplexed`` (model id = adapter name). ``EnsembleDeployment`` fans a
request out to the members concurrently, gives each a time budget, combines the
answers with :func:`fmtrade.ensemble.combine` and reports the members it dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Protocol, cast

import numpy as np
from ray import serve
from ray.serve.handle import DeploymentHandle

from fmtrade.config import Settings
from fmtrade.ensemble import EnsembleResult, combine, normalise_weights
from fmtrade.errors import FmtradeError, InputError
from fmtrade.forecasting import MemberCalls
from fmtrade.live_state import LiveState, apply_live_state
from fmtrade.models.base import Forecast, Forecaster
from fmtrade.models.checkpoints import ADAPTER_CONFIG
from fmtrade.models.registry import ModelSpec, active_specs, build_forecaster, select_specs
from fmtrade.models.zoo import adapter_dir
from fmtrade.serve.handles import rebind_all
from fmtrade.serve.member_calls import MemberCall, MemberSender, Outcome
from fmtrade.serve.messages import (
    EnsembleRequest,
    MembersFailed,
    ModelRequest,
    ModelResult,
    ServedResult,
    shift_rows,
)
from fmtrade.serve.options import AppConfig, ModelOptions

_HEALTH_CONTEXT = np.linspace(100.0, 101.0, 64)
log = logging.getLogger("fmtrade.serve")


def has_adapter(settings: Settings, model: str, adapter: str) -> bool:
    return (adapter_dir(settings, model, adapter) / ADAPTER_CONFIG).is_file()


def model_spec(settings: Settings, name: str) -> ModelSpec:
    return select_specs(active_specs(settings), [name])[0]


def _rows(requests: list[ModelRequest]) -> int:
    return sum(r.rows for r in requests)


class _BatchSettings(Protocol):
    """The setters ``@serve.batch`` gives the method it wraps (Ray's typing keeps the method's type)."""

    def set_max_batch_size(self, new_max_batch_size: int) -> None: ...

    def set_batch_wait_timeout_s(self, new_batch_wait_timeout_s: float) -> None: ...


@serve.deployment
class ModelDeployment:
    """Serves one registry model; see the module docstring."""

    def __init__(self, model: str, app_args: dict[str, Any]) -> None:
        cfg = AppConfig.parse(app_args)
        self.settings = cfg.load_settings()
        self.spec = model_spec(self.settings, model)
        self.options = cfg.options_for(model)
        self.limits = cfg.limits
        self.load_error: str | None = None
        try:
            self.base: Forecaster | None = build_forecaster(self.spec, self.settings)
        except FmtradeError as exc:
            # A damaged or missing checkpoint does not heal when the replica restarts: keep the replica
            # up and answer every call with the reason, so the ensemble answers with the other members
            # and names this one in `failed`, and the application still deploys.
            self.base, self.load_error = None, f"{type(exc).__name__}: {exc}"
            log.error("model %s not loaded, answering every call with the reason: %s", model, self.load_error)
        batching = cast(_BatchSettings, self._batched)
        batching.set_max_batch_size(self.options.max_batch_size)
        batching.set_batch_wait_timeout_s(self.options.batch_wait_timeout_s)
        # The LRU size comes from config, so the multiplexed loader is wired here rather than
        # decorated on the class (Serve detects multiplexing set up at init time).
        self._adapter = serve.multiplexed(max_num_models_per_replica=self.options.max_adapters_per_replica)(
            self._make_loader()
        )

    def _make_loader(self):
        async def load_adapter(adapter: str) -> Forecaster:
            path = adapter_dir(self.settings, self.spec.name, adapter)
            spec = self.spec.model_copy(update={"options": {**self.spec.options, "adapter": str(path)}})
            return await asyncio.to_thread(build_forecaster, spec, self.settings)

        return load_adapter

    async def forecast(self, requests: list[ModelRequest]) -> list[ModelResult | Exception]:
        """Answers one caller's coalesced requests (see serve.member_calls). A request is cut
        into pieces of at most ``max_batch_size`` series for ``@serve.batch``, which merges
        them with other calls' pieces; a request's failure comes back in its own slot, so the
        requests that travelled with it still get their answers."""
        if self.load_error is not None:
            return [ModelUnavailable(self.load_error) for _ in requests]
        return list(await asyncio.gather(*(self._answer(r) for r in requests)))

    async def _answer(self, request: ModelRequest) -> ModelResult | Exception:
        size = self.options.max_batch_size
        results = await asyncio.gather(*(self._batched(piece) for piece in request.pieces(size)))
        for k, result in enumerate(results):
            if isinstance(result, Exception):
                return shift_rows(result, k * size)
        if len(results) == 1:
            return results[0]
        parts = [r for r in results if isinstance(r, ModelResult)]  # all of them, by now
        return ModelResult(
            Forecast.concat([r.forecast for r in parts]),
            parts[0].adapter,
            max(r.compute_ms for r in parts),
            max(r.batch_rows for r in parts),
        )

    @serve.batch(max_batch_size=32, batch_wait_timeout_s=0.005, batch_size_fn=_rows)
    async def _batched(self, requests: list[ModelRequest]) -> list[ModelResult | Exception]:
        """One model call per (horizon, levels) group of the merged requests. Serve splits
        batches by multiplexed id, so every request here wants the same adapter."""
        adapter = serve.get_multiplexed_model_id() or None
        assert self.base is not None  # forecast() answers for a model that did not load, without batching
        model = await self._adapter(adapter) if adapter else self.base
        groups: dict[tuple[int, tuple[float, ...]], list[int]] = {}
        for i, req in enumerate(requests):
            groups.setdefault((req.horizon, req.quantile_levels), []).append(i)
        out: list[ModelResult | Exception] = [RuntimeError("unanswered")] * len(requests)
        for (horizon, levels), members in groups.items():
            contexts = [c for i in members for c in requests[i].contexts]
            start = time.perf_counter()
            try:
                forecast = await asyncio.to_thread(model.forecast, contexts, horizon, levels)
            except Exception:  # noqa: BLE001 - one bad request must not fail its batch-mates: retry alone
                for i in members:
                    out[i] = await self._alone(model, requests[i], adapter)
                continue
            ms = (time.perf_counter() - start) * 1000.0
            offset = 0
            for i in members:
                rows = range(offset, offset + requests[i].rows)
                out[i] = ModelResult(forecast.take(rows), adapter, ms, len(contexts))
                offset += requests[i].rows
        return out

    @staticmethod
    async def _alone(model: Forecaster, request: ModelRequest, adapter: str | None) -> ModelResult | Exception:
        start = time.perf_counter()
        try:
            forecast = await asyncio.to_thread(
                model.forecast, request.contexts, request.horizon, request.quantile_levels
            )
        except Exception as exc:  # noqa: BLE001 - handed back to this request's caller
            return exc
        return ModelResult(forecast, adapter, (time.perf_counter() - start) * 1000.0, request.rows)

    def describe(self) -> dict[str, Any]:
        """Static facts the API validates against and /v1/models reports. A model that did not load
        reports its reason in ``error`` and limits no tighter than the application's, so requests
        naming other members are validated as if it were absent."""
        wrapper = getattr(self._adapter.__wrapped__, "__serve_multiplex_wrapper", None)
        facts = {
            "name": self.spec.name,
            "family": self.spec.family,
            "weight": self.spec.weight,
            "max_batch_size": self.options.max_batch_size,
            "batch_wait_timeout_s": self.options.batch_wait_timeout_s,
            "adapters_loaded": sorted(wrapper.models) if wrapper is not None else [],
            "error": self.load_error,
        }
        if self.base is None:
            limits = self.limits
            return {**facts, "device": self.spec.device, "max_horizon": limits.max_horizon,
                    "max_context": limits.max_context_points, "min_context": 1}  # fmt: skip
        return {
            **facts,
            "device": self.base.device,
            "max_horizon": int(self.base.max_horizon),
            "max_context": int(self.base.max_context),
            "min_context": int(self.base.min_context),
        }

    async def check_health(self) -> None:
        """Really run the model on a tiny context: a replica whose model broke is restarted. One
        whose model never loaded stays up (a restart reloads the same files): it reports the reason."""
        if self.base is not None:
            await asyncio.to_thread(self.base.forecast, [_HEALTH_CONTEXT], 1, (0.5,))


class ModelUnavailable(FmtradeError):
    """The member's model did not load; the message is the load error (file and rebuild command)."""


class FanOut:
    """Concurrent member calls with a per-member time budget, combined with the registry weights
    renormalised over the members that answered; failed or late members are reported.

    The ensemble deployment runs it for multi-model requests; the ingress runs it itself for a
    one-model request, where a separate ensemble hop would only add a round trip.
    """

    def __init__(self, members: dict[str, DeploymentHandle], cfg: AppConfig, settings: Settings) -> None:
        self.settings = settings
        self.timeout_s = cfg.ensemble.timeout_s
        self.members = tuple(members)
        self.senders = {name: self._sender(handle, cfg.options_for(name)) for name, handle in members.items()}
        self.weights = {s.name: s.weight for s in active_specs(self.settings) if s.name in members}
        # Read once per replica: a refreshed state reaches the service when its replicas restart.
        self.state = LiveState.load_if_present(settings.live_state_path())

    def _sender(self, handle: DeploymentHandle, options: ModelOptions) -> MemberSender:
        return MemberSender(handle, options.max_batch_size, options.in_flight_per_caller(), self.timeout_s)

    def set_calls_per_caller(self, calls: dict[str, int]) -> None:
        """Apply each member's ``calls_per_caller`` (the caller's ``user_config``): ``fmtrade serve
        scale`` changes a member's replica bounds in place, and its callers follow without a restart."""
        for name, limit in calls.items():
            if name in self.senders:
                self.senders[name].max_in_flight = int(limit)

    async def forecast(self, request: EnsembleRequest) -> ServedResult:
        names = request.models or tuple(self.members)
        outcomes = await asyncio.gather(*(self._member(name, request) for name in names))
        forecasts: dict[str, Forecast] = {}
        adapters: dict[str, str | None] = {}
        latency: dict[str, float] = {}
        batch_rows: dict[str, int] = {}
        failed: dict[str, str] = {}
        input_errors: dict[str, tuple[str, str]] = {}
        for name, outcome, ms in outcomes:
            latency[name] = ms
            if isinstance(outcome, ModelResult):
                forecasts[name] = outcome.forecast
                adapters[name] = outcome.adapter
                batch_rows[name] = outcome.batch_rows
            else:
                failed[name] = outcome if isinstance(outcome, str) else f"{type(outcome).__name__}: {outcome}"
                if isinstance(outcome, InputError):
                    input_errors[name] = (outcome.field, outcome.reason)
        if not forecasts:
            raise MembersFailed(failed, input_errors)
        weights = normalise_weights(self.weights, forecasts)
        result = EnsembleResult(combine(forecasts, weights), forecasts, weights, failed)
        result = apply_live_state(self.state, request.symbol, result, self.weights)
        calls = MemberCalls(adapters, latency, batch_rows)
        return ServedResult(result.ensemble, result.members, result.weights, failed, result.calibration, calls)

    async def _member(self, name: str, request: EnsembleRequest) -> tuple[str, Outcome, float]:
        adapter = request.symbol if request.symbol and has_adapter(self.settings, name, request.symbol) else None
        call = MemberCall(ModelRequest(request.contexts, request.horizon, request.quantile_levels), adapter)
        start = time.perf_counter()
        try:
            # The sender applies the time budget to the model call and cancels it; this bound
            # also covers the moment the request waits in the sender's queue.
            outcome = await asyncio.wait_for(self.senders[name].send(call), self.timeout_s)
        except TimeoutError:
            outcome = f"timed out after {self.timeout_s:g}s"
        return name, outcome, (time.perf_counter() - start) * 1000.0


@serve.deployment
class EnsembleDeployment:
    """Serves :class:`FanOut` for multi-model requests."""

    def __init__(self, members: dict[str, DeploymentHandle], app_args: dict[str, Any]) -> None:
        cfg = AppConfig.parse(app_args)
        self.fan_out = FanOut(rebind_all(members), cfg, cfg.load_settings())

    def reconfigure(self, user_config: dict[str, Any]) -> None:
        self.fan_out.set_calls_per_caller(user_config.get("calls_per_caller", {}))

    async def forecast(self, request: EnsembleRequest) -> ServedResult:
        return await self.fan_out.forecast(request)

    async def check_health(self) -> None:
        """The ensemble holds no model; it is healthy when its process answers."""
