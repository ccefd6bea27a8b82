"""The HTTP edge, the same for every dialect: a request id and one access-log line per request, a clear
refusal for a WebSocket upgrade on an unknown path, and streams bounded like plain requests.

Pure ASGI (no `BaseHTTPMiddleware`), so streamed responses pass through untouched.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any, TypeVar

from qasr.errors import RequestTimeout

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


class AccessLog:
    """Gives every HTTP request an id (`request.state.request_id`, answered as `X-Request-Id`) and
    logs one line when its response has been sent, streamed ones included: id, API, method, path,
    status, audio seconds (when a route recorded them in `request.state.audio_s`) and duration.
    Never the query string, headers, keys, audio or text."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        state = scope.setdefault("state", {})
        state["request_id"] = rid
        started = time.monotonic()
        status = 0

        async def send_with_id(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", rid.encode()))
                message["headers"] = headers
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            path = str(scope.get("path", ""))
            audio = state.get("audio_s")
            access_log.info(
                "%s %s %s %s %s audio_s=%s %.0f ms",
                rid,
                api_of(path),
                scope.get("method", ""),
                path[:200],
                status or "-",
                f"{audio:.2f}" if isinstance(audio, float) else "-",
                (time.monotonic() - started) * 1000,
            )


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
    timeout = RequestTimeout(f"The request took longer than {limit_s:.0f} s and was stopped.")
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise timeout
            try:
                item = await asyncio.wait_for(items.__anext__(), remaining)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise timeout from None
            yield item
    finally:
        await items.aclose()
