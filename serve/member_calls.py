"""Coalesced calls from a caller (the ingress or the ensemble) to one model deployment.

Every handle call costs Ray per-call work on both ends whatever it carries: submission and
pickling in the caller, gRPC receive, routing, request context and metrics in the model
replica (about 5 ms of CPU per call on the 2-core bench VM, see docs/BENCHMARKS.md). So a
caller keeps a bounded number of calls in flight per member; a request that finds every slot
taken waits, and the requests waiting when a slot frees leave together in one call (up to the
member's ``max_batch_size`` series). A lone request leaves at once: no added latency when idle.

Ray's ``@serve.batch`` is not used for this side: it closes a batch when its wait expires,
whatever is in flight, and at a few hundred requests/s a wait of milliseconds collects almost
nothing (measured 1.6-1.7 requests per call with 0-3 ms waits). The model replica's own
``@serve.batch`` still merges the calls of every caller into model batches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from serve.messages import ModelRequest, ModelResult, unwrap

#: A member call's result: its answer, the exception it raised, or why it was dropped.
Outcome = ModelResult | BaseException | str


@dataclass(frozen=True)
class MemberCall:
    """One request for a member; ``adapter`` None is the base model."""

    request: ModelRequest
    adapter: str | None


class MemberSender:
    """Sends one caller's requests to one member deployment, coalesced (see the module docstring).

    ``max_rows`` is the member's ``max_batch_size`` (1: batching off, every request is its own
    call); ``max_in_flight`` its ``calls_per_caller``.
    """

    def __init__(self, handle: DeploymentHandle, max_rows: int, max_in_flight: int, timeout_s: float) -> None:
        self.handle = handle
        self.max_rows = max_rows
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.in_flight = 0
        self.waiting: list[tuple[MemberCall, asyncio.Future[Outcome]]] = []
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def send(self, call: MemberCall) -> Outcome:
        future: asyncio.Future[Outcome] = asyncio.get_running_loop().create_future()
        self.waiting.append((call, future))
        self._dispatch()
        return await future

    def _dispatch(self) -> None:
        """Start calls while slots are free, each with the oldest waiting request and the
        waiting requests for the same adapter that fit beside it."""
        while self.in_flight < self.max_in_flight:
            self.waiting = [(c, f) for c, f in self.waiting if not f.done()]  # callers that gave up
            if not self.waiting:
                return
            adapter = self.waiting[0][0].adapter
            taken: list[tuple[MemberCall, asyncio.Future[Outcome]]] = []
            kept: list[tuple[MemberCall, asyncio.Future[Outcome]]] = []
            rows = 0
            for call, future in self.waiting:
                # A request larger than one model batch travels alone; the replica cuts it up.
                fits = not taken or rows + call.request.rows <= self.max_rows
                if call.adapter == adapter and fits:
                    taken.append((call, future))
                    rows += call.request.rows
                else:
                    kept.append((call, future))
            self.waiting = kept
            self.in_flight += 1
            task = asyncio.get_running_loop().create_task(self._call(taken))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _call(self, batch: list[tuple[MemberCall, asyncio.Future[Outcome]]]) -> None:
        try:
            outcomes = await self._remote([call for call, _ in batch])
        finally:
            self.in_flight -= 1
            self._dispatch()
        for (_, future), outcome in zip(batch, outcomes, strict=True):
            if not future.done():
                future.set_result(outcome)

    async def _remote(self, calls: list[MemberCall]) -> list[Outcome]:
        """One handle call carrying ``calls`` (one adapter); a late call is cancelled on the replica."""
        adapter = calls[0].adapter
        target = self.handle.options(multiplexed_model_id=adapter) if adapter else self.handle
        response = target.forecast.remote([c.request for c in calls])
        try:
            return list(await asyncio.wait_for(response, self.timeout_s))
        except TimeoutError:
            response.cancel()
            return [f"timed out after {self.timeout_s:g}s"] * len(calls)
        except Exception as exc:  # noqa: BLE001 - a failing member is dropped and reported by the caller
            return [unwrap(exc)] * len(calls)
