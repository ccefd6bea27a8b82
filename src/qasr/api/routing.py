"""One route class per dialect: any error a handler raises becomes that dialect's error body, through
the one table in `qasr.api.errors`; handlers carry no try/except of their own."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute

from qasr.api.errors import dashscope_body, openai_body
from qasr.api.services import new_request_id
from qasr.errors import InvalidRequest

Render = Callable[[Request, BaseException], Response]


def request_id(request: Request) -> str:
    """The id of this request, shared by its response, its stream chunks and its error body."""
    rid: str = getattr(request.state, "request_id", None) or new_request_id()
    request.state.request_id = rid
    return rid


async def read_json(request: Request) -> Any:
    """The request body as JSON, or `InvalidRequest` (both dialects answer it in their own shape)."""
    try:
        return json.loads(await request.body())
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None


def dashscope_error(request: Request, exc: BaseException) -> JSONResponse:
    status, body = dashscope_body(exc, request_id(request))
    return JSONResponse(body, status_code=status)


def openai_error(request: Request, exc: BaseException) -> JSONResponse:
    status, body = openai_body(exc)
    return JSONResponse(body, status_code=status)


def guarded_route(render: Render) -> type[APIRoute]:
    """An APIRoute class whose handlers' errors are rendered by `render`."""

    class GuardedRoute(APIRoute):
        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def guarded(request: Request) -> Response:
                try:
                    return await handler(request)
                except Exception as exc:
                    return render(request, exc)

            return guarded

    return GuardedRoute
