"""The realtime routes: the WebSocket `/api-ws/v1/realtime` (the cloud's `qwen3-asr-flash-realtime`)
and `POST /api/v1/realtime/tokens` (short-lived tokens for browser pages, `tokens.py`).

A session that cannot start (no or a wrong key, an unknown model, too many sessions, a server that is
loading or draining) is accepted and then answered with one `error` event and a close, not refused
during the handshake: the SDK reports a refused handshake only as "could not establish within 5s,
check your network" (docs/spec/realtime.md Part 1), while an `error` event reaches its callback.

Authentication, when API keys are configured: `Authorization: Bearer <key>` (what the SDK sends), or a
token from `POST /api/v1/realtime/tokens`, offered by a browser as the WebSocket subprotocol
`qasr-token.<token>` next to `qasr.realtime` (which the server selects), or as `?token=`. The API key
itself is never accepted in the URL. Query strings are never logged (`qasr.api.server`).
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request, WebSocket
from fastapi.responses import JSONResponse, Response
from starlette.datastructures import State

from qasr.api.realtime.protocol import EventError, error_event
from qasr.api.realtime.session import Session, SessionLimits
from qasr.api.realtime.tokens import TokenIssuer
from qasr.api.routing import dashscope_error, guarded_route, request_id
from qasr.api.services import Services, services
from qasr.audio.vad import VoiceActivityDetector
from qasr.errors import format_value
from qasr.settings import Settings
from qasr.types import SAMPLE_RATE

router = APIRouter(route_class=guarded_route(dashscope_error))
log = logging.getLogger(__name__)
access_log = logging.getLogger("qasr.access")

REALTIME_PATH = "/api-ws/v1/realtime"
TOKENS_PATH = "/api/v1/realtime/tokens"
SUBPROTOCOL = "qasr.realtime"
TOKEN_SUBPROTOCOL = "qasr-token."
_REALTIME_NAMES = re.compile(r"^qwen3-asr-flash-realtime(-\d{4}-\d{2}-\d{2})?(-us)?$")
# Close codes (RFC 6455 section 7.4.1): a normal end, a policy refusal, a restart, try again later.
_NORMAL, _POLICY, _RESTART, _LATER = 1000, 1008, 1012, 1013


@dataclass
class LiveHub:
    """What all live sessions of the server share: how many are open, browser tokens, the VAD."""

    settings: Settings
    tokens: TokenIssuer
    open: int = 0
    vad: VoiceActivityDetector | None = None
    _vad_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def detector(self, svc: Services) -> VoiceActivityDetector:
        """The server's VAD (the pipeline's, or one loaded on first use when `--no-vad` turned it off)."""
        async with self._vad_lock:
            if self.vad is None:
                own = svc.transcriber.vad
                self.vad = own if own is not None else await asyncio.to_thread(VoiceActivityDetector)
        assert self.vad is not None
        return self.vad

    def limits(self) -> SessionLimits:
        s = self.settings
        return SessionLimits(
            max_session_s=s.live_max_session_s,
            idle_timeout_s=s.live_idle_timeout_s,
            max_append_bytes=s.live_max_append_bytes,
            finish_timeout_s=s.request_timeout_s,
        )


def hub(state: State) -> LiveHub:
    """The app's `LiveHub`, made on first use."""
    found: LiveHub | None = getattr(state, "live_hub", None)
    if found is None:
        settings: Settings = state.settings
        found = LiveHub(settings, TokenIssuer(settings.live_token_ttl_s))
        state.live_hub = found
    return found


@router.post(TOKENS_PATH)
async def issue_token(request: Request) -> Response:
    """A token that opens one realtime session within `live_token_ttl_s` (see the module docstring)."""
    svc = services(request)
    svc.check_key(request)
    token, expires = hub(request.app.state).tokens.issue()
    return JSONResponse(
        {
            "request_id": request_id(request),
            "token": token,
            "expires_at": int(expires),
            "expires_in_s": round(expires - time.time()),
            "subprotocols": [SUBPROTOCOL, TOKEN_SUBPROTOCOL + token],
        },
        headers={"Cache-Control": "no-store"},
    )


@router.websocket(REALTIME_PATH)
async def realtime(websocket: WebSocket) -> None:
    state = websocket.app.state
    live = hub(state)
    offered = websocket.scope.get("subprotocols") or []
    await websocket.accept(subprotocol=SUBPROTOCOL if SUBPROTOCOL in offered else None)
    refusal = _refusal(websocket, live)
    if refusal is not None:
        error, code = refusal
        await websocket.send_json(error_event(error))
        await websocket.close(code)
        _log_session(websocket, "-", code, error.code, 0.0, 0, time.monotonic())
        return
    svc: Services = state.services
    recognizer = svc.runtime.live
    assert recognizer is not None  # (checked by _refusal)
    session = Session(
        websocket,
        recognizer,
        await live.detector(svc),
        live.limits(),
        str(websocket.query_params.get("model")),
        draining=lambda: bool(state.drain.draining),
        check_context=svc.check_context,
    )
    metrics = state.metrics
    live.open += 1
    state.drain.in_flight += 1  # a drain waits for live sessions to end cleanly, like requests
    metrics.live_sessions.inc()
    started = time.monotonic()
    code = 1011
    try:
        code = await session.run()
    finally:
        live.open -= 1
        state.drain.in_flight -= 1
        metrics.live_sessions.dec()
        stats = session.stats
        _log_session(
            websocket,
            session.id,
            code,
            stats.ended,
            stats.audio_samples / SAMPLE_RATE,
            stats.utterances,
            started,
        )


def _refusal(websocket: WebSocket, live: LiveHub) -> tuple[EventError, int] | None:
    """Why this session may not start (and the close code), or None."""
    state = websocket.app.state
    settings: Settings = state.settings
    if state.drain.draining:
        return EventError(
            "The server is restarting; reconnect shortly.", code="server_shutting_down", kind="server_error"
        ), _RESTART
    svc: Services | None = state.services
    if svc is None:
        return EventError(
            "The server is starting (the model is loading); reconnect shortly.",
            code="service_unavailable",
            kind="server_error",
        ), _LATER
    unauthorized = _unauthorized(websocket, settings, live)
    if unauthorized is not None:
        return EventError(unauthorized, code="invalid_api_key"), _POLICY
    model = websocket.query_params.get("model")
    if not model or not (_REALTIME_NAMES.match(model) or model in _own_names(settings)):
        shown = format_value(model) if model else "none"
        return EventError(
            f"Model {shown} does not exist here; this server serves qwen3-asr-flash-realtime "
            "(`?model=qwen3-asr-flash-realtime`).",
            code="model_not_found",
        ), _POLICY
    if svc.runtime.live is None:
        return EventError(
            "Live recognition is not available with this server's engine.",
            code="service_unavailable",
            kind="server_error",
        ), _POLICY
    if live.open >= settings.live_max_sessions:
        return EventError(
            f"This server already holds its limit of {settings.live_max_sessions} live sessions; "
            "retry shortly.",
            code="too_many_sessions",
            kind="rate_limit_error",
        ), _LATER
    return None


def _unauthorized(websocket: WebSocket, settings: Settings, live: LiveHub) -> str | None:
    """Why the caller is not let in, or None (no keys configured, a valid key, or a valid token)."""
    if not settings.api_keys:
        return None
    headers = websocket.headers.getlist("authorization")
    if len(headers) > 1:
        return "Send one Authorization header, not several."
    if headers:
        scheme, _, key = headers[0].strip().partition(" ")
        key = key.strip()
        if scheme.lower() == "bearer" and key:
            if any(hmac.compare_digest(key.encode(), k.encode()) for k in settings.api_keys):
                return None
            return "Invalid API-key provided."
    offered = websocket.scope.get("subprotocols") or []
    tokens = [p[len(TOKEN_SUBPROTOCOL) :] for p in offered if p.startswith(TOKEN_SUBPROTOCOL)]
    query_token = websocket.query_params.get("token")
    if query_token:
        tokens.append(query_token)
    if tokens:
        if any(live.tokens.redeem(t) for t in tokens[:2]):
            return None
        return f"The realtime token is invalid, expired or already used; get a new one from {TOKENS_PATH}."
    return f"No API key provided: send `Authorization: Bearer <key>` (or a token from {TOKENS_PATH})."


def _own_names(settings: Settings) -> set[str]:
    model = settings.model
    return {settings.served_model_name, model, Path(model).name, model.rsplit("/", 1)[-1]}


def _log_session(
    websocket: WebSocket, sid: str, code: int, ended: str, audio_s: float, utterances: int, started: float
) -> None:
    """One access-log line per session, like the HTTP edge's: never the query string or a key."""
    duration_ms = (time.monotonic() - started) * 1000
    fields: dict[str, Any] = {
        "request_id": sid,
        "api": "realtime",
        "method": "WS",
        "path": REALTIME_PATH,
        "status": code,
        "ended": ended,
        "audio_s": round(audio_s, 2),
        "utterances": utterances,
        "duration_ms": round(duration_ms, 1),
    }
    access_log.info(
        "%s realtime WS %s %s ended=%s audio_s=%.2f utterances=%d %.0f ms",
        sid,
        REALTIME_PATH,
        code,
        ended,
        audio_s,
        utterances,
        duration_ms,
        extra=fields,
    )
