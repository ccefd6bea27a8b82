"""The HTTP server under the app: uvicorn with the connection limits no client may get around.

uvicorn alone closes nothing that trickles: a connection that sends its headers or body a byte at a
time holds a file descriptor forever, and its faster HTTP parser reads headers of any size. So qasr
runs uvicorn's h11 protocol with these limits (issue 13):

- headers larger than `max_header_bytes` are refused (h11's own bound on an incomplete event);
- a request must arrive whole (headers and body) within `receive_timeout_s` of its first byte, and a
  new connection must start its request within that time; past it the server answers 408 (when no
  response has started) and closes the connection;
- at most `max_connections` connections are served. A new connection over the cap first makes room
  by cutting off (408) the slowest connection still receiving its request: one that has been at it
  for `_EVICT_AFTER_S`, or for `_EVICT_SLOW_AFTER_S` at under `_SLOW_BYTES_PER_S`. Clients that
  trickle their requests cannot lock normal ones out.
  With nothing to evict, `health_connections` more may still reach `/health` (load balancers keep
  working) and get a quick 503 for anything else; beyond both, a connection is closed at once.

And it stops gracefully (issue 17, `QasrServer`): on SIGTERM (or Ctrl-C) it keeps listening but takes
nothing new (503 with `Retry-After`; `/health/ready` says draining), lets requests in flight finish
for up to `drain_timeout_s`, then closes what is left and stops. A second signal stops at once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any

import h11
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from qasr.api.edge import QUERY_REDACTOR, ASGIApp, Drain, Receive, Scope, Send
from qasr.settings import Settings

log = logging.getLogger(__name__)
_WAITING_FOR_REQUEST = (h11.IDLE, h11.SEND_BODY)
_EVICT_AFTER_S = 1.0
"""A request still arriving after this long may be cut off to make room for a new connection: a
client on a working network sends its head and a small body in well under a second."""
_EVICT_SLOW_AFTER_S = 0.25
_SLOW_BYTES_PER_S = 16 * 1024
"""...and one arriving slower than this (a trickle, not an upload) already after `_EVICT_SLOW_AFTER_S`."""
_AFTER_DRAIN_S = 1
"""After the drain: how long uvicorn's own shutdown waits before it cancels what is left."""
_HEAD_END = b"\r\n\r\n"
_WS_ENVELOPE_BYTES = 64 * 1024


def _raw_response(status: str, message: str) -> bytes:
    """A whole HTTP/1.1 answer written straight to the socket (no request reached the app)."""
    body = json.dumps({"error": {"message": message, "code": status.split()[0]}}).encode()
    head = (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\nconnection: close\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


_TIMEOUT_408 = _raw_response("408 Request Timeout", "The request did not arrive in time.")
_TOO_LARGE_431 = _raw_response("431 Request Header Fields Too Large", "The request headers are too large.")
_BUSY_503 = _raw_response(
    "503 Service Unavailable", "The server has too many open connections; retry shortly."
)


@dataclass(frozen=True)
class ConnectionLimits:
    """What one client connection may take; see the module docstring."""

    max_header_bytes: int = 64 * 1024
    receive_timeout_s: float = 60.0
    max_connections: int = 1000
    health_connections: int = 16

    @classmethod
    def from_settings(cls, settings: Settings) -> ConnectionLimits:
        return cls(
            max_header_bytes=settings.max_header_bytes,
            receive_timeout_s=settings.receive_timeout_s,
            max_connections=settings.max_connections,
            health_connections=settings.health_connections,
        )


def protocol_class(limits: ConnectionLimits) -> type[H11Protocol]:
    """uvicorn's h11 protocol with `limits` enforced per connection."""

    receiving: dict[H11Protocol, list[float]] = {}  # receiving a request -> [since, bytes so far]

    def evict_slowest() -> bool:
        """Cut off the slowest connection still receiving its request, if it may be (module docstring)."""
        now = time.monotonic()
        candidates = []
        for protocol, (since, received) in receiving.items():
            age = now - since
            rate = received / age if age > 0 else float("inf")
            if age >= _EVICT_AFTER_S or (age >= _EVICT_SLOW_AFTER_S and rate < _SLOW_BYTES_PER_S):
                candidates.append((rate, since, protocol))
        if not candidates:
            return False
        _, _, slowest = min(candidates, key=lambda c: (c[0], c[1]))
        slowest._too_slow()  # type: ignore[attr-defined]
        return True

    class GuardedH11Protocol(H11Protocol):
        _receive_timer: asyncio.TimerHandle | None = None
        _head_bytes = 0  # bytes of the current request's head received so far
        _tail = b""  # the last bytes of the head so far, to find its end across chunks
        _upgraded = False  # handed over to the WebSocket protocol

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            open_now = len(self.connections)
            while open_now > limits.max_connections and evict_slowest():
                open_now -= 1  # (closed connections leave `self.connections` a moment later)
            if open_now > limits.max_connections + limits.health_connections:
                transport.abort()  # refused at once: it costs nothing more
                return
            if open_now > limits.max_connections:
                self.app = _health_only(self.app)
            self._start_timer()

        def data_received(self, data: bytes) -> None:
            if self.conn.their_state is h11.IDLE and self._head_too_large(data):
                self._stop_timer()
                self.transport.write(_TOO_LARGE_431)
                self.transport.close()
                return
            super().data_received(data)
            if self._upgraded:
                return
            if self.conn.their_state in _WAITING_FOR_REQUEST and not self.transport.is_closing():
                self._start_timer()  # a (new) request is on its way: it must arrive in time
                receiving[self][1] += len(data)
            else:
                self._stop_timer()

        def connection_lost(self, exc: Exception | None) -> None:
            self._stop_timer()
            super().connection_lost(exc)

        def handle_websocket_upgrade(self, event: h11.Request) -> None:
            """The request has arrived whole: the receive timer and eviction no longer apply (the
            WebSocket protocol owns the connection from here; live sessions have their own limits).
            A connection over the cap gets 503 instead of a WebSocket."""
            self._stop_timer()
            self._upgraded = True
            if self.app is not self.config.loaded_app:  # over the cap (`_health_only`)
                self.transport.write(_BUSY_503)
                self.transport.close()
                return
            super().handle_websocket_upgrade(event)

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._stop_timer()  # idle keep-alive connections are uvicorn's (timeout_keep_alive)

        def _head_too_large(self, data: bytes) -> bool:
            """Whether the request head being received is over the limit. h11's own bound only
            covers a head still incomplete in its buffer, not one that arrives in one piece."""
            window = self._tail + data
            end = window.find(_HEAD_END)
            if end >= 0:
                size = self._head_bytes - len(self._tail) + end + len(_HEAD_END)
                self._head_bytes, self._tail = 0, b""
                return size > limits.max_header_bytes
            self._head_bytes += len(data)
            self._tail = window[-(len(_HEAD_END) - 1) :]
            return self._head_bytes > limits.max_header_bytes

        def _start_timer(self) -> None:
            if self._receive_timer is None:
                self._receive_timer = self.loop.call_later(limits.receive_timeout_s, self._too_slow)
                receiving[self] = [time.monotonic(), 0.0]

        def _stop_timer(self) -> None:
            receiving.pop(self, None)
            if self._receive_timer is not None:
                self._receive_timer.cancel()
                self._receive_timer = None

        def _too_slow(self) -> None:
            self._stop_timer()
            if self.transport.is_closing() or self.conn.their_state not in _WAITING_FOR_REQUEST:
                return
            if self.cycle is None or not self.cycle.response_started:
                self.transport.write(_TIMEOUT_408)
            self.transport.close()  # the app sees the client gone (`http.disconnect`)

    return GuardedH11Protocol


def _health_only(app: ASGIApp) -> ASGIApp:
    """The app for a connection over the cap: `/health` (and its sub-paths) as usual, a quick 503
    with `Retry-After` for anything else."""

    async def guarded(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or str(scope.get("path", "")).startswith("/health"):
            await app(scope, receive, send)
            return
        body = json.dumps(
            {"error": {"message": "The server has too many open connections; retry shortly.", "code": "503"}}
        ).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"retry-after", b"1"),
            (b"connection", b"close"),
        ]
        await send({"type": "http.response.start", "status": 503, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    return guarded


class QasrServer(uvicorn.Server):
    """uvicorn's server with qasr's drain (see the module docstring). `app` is qasr's app: its
    `state.drain` is shared with the edge, which refuses new requests while draining."""

    def __init__(self, config: uvicorn.Config, drain: Drain, drain_timeout_s: float) -> None:
        super().__init__(config)
        self.drain = drain
        self.drain_timeout_s = drain_timeout_s
        self._drain_until: float | None = None

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self._drain_until is not None or self.should_exit:  # a second signal: stop now
            self._captured_signals.append(sig)
            self.force_exit = True
            self.should_exit = True
            return
        self._captured_signals.append(sig)
        self._drain_until = time.monotonic() + self.drain_timeout_s
        self.drain.draining = True
        log.info(
            "draining: %d request(s) in flight, up to %.0f s; new requests get 503",
            self.drain.in_flight,
            self.drain_timeout_s,
        )

    async def on_tick(self, counter: int) -> bool:
        if self._drain_until is None:
            return await super().on_tick(counter)
        if self.force_exit:
            return True
        if self.drain.in_flight == 0 or time.monotonic() >= self._drain_until:
            if self.drain.in_flight:
                log.warning("drain timeout: stopping %d request(s) still in flight", self.drain.in_flight)
            return True
        return False


def serve(app: Any, settings: Settings, **overrides: Any) -> None:
    """Run qasr's app until a signal stops it (blocking)."""
    config = uvicorn_config(app, settings, **overrides)
    QasrServer(config, app.state.drain, settings.drain_timeout_s).run()


def uvicorn_config(app: Any, settings: Settings, **overrides: Any) -> uvicorn.Config:
    """The uvicorn configuration qasr serves with (`qasr serve` and the tests alike)."""
    limits = ConnectionLimits.from_settings(settings)
    logging.getLogger("uvicorn.error").addFilter(QUERY_REDACTOR)  # its WebSocket lines carry the URL
    options: dict[str, Any] = {
        "host": settings.host,
        "port": settings.port,
        "http": protocol_class(limits),
        "h11_max_incomplete_event_size": limits.max_header_bytes,
        "log_config": None,  # qasr's logging: one format for both
        "access_log": False,  # qasr writes one line per request itself (qasr.api.edge.AccessLog)
        "timeout_graceful_shutdown": _AFTER_DRAIN_S,  # the drain came first (QasrServer)
        # A realtime append may carry `live_max_append_bytes` of base64, plus its JSON envelope.
        "ws_max_size": settings.live_max_append_bytes + _WS_ENVELOPE_BYTES,
        **overrides,
    }
    return uvicorn.Config(app, **options)
