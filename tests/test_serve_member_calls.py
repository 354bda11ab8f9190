"""``MemberSender``'s coalescing rules, against a stand-in for a Ray deployment handle.

The end-to-end behaviour (through real Serve replicas) is in test_serve_api.py; here the
stand-in records each call so the rules are checked exactly: a lone request leaves at once,
requests that wait for a slot leave together (oldest first, newest first once the oldest has
used half its budget), calls never mix adapters or exceed the row cap or their requests' time
budget, a request that cannot be answered in what is left of its budget (counting the wait for a
slot) is shed without being sent, and a late call is cancelled.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fmtrade.serve.member_calls import MemberCall, MemberSender
from fmtrade.serve.messages import ModelRequest


@dataclass
class _Response:
    """Awaitable like a DeploymentResponse; answers when the test releases it."""

    requests: list[ModelRequest]
    adapter: str | None
    release: asyncio.Event = field(default_factory=asyncio.Event)
    cancelled: bool = False

    def __await__(self):
        return self._answer().__await__()

    @property
    def values(self) -> list[float]:
        """The value each carried request's context is filled with (which request it is)."""
        return [float(r.contexts[0][0]) for r in self.requests]

    async def _answer(self) -> list[Any]:
        await self.release.wait()
        return [f"{self.adapter}:{value}" for value in self.values]

    def cancel(self) -> None:
        self.cancelled = True


class _Handle:
    def __init__(self, adapter: str | None = None, calls: list[_Response] | None = None) -> None:
        self.adapter = adapter
        self.calls: list[_Response] = [] if calls is None else calls
        self.forecast = self

    def options(self, multiplexed_model_id: str) -> _Handle:
        return _Handle(multiplexed_model_id, self.calls)

    def remote(self, requests: list[ModelRequest]) -> _Response:
        response = _Response(requests, self.adapter)
        self.calls.append(response)
        return response


def _call(value: float, rows: int = 1, adapter: str | None = None) -> MemberCall:
    return MemberCall(ModelRequest([np.full(8, value)] * rows, 4, (0.5,)), adapter)


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_waiting_requests_leave_together_per_adapter_within_the_row_cap() -> None:
    async def scenario() -> None:
        handle = _Handle()
        sender = MemberSender(handle, max_rows=4, max_in_flight=1, timeout_s=5.0)  # type: ignore[arg-type]
        first = asyncio.ensure_future(sender.send(_call(0)))
        await _settle()
        assert [len(c.requests) for c in handle.calls] == [1]  # alone: left at once
        rest = [
            asyncio.ensure_future(sender.send(_call(v, rows, adapter)))
            for v, rows, adapter in [(1, 1, None), (2, 2, "A"), (3, 2, None), (4, 1, None), (5, 9, None)]
        ]
        await _settle()
        assert len(handle.calls) == 1  # the only slot is taken: everything waits
        handle.calls[0].release.set()
        assert await first == "None:0.0"
        await _settle()
        # Oldest first; same adapter only; at most 4 rows (1 + 2 + 1), the rest wait.
        assert handle.calls[1].values == [1.0, 3.0, 4.0]
        for expected in ([2.0], [5.0]):
            handle.calls[-1].release.set()
            await _settle()
            assert handle.calls[-1].values == expected
        assert handle.calls[2].adapter == "A"
        assert handle.calls[3].requests[0].rows == 9  # larger than the cap: travels alone
        handle.calls[-1].release.set()
        assert await asyncio.gather(*rest) == ["None:1.0", "A:2.0", "None:3.0", "None:4.0", "None:5.0"]

    asyncio.run(scenario())


def test_once_the_oldest_has_used_half_its_budget_the_newest_leave_first() -> None:
    async def scenario() -> None:
        handle = _Handle()
        sender = MemberSender(handle, max_rows=2, max_in_flight=1, timeout_s=1.0)  # type: ignore[arg-type]
        quick = asyncio.ensure_future(sender.send(_call(0)))
        await _settle()
        handle.calls[0].release.set()
        assert await quick == "None:0.0"  # calls are measured as quick
        busy = asyncio.ensure_future(sender.send(_call(9)))
        await _settle()
        old = [asyncio.ensure_future(sender.send(_call(v))) for v in (1, 2)]
        await asyncio.sleep(0.6)  # 1 and 2 have 0.4 s of their 1 s left
        new = [asyncio.ensure_future(sender.send(_call(v))) for v in (3, 4)]
        await _settle()
        handle.calls[1].release.set()
        assert await busy == "None:9.0"
        await _settle()
        assert handle.calls[2].values == [4.0, 3.0]
        handle.calls[2].release.set()
        await _settle()
        assert handle.calls[3].values == [2.0, 1.0]
        handle.calls[3].release.set()
        assert await asyncio.gather(*old, *new) == ["None:1.0", "None:2.0", "None:3.0", "None:4.0"]

    asyncio.run(scenario())


def test_late_call_is_cancelled_and_abandoned_requests_are_skipped() -> None:
    async def scenario() -> None:
        handle = _Handle()
        sender = MemberSender(handle, max_rows=8, max_in_flight=1, timeout_s=0.2)  # type: ignore[arg-type]
        late = asyncio.ensure_future(sender.send(_call(0)))
        await _settle()
        await asyncio.sleep(0.1)
        gave_up = asyncio.ensure_future(sender.send(_call(1)))
        waiting = asyncio.ensure_future(sender.send(_call(2)))
        await _settle()
        gave_up.cancel()  # its caller's own time budget ran out while it waited
        assert await late == "timed out after 0.2s"
        assert handle.calls[0].cancelled
        await _settle()
        # Nothing in flight: the waiting request leaves with what is left of its budget.
        assert handle.calls[1].values == [2.0]
        handle.calls[1].release.set()
        assert await waiting == "None:2.0"

    asyncio.run(scenario())


def test_requests_that_cannot_be_answered_in_their_budget_are_shed_unsent() -> None:
    async def scenario() -> None:
        handle = _Handle()
        sender = MemberSender(handle, max_rows=8, max_in_flight=2, timeout_s=1.0)  # type: ignore[arg-type]
        first = asyncio.ensure_future(sender.send(_call(0)))
        await asyncio.sleep(0.4)
        handle.calls[0].release.set()
        assert await first == "None:0.0"
        assert sender.seconds_per_row is not None and sender.seconds_per_row >= 0.4  # one series, >= 0.4 s
        busy = asyncio.ensure_future(sender.send(_call(1)))  # stays in flight
        await _settle()
        # 3 series at >= 0.4 s each cannot be answered within 1 s: shed at once, never sent.
        too_big = await sender.send(_call(2, rows=3))
        assert too_big.startswith("shed: ") and "of its 1s budget left" in too_big
        kept = asyncio.ensure_future(sender.send(_call(3)))  # fits: takes the second slot
        aged = asyncio.ensure_future(sender.send(_call(4)))  # waits for a slot
        await _settle()
        assert [c.values[0] for c in handle.calls] == [0.0, 1.0, 3.0]
        await asyncio.sleep(0.7)  # 4 now has <= 0.3 s left, less than a call takes
        handle.calls[2].release.set()
        assert await kept == "None:3.0"
        assert (await aged).startswith("shed: ")
        assert len(handle.calls) == 3  # neither shed request reached the replica
        handle.calls[1].release.set()
        await busy

    asyncio.run(scenario())


def test_a_request_that_would_wait_past_its_budget_for_a_slot_is_shed_at_once() -> None:
    async def scenario() -> None:
        handle = _Handle()
        sender = MemberSender(handle, max_rows=8, max_in_flight=1, timeout_s=1.0)  # type: ignore[arg-type]
        first = asyncio.ensure_future(sender.send(_call(0)))
        await asyncio.sleep(0.3)
        handle.calls[0].release.set()
        assert await first == "None:0.0"  # one series: >= 0.3 s
        busy = asyncio.ensure_future(sender.send(_call(1, rows=3)))  # expected to end in >= 0.9 s
        await _settle()
        # The only slot frees in ~0.9 s and a call then takes ~0.3 s: more than 1 s, shed unsent.
        began = asyncio.get_running_loop().time()
        shed = await sender.send(_call(2))
        assert shed.startswith("shed: ") and asyncio.get_running_loop().time() - began < 0.1
        assert len(handle.calls) == 2
        handle.calls[1].release.set()
        assert await busy == "None:1.0"

    asyncio.run(scenario())
