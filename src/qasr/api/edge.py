"""The HTTP edge, the same for every dialect: a request id and one access-log line per request, a clear
refusal for a WebSocket upgrade on an unknown path, and streams bounded like plain requests.

Pure ASGI (no `BaseHTTPMiddleware`), so streamed responses pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any, TypeVar

from qasr.errors import RequestTimeout
from qasr.metrics import Metrics

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
T = TypeVar("T")

access_log = logging.getLogger("qasr.access")
_MAX_INCOMING_ID = 64


def new_request_id() -> str:
    return str(uuid.uuid4())


def api_of(path: str) -> str:
    """Which API a path belongs to, for logs and metrics."""
    if path.startswith("/api/"):
        return "dashscope"
    if path.startswith("/compatible-mode/"):
        return "compatible"
    if path.startswith("/v1/"):
        return "openai"
    return "server"


@dataclass
class Drain:
    """Whether the server is draining before it stops (SIGTERM), and how many requests it still has in
    flight; shared by the edge, which refuses new requests while draining, and the server loop, which
    stops once nothing is in flight or the drain timeout passes (`qasr.api.server`)."""

    draining: bool = False
    in_flight: int = 0


class AccessLog:
    """The edge every HTTP request passes first.

    - Gives it an id (`request.state.request_id`, answered as `X-Request-Id`).
    - While draining, answers new requests 503 with `Retry-After` (health checks still pass).
    - Logs one line when its answer has been sent, streams included: id, API, method, path, status,
      audio seconds (when a route recorded them in `request.state.audio_s`) and duration; never the
      query string, headers, keys, audio or text. The same facts, as fields, for `--log-format json`.
    - Counts it in the metrics: by API, route template and status; time to the first body byte and
      to the end; audio seconds and real-time factor.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics, drain: Drain) -> None:
        self.app = app
        self.metrics = metrics
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        path = str(scope.get("path", ""))
        api = api_of(path)
        started = time.monotonic()
        first_byte: float | None = None
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status, first_byte
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            elif message["type"] == "http.response.body" and first_byte is None and message.get("body"):
                first_byte = time.monotonic()
            await send(message)

        self.drain.in_flight += 1
        try:
            if self.drain.draining and not path.startswith("/health"):
                await _refuse_draining(scope, send_with_id, rid)
            else:
                await self.app(scope, receive, send_with_id)
        finally:
            self.drain.in_flight -= 1
            ended = time.monotonic()
            audio = state.get("audio_s")
            self._count(scope, api, status, started, first_byte, ended, audio)
            access_log.info(
                "%s %s %s %s %s audio_s=%s %.0f ms",
                rid,
                api,
                scope.get("method", ""),
                path[:200],
                status or "-",
                f"{audio:.2f}" if isinstance(audio, float) else "-",
                (ended - started) * 1000,
                extra={
                    "request_id": rid,
                    "api": api,
                    "method": scope.get("method", ""),
                    "path": path[:200],
                    "status": status,
                    "audio_s": audio if isinstance(audio, float) else None,
                    "duration_ms": round((ended - started) * 1000, 1),
                },
            )

    def _count(
        self,
        scope: Scope,
        api: str,
        status: int,
        started: float,
        first_byte: float | None,
        ended: float,
        audio: object,
    ) -> None:
        route = getattr(scope.get("route"), "path", None) or "unmatched"  # a template: bounded labels
        m = self.metrics
        m.requests.labels(api, route, str(status or 499)).inc()
        m.request_seconds.labels(api, route).observe(ended - started)
        if first_byte is not None:
            m.first_result_seconds.labels(api, route).observe(first_byte - started)
        if isinstance(audio, float) and audio > 0:
            m.audio_seconds.labels(api).inc(audio)
            m.real_time_factor.labels(api).observe((ended - started) / audio)


async def _refuse_draining(scope: Scope, send: Send, rid: str) -> None:
    from qasr.api.errors import dashscope_body, openai_body, wire_headers
    from qasr.errors import Draining

    exc = Draining("The server is restarting; retry shortly.")
    body: dict[str, Any]
    if api_of(str(scope.get("path", ""))) == "dashscope":
        status, body = dashscope_body(exc, rid)
    else:
        status, body = openai_body(exc)
    data = json.dumps(body).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in wire_headers(exc).items()]
    headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


class QueryRedactor(logging.Filter):
    """Keeps credentials out of uvicorn's WebSocket log lines: each handshake is logged with its full
    URL, where a browser's realtime token may travel (`?token=`), so only the path is kept; and at
    debug level the `websockets` library logs every request header, so the values of those that
    carry keys or tokens (`Authorization`, `Sec-WebSocket-Protocol`, cookies) are replaced."""

    _QUERY = re.compile(r"(/[^\s\"'?]*)\?[^\s\"']*")
    _SECRET_HEADER = re.compile(
        r"^([<>] (?:authorization|proxy-authorization|sec-websocket-protocol|cookie|set-cookie): ).*$",
        re.IGNORECASE,
    )

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        redacted = self._SECRET_HEADER.sub(r"\1<redacted>", message)
        if "?" in redacted:
            redacted = self._QUERY.sub(r"\1?…", redacted)
        if redacted != message:
            record.msg, record.args = redacted, ()
        return True


QUERY_REDACTOR = QueryRedactor()


async def refuse_websocket(scope: Scope, receive: Receive, send: Send) -> None:
    """The router's answer for a path no route has. HTTP paths go to the 404 handler; a WebSocket
    upgrade is refused with an HTTP 404 and a JSON body where the server supports it (the ASGI
    `websocket.http.response` extension), else closed with 1008 (policy violation) before accepting."""
    if scope["type"] == "http":
        from starlette.exceptions import HTTPException

        raise HTTPException(status_code=404)
    if scope["type"] != "websocket":
        return
    body = json.dumps(
        {
            "error": {
                "message": f"No WebSocket endpoint at {str(scope.get('path', ''))[:100]}.",
                "code": "not_found",
            }
        }
    ).encode()
    if "websocket.http.response" in scope.get("extensions", {}):
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "websocket.http.response.start", "status": 404, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1008, "reason": "no such endpoint"})


async def bounded_stream(items: AsyncGenerator[T, None], limit_s: float) -> AsyncIterator[T]:
    """`items`, ended with `RequestTimeout` once `limit_s` have passed: a stream gets the same time
    limit as a plain request. (A client that disconnects cancels the stream: Starlette's
    `StreamingResponse` watches for it.) `items` is closed however this ends."""
    deadline = time.monotonic() + limit_s
    message = f"The request took longer than {limit_s:.0f} s and was stopped."
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise RequestTimeout(message)
            try:
                item = await asyncio.wait_for(items.__anext__(), remaining)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise RequestTimeout(message) from None
            yield item
    finally:
        await items.aclose()
