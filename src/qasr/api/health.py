"""Health and metrics endpoints for operators and load balancers (issue 17).

- `GET /health/live`: the process answers and the model worker is alive (or still loading): 200, or
  503 once the worker has died or the model failed to load. A restart is the cure for a 503 here.
- `GET /health/ready`: the model is loaded and warmed up, the server is not draining, and the queue
  is below its limit: 200, else 503 with the reason. Send traffic only while it says 200.
- `GET /health`: the original check, kept as it was: 200 while the model worker runs, else 503.
- `GET /metrics`: Prometheus text format. It reveals traffic, so it needs an API key (when keys are
  configured) unless the operator passes `--metrics-public`.

None of them names a server path: the model is reported by its name only.
"""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from qasr.api.edge import Drain
from qasr.api.routing import guarded_route, openai_error
from qasr.api.services import Services
from qasr.errors import EngineUnavailable
from qasr.metrics import Metrics
from qasr.settings import Settings

router = APIRouter(route_class=guarded_route(openai_error))


def _state(request: Request) -> tuple[Services | None, str | None, Drain, Settings]:
    state = request.app.state
    return state.services, state.startup_error, state.drain, state.settings


def model_name(settings: Settings) -> str:
    """The configured model without its server path (a hub id stays as it is)."""
    model = settings.model
    return Path(model).name if Path(model).is_absolute() or model.startswith(".") else model


@router.get("/health")
async def health(request: Request) -> Response:
    svc, _, _, settings = _state(request)
    ok = svc is not None and svc.runtime.healthy
    body = {
        "status": "ok" if ok else "unavailable",
        "model": model_name(settings),
        "queue": svc.scheduler.queue_depth if svc is not None else 0,
    }
    return JSONResponse(body, status_code=200 if ok else 503)


@router.get("/health/live")
async def live(request: Request) -> Response:
    svc, error, _, _ = _state(request)
    if error is not None:
        return JSONResponse({"status": "failed", "reason": "the model could not be loaded"}, status_code=503)
    if svc is not None and not svc.runtime.healthy:
        return JSONResponse({"status": "failed", "reason": "the model worker stopped"}, status_code=503)
    return JSONResponse({"status": "ok"})


@router.get("/health/ready")
async def ready(request: Request) -> Response:
    svc, error, drain, settings = _state(request)
    reason = None
    if error is not None:
        reason = "the model could not be loaded"
    elif svc is None:
        reason = "loading"
    elif not svc.runtime.healthy:
        reason = "the model worker stopped"
    elif drain.draining:
        reason = "draining"
    elif svc.scheduler.queue_depth >= settings.max_queue:
        reason = "the queue is full"
    if reason is not None:
        return JSONResponse({"status": "unavailable", "reason": reason}, status_code=503)
    return JSONResponse({"status": "ready", "queue": svc.scheduler.queue_depth if svc else 0})


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    svc, _, _, settings = _state(request)
    if not settings.metrics_public and settings.api_keys:
        if svc is None:  # the key check needs the runtime; while loading, ask again shortly
            raise EngineUnavailable("The server is starting; retry shortly.")
        svc.check_key(request)
    registry: Metrics = request.app.state.metrics
    return Response(generate_latest(registry.registry), media_type=CONTENT_TYPE_LATEST)
