"""A real OpenAI-compatible chat completions server for tests, with scripted answers.

``FakeOpenAI(["malformed", "valid"])`` listens on 127.0.0.1 (a free port) and answers the n-th
``POST /v1/chat/completions`` with the n-th kind of the script (the last kind repeats once the script
runs out). It records every request (body and headers) so tests can count retries and check what
the client sent. Kinds: valid, malformed, out_of_range, refusal (the API's ``refusal`` field),
refusal_text (prose, no JSON), price (a price and size the schema forbids), uncited (reasons that
cite no observation field), not_completion (200 with another body), 429, 500, timeout (sleeps
``delay_s`` before answering, longer than the client's timeout).
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

PROMPT_TOKENS, COMPLETION_TOKENS = 1200, 80  # every 200 answer's usage

VALID = {
    "action": "long",
    "conviction": 0.8,
    "reasons": [
        "indicators.rsi_14=25.0 < 30: oversold",
        "forecast.expected_return=+0.0200 beyond the forecast.q10..q90 noise",
    ],
}
CONTENT: dict[str, str | None] = {
    "valid": json.dumps(VALID),
    "malformed": '{"action": "long", "conviction": 0.8, "reasons": ["indicators.rsi_14=25',
    "out_of_range": json.dumps({**VALID, "conviction": 1.7}),
    "refusal": None,
    "refusal_text": "I'm sorry, but I can't provide trading advice.",
    "price": json.dumps({**VALID, "price": 43000.5, "size": 2.0}),
    "uncited": json.dumps({**VALID, "reasons": ["the market feels bullish today"]}),
    "timeout": json.dumps(VALID),
}
KINDS = (*CONTENT, "not_completion", "429", "500")


def completion(content: str | None, refusal: str | None = None) -> dict[str, Any]:
    return {
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "created": 0,
        "model": "fake",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": content, "refusal": refusal},
                "finish_reason": "stop",
            }
        ],
        "usage": {
            "prompt_tokens": PROMPT_TOKENS,
            "completion_tokens": COMPLETION_TOKENS,
            "total_tokens": PROMPT_TOKENS + COMPLETION_TOKENS,
        },
    }


class FakeOpenAI:
    """Context manager: ``with FakeOpenAI(script) as llm: ... llm.url ... llm.requests``."""

    def __init__(self, script: list[str] | None = None, *, delay_s: float = 2.0) -> None:
        unknown = [k for k in script or [] if k not in KINDS]
        if unknown:
            raise ValueError(f"unknown answer kinds {unknown}; known: {KINDS}")
        self.script = list(script or ["valid"])
        self.delay_s = delay_s
        self.requests: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}/v1"

    def __enter__(self) -> FakeOpenAI:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()

    def next_kind(self, request: dict[str, Any]) -> str:
        with self._lock:
            kind = self.script[min(len(self.requests), len(self.script) - 1)]
            self.requests.append(request)
            return kind

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
                pass

            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                if self.path != "/v1/chat/completions":
                    self._send(404, {"error": {"message": f"no route {self.path}"}})
                    return
                kind = fake.next_kind({"body": json.loads(body), "headers": dict(self.headers.items())})
                if kind == "timeout":
                    time.sleep(fake.delay_s)
                if kind in ("429", "500"):
                    self._send(int(kind), {"error": {"message": "rate limited" if kind == "429" else "boom"}})
                elif kind == "not_completion":
                    self._send(200, {"hello": "world"})
                elif kind == "refusal":
                    self._send(200, completion(None, refusal="I can't help with trading decisions."))
                else:
                    self._send(200, completion(CONTENT[kind]))

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client timed out and left
                    pass

        return Handler
