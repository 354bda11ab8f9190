"""Coalesced calls from a caller (the ingress or the ensemble) to one model deployment.

Every handle call costs Ray per-call work on both ends whatever it carries: submission and
pickling in the caller, gRPC receive, routing, request context and metrics in the model
replica (about 5 ms of CPU per call on the 2-core bench VM, see docs/BENCHMARKS.md). So a
caller keeps a bounded number of calls in flight per member; a request that finds every slot
taken waits, and the requests waiting when a slot frees leave together in one call (up to the
member's ``max_batch_size`` series). A lone request leaves at once: no added latency when idle.

Each request has a time budget (the ensemble's per-member timeout), and a call takes only the
requests it can answer within theirs. With a plain first-in-first-out queue, a member slower
than its load let every request age until too little budget was left, then spent its CPU on
answers nobody waited for: Lag-Llama (tiny zoo model, 2 s budget, 64 clients, bench/serve_overload.py)
answered 2 of 946 requests in time (588 of 1136 now). So the sender keeps a moving average of a
call's seconds per series and the expected end of each call in flight; a waiting request that
cannot be answered in what is left of its budget, counting its wait for a free slot, is dropped at
once ("shed", reported like a timeout) instead of being sent; a call whose callers have all given
up is cancelled, which drops it from the replica's batch queue if it has not started; and once
the oldest waiting request has used half its budget, the queue is served newest first, so calls
carry the requests with the most budget left. Below that point it stays oldest first: served
newest first at all times, a member that keeps up on average left its oldest requests waiting
until their budget ran out (batching off, 64 clients: p99 8.7 s and 45-48 failed requests per 10 s).

Ray's ``@serve.batch`` is not used for this side: it closes a batch when its wait expires,
whatever is in flight, and at a few hundred requests/s a wait of milliseconds collects almost
nothing (measured 1.6-1.7 requests per call with 0-3 ms waits). The model replica's own
``@serve.batch`` still merges the calls of every caller into model batches.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from ray.serve.handle import DeploymentHandle

from fmtrade.serve.messages import ModelRequest, ModelResult, unwrap

#: A member call's result: its answer, the exception it raised, or why it was dropped.
Outcome = ModelResult | BaseException | str


@dataclass(frozen=True)
class MemberCall:
    """One request for a member; ``adapter`` None is the base model."""

    request: ModelRequest
    adapter: str | None


@dataclass(frozen=True)
class _Waiting:
    call: MemberCall
    future: asyncio.Future[Outcome]
    deadline: float  # event-loop time at which the caller gives up


class MemberSender:
    """Sends one caller's requests to one member deployment, coalesced and deadline-aware (see
    the module docstring).

    ``max_rows`` is the member's ``max_batch_size`` (1: batching off, every request is its own
    call); ``max_in_flight`` its ``calls_per_caller``; ``timeout_s`` each request's budget.
    """

    #: Weight of the newest call in the moving average of seconds per series.
    SMOOTHING = 0.2

    def __init__(self, handle: DeploymentHandle, max_rows: int, max_in_flight: int, timeout_s: float) -> None:
        self.handle = handle
        self.max_rows = max_rows
        self.max_in_flight = max_in_flight
        self.timeout_s = timeout_s
        self.in_flight = 0
        self.waiting: list[_Waiting] = []
        self.seconds_per_row: float | None = None  # None until a call has come back
        self.busy_until: list[float] = []  # expected end of each call in flight
        self._tasks: set[asyncio.Task[None]] = set()  # the loop keeps only weak references

    async def send(self, call: MemberCall) -> Outcome:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Outcome] = loop.create_future()
        self.waiting.append(_Waiting(call, future, loop.time() + self.timeout_s))
        self._dispatch()
        return await future

    def _expected_s(self, rows: int) -> float:
        return 0.0 if self.seconds_per_row is None else self.seconds_per_row * rows

    def _dispatch(self) -> None:
        """Start calls while slots are free, each led by the oldest waiting request (the newest
        under overload) and joined, in the same order, by waiting requests for the same adapter
        that fit its row cap and time budget. With every slot taken, only shed."""
        while True:
            now = asyncio.get_running_loop().time()
            self.waiting = [w for w in self.waiting if not w.future.done()]  # callers that gave up
            if self.in_flight:  # with nothing in flight a call always leaves, and re-measures
                self._shed(now)
            if not self.waiting or self.in_flight >= self.max_in_flight:
                return
            # Appended as they came: oldest first while the oldest has half its budget left.
            overloaded = self.waiting[0].deadline - now < self.timeout_s / 2
            order = self.waiting[::-1] if overloaded else self.waiting
            lead = order[0]
            taken, rows, budget = [lead], lead.call.request.rows, lead.deadline - now
            for waiting in order[1:]:
                # A request larger than one model batch travels alone; the replica cuts it up.
                joined_rows = rows + waiting.call.request.rows
                joined_budget = min(budget, waiting.deadline - now)
                if (
                    waiting.call.adapter == lead.call.adapter
                    and joined_rows <= self.max_rows
                    and self._expected_s(joined_rows) <= joined_budget
                ):
                    taken.append(waiting)
                    rows, budget = joined_rows, joined_budget
            chosen = {id(w) for w in taken}
            self.waiting = [w for w in self.waiting if id(w) not in chosen]
            self.in_flight += 1
            self.busy_until.append(now + self._expected_s(rows))
            task = asyncio.get_running_loop().create_task(self._call(taken, self.busy_until[-1]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    def _shed(self, now: float) -> None:
        """Answer at once every waiting request that cannot be answered within its budget: its call
        takes ``seconds_per_row`` per series, and starts when a slot frees (the earliest expected
        end of a call in flight, when every slot is taken)."""
        full = self.in_flight >= self.max_in_flight
        starts_in = max(min(self.busy_until) - now, 0.0) if full and self.busy_until else 0.0
        kept = []
        for waiting in self.waiting:
            left = waiting.deadline - now
            expected = starts_in + self._expected_s(waiting.call.request.rows)
            if expected > left:
                waiting.future.set_result(
                    f"shed: {max(left, 0.0):.2f}s of its {self.timeout_s:g}s budget left, "
                    f"an answer would take ~{expected:.2f}s"
                )
            else:
                kept.append(waiting)
        self.waiting = kept

    async def _call(self, batch: list[_Waiting], expected_end: float) -> None:
        loop = asyncio.get_running_loop()
        start = loop.time()
        try:
            outcomes = await self._remote([w.call for w in batch], max(w.deadline for w in batch) - start)
            rows = sum(w.call.request.rows for w in batch)
            sample = (loop.time() - start) / rows  # a call that timed out gives a lower bound: still news
            old = self.seconds_per_row
            self.seconds_per_row = sample if old is None else old + self.SMOOTHING * (sample - old)
            for waiting, outcome in zip(batch, outcomes, strict=True):
                if not waiting.future.done():
                    waiting.future.set_result(outcome)
        finally:
            self.in_flight -= 1
            self.busy_until.remove(expected_end)
            self._dispatch()

    async def _remote(self, calls: list[MemberCall], budget_s: float) -> list[Outcome]:
        """One handle call carrying ``calls`` (one adapter). Once its last caller's budget is spent
        the call is cancelled on the replica."""
        adapter = calls[0].adapter
        target = self.handle.options(multiplexed_model_id=adapter) if adapter else self.handle
        response = target.forecast.remote([c.request for c in calls])
        try:
            return list(await asyncio.wait_for(response, max(budget_s, 0.0)))
        except TimeoutError:
            response.cancel()
            return [f"timed out after {self.timeout_s:g}s"] * len(calls)
        except Exception as exc:  # noqa: BLE001 - a failing member is dropped and reported by the caller
            return [unwrap(exc)] * len(calls)
