"""The app factory. The lifespan owns the runtime (`qasr.runtime`, the one place that wires the model,
its scheduler, the pipeline and the upload store): it builds it at start-up and closes it at shutdown.
No module globals."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from qasr.api.dashscope.filetrans import router as filetrans_router
from qasr.api.dashscope.filetrans import start_jobs, stop_jobs
from qasr.api.dashscope.routes import router as dashscope_router
from qasr.api.edge import AccessLog, Drain, Message, Receive, Scope, Send, refuse_websocket
from qasr.api.health import router as health_router
from qasr.api.openai.routes import router as openai_router
from qasr.api.realtime.routes import router as realtime_router
from qasr.api.routing import dashscope_error, openai_error
from qasr.api.services import Services
from qasr.audio.uploads import UploadStore
from qasr.engine.base import Engine
from qasr.engine.scheduler import ModelWork
from qasr.errors import AudioTooLarge, EndpointNotFound, InvalidRequest, MethodNotAllowed
from qasr.metrics import Metrics
from qasr.runtime import Runtime
from qasr.settings import Settings

if TYPE_CHECKING:
    from qasr.engine.aligner import AlignRequest, AlignResult

log = logging.getLogger(__name__)
_UPLOAD_CLEANUP_S = 600.0
_SHOWN_PATH_CHARS = 100  # an error message quotes at most this much of the request's path


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    aligner: ModelWork[AlignRequest, AlignResult] | None = None,
) -> FastAPI:
    """Build the service. `engine` (and `aligner`, the forced aligner) are loaded from `settings` at
    start-up unless given (`qasr serve` loads both first, so that a bad one is refused before it listens).

    The runtime is built in the background: the server answers at once, `/health/ready` says 503
    ("loading") until the model is loaded and warmed up, and API requests meanwhile get 503 with
    `Retry-After`."""
    metrics = Metrics()
    drain = Drain()

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Off the loop: loading and warming up a real model takes seconds to minutes.
        building = asyncio.ensure_future(
            asyncio.to_thread(
                Runtime.build, settings, engine, server=True, metrics=metrics, aligner_engine=aligner
            )
        )
        building.add_done_callback(lambda task: _started(app, task))
        try:
            yield
        finally:
            drain.draining = True
            metrics.draining.set(1)
            with contextlib.suppress(BaseException):
                await building  # a load in progress cannot be interrupted: let it end, then close
            cleaner = getattr(app.state, "cleaner", None)
            if cleaner is not None:
                cleaner.cancel()
            await stop_jobs(app)  # before the runtime closes: running jobs stay RUNNING, to resume
            if app.state.services is not None:
                app.state.services.runtime.close()

    app = _new_app(lifespan)
    app.state.settings = settings
    app.state.metrics = metrics
    app.state.drain = drain
    app.state.services = None
    app.state.startup_error = None
    app.router.default = refuse_websocket  # unknown paths: 404 for HTTP, a clear refusal for WebSocket
    app.add_middleware(BodyLimit, settings=settings)
    app.add_middleware(AccessLog, metrics=metrics, drain=drain)  # outermost: ids and counts for all
    app.include_router(health_router)
    app.include_router(dashscope_router)
    app.include_router(filetrans_router)
    app.include_router(openai_router)
    app.include_router(realtime_router)
    _install_error_handlers(app)
    return app


def _started(app: FastAPI, task: asyncio.Future[Runtime]) -> None:
    """The runtime is built (or failed to build): serve with it, or say why not."""
    if task.cancelled():
        return
    error = task.exception()
    if error is not None:
        app.state.startup_error = str(error)
        log.error("qasr could not start: %s", getattr(error, "message", None) or error)
        return
    runtime = task.result()
    app.state.services = Services(runtime)
    assert runtime.uploads is not None
    app.state.cleaner = asyncio.ensure_future(_clean_uploads(runtime.uploads))
    app.state.jobs_starting = asyncio.ensure_future(start_jobs(app, runtime))
    log.info("ready: %s", ", ".join(f"{k}={v}" for k, v in runtime.engine.describe().items()))


def _new_app(lifespan: Callable[[FastAPI], contextlib.AbstractAsyncContextManager[None]]) -> FastAPI:
    """The bare app. `/docs` is Swagger UI from the files shipped in fastapi-offline, so it works on an
    air-gapped site (issue 11); without that package it is off rather than loaded from a CDN.
    `/openapi.json` is always served."""
    common: dict[str, Any] = {
        "title": "qasr",
        "version": "0.1.0",
        "lifespan": lifespan,
        "redoc_url": None,
        # Swagger UI would otherwise send the schema to validator.swagger.io for its badge.
        "swagger_ui_parameters": {"validatorUrl": None},
    }
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:
        log.info("/docs is off: install fastapi-offline to serve Swagger UI; /openapi.json is served")
        return FastAPI(docs_url=None, **common)
    app: FastAPI = FastAPIOffline(docs_url="/docs", static_url="/docs/assets", **common)
    return app


async def _clean_uploads(store: UploadStore) -> None:
    while True:
        await asyncio.sleep(_UPLOAD_CLEANUP_S)
        try:
            await asyncio.to_thread(store.cleanup)
        except Exception:
            log.exception("upload cleanup failed")


def _is_dashscope(path: str) -> bool:
    return path.startswith("/api/")


def _error(request: Request, exc: BaseException) -> JSONResponse:
    """Errors outside the routes (unknown paths, bodies over the limit) in the caller's dialect."""
    render = dashscope_error if _is_dashscope(request.url.path) else openai_error
    return render(request, exc)


def _from_http(request: Request, exc: StarletteHTTPException) -> BaseException:
    """The domain error for an HTTPException raised by the router (unknown path, wrong method)."""
    method, path = request.method[:16], _shown(request.url.path)
    if exc.status_code == 404:
        return EndpointNotFound(
            f"No such endpoint: {method} {path}. The endpoints are listed at /openapi.json."
        )
    if exc.status_code == 405:
        allow = (exc.headers or {}).get("Allow", "")
        allowed = tuple(m.strip() for m in allow.split(",") if m.strip())
        hint = f"; use {' or '.join(allowed)}" if allowed else ""
        return MethodNotAllowed(f"{method} is not allowed on {path}{hint}.", allowed)
    if exc.status_code >= 500:
        return exc  # not the client's fault: the table answers 500 and logs it
    return InvalidRequest(f"{exc.detail}")


def _shown(path: str) -> str:
    return path if len(path) <= _SHOWN_PATH_CHARS else path[:_SHOWN_PATH_CHARS] + "…"


def _install_error_handlers(app: FastAPI) -> None:
    async def on_http(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        return _error(request, _from_http(request, exc))

    async def on_validation(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(request, InvalidRequest(f"Invalid `{where}`: {first.get('msg')}.", param=where))

    async def on_any(request: Request, exc: Exception) -> Response:
        return _error(request, exc)

    app.add_exception_handler(StarletteHTTPException, on_http)
    app.add_exception_handler(RequestValidationError, on_validation)
    app.add_exception_handler(Exception, on_any)


class BodyLimit:
    """Refuse request bodies over the limit while they are read, not after (uploads get their own cap)."""

    def __init__(self, app: Callable[[Scope, Receive, Send], Awaitable[None]], settings: Settings) -> None:
        self.app = app
        self.settings = settings

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from qasr.api.dashscope.routes import UPLOAD_PATH

        path = scope.get("path", "")
        limit = (
            self.settings.upload_max_bytes + (1 << 20)
            if path == UPLOAD_PATH
            else self.settings.max_body_bytes
        )
        declared = dict(scope.get("headers") or []).get(b"content-length")
        too_big = AudioTooLarge(
            f"The request body is over this server's limit of {limit // (1 << 20)} MB; send a smaller file."
        )
        if declared is not None and declared.isdigit() and int(declared) > limit:
            await _send_error(scope, send, too_big)
            return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _BodyTooLarge(too_big.message)
            return message

        try:
            await self.app(scope, counted, send)
        except _BodyTooLarge as exc:  # raised outside a route's own error handling
            await _send_error(scope, send, exc)


class _BodyTooLarge(AudioTooLarge):
    """Routes that catch it map it like any over-size input (400)."""


async def _send_error(scope: Scope, send: Send, exc: BaseException) -> None:
    request = Request(scope)
    response = _error(request, exc)
    await response(scope, _never_receive, send)


async def _never_receive() -> Message:
    return {"type": "http.disconnect"}
