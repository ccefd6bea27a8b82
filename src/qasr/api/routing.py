"""One route class per dialect: any error a handler raises becomes that dialect's error body, through
the one table in `qasr.api.errors`; handlers carry no try/except of their own."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel
from starlette.datastructures import FormData
from starlette.exceptions import HTTPException

from qasr.api.edge import new_request_id
from qasr.api.errors import dashscope_body, openai_body, wire_headers
from qasr.errors import InvalidRequest, StorageFull, UnsupportedMediaType

Render = Callable[[Request, BaseException], Response]
log = logging.getLogger(__name__)
_DISK_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})


def request_id(request: Request) -> str:
    """The id of this request, shared by its response, its stream chunks and its error body."""
    rid: str = getattr(request.state, "request_id", None) or new_request_id()
    request.state.request_id = rid
    return rid


_PARSE_ON_LOOP_BYTES = 64 * 1024
"""JSON bodies up to this size are parsed on the event loop (well under a millisecond)."""


async def read_json(request: Request) -> Any:
    """The request body as JSON, or `InvalidRequest` (both dialects answer it in their own shape).

    The body must be declared `application/json` (parameters such as a charset allowed), else
    `UnsupportedMediaType` before a byte is read: a browser sends a cross-site POST without asking
    first only as text/plain, a form or with no type, so an open server on loopback is not reachable
    from any web page (issue 13). JSON nested past Python's recursion limit is invalid JSON here.
    """
    media_type = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if media_type != "application/json":
        raise UnsupportedMediaType("Send the request body as JSON, with `Content-Type: application/json`.")
    body = await request.body()
    try:
        if len(body) <= _PARSE_ON_LOOP_BYTES:
            return json.loads(body)
        # A large body (a data URI of megabytes) is parsed off the event loop: /health and every
        # other request keep being answered meanwhile (issue 13).
        return await asyncio.to_thread(json.loads, body)
    except RecursionError:
        raise InvalidRequest("The request body is not valid JSON: it is nested too deeply.") from None
    except ValueError:
        raise InvalidRequest("The request body is not valid JSON.") from None


@contextlib.asynccontextmanager
async def read_form(
    request: Request, *, max_files: int, max_fields: int, max_part_size: int = 1024 * 1024
) -> AsyncIterator[FormData]:
    """The request's multipart form, closed on leaving the block, with the two failures only a form has
    turned into domain errors: a malformed body (two files, no or a wrong boundary, a nameless part)
    is `InvalidRequest`, and a full disk while the form is spooled, or while the block stores its
    file, is `StorageFull` (507), logged for the operator without a traceback (issue 13)."""
    try:
        async with request.form(
            max_files=max_files, max_fields=max_fields, max_part_size=max_part_size
        ) as form:
            yield form
    except HTTPException as exc:  # Starlette's answer to a malformed or over-full multipart body
        raise InvalidRequest(f"The multipart form could not be read: {exc.detail}") from None
    except OSError as exc:
        if exc.errno not in _DISK_FULL:
            raise
        log.warning("no space left to store a request's form or upload: %s", exc.strerror)
        raise StorageFull("The server has no space left to store the upload; try again later.") from None


def json_body(model: type[BaseModel]) -> dict[str, Any]:
    """`openapi_extra` that documents a JSON request body shaped like `model`.

    Documentation only: the handler still reads the body with `read_json` and validates it with the
    protocol's parser, so a bad body gets the dialect's own error, never FastAPI's 422.
    """
    return _request_body("application/json", openapi_schema(model))


def form_body(model: type[BaseModel], file_field: str = "file") -> dict[str, Any]:
    """`openapi_extra` for a multipart form: `model`'s fields plus the uploaded file `file_field`."""
    schema = openapi_schema(model)
    schema["properties"] = {file_field: {"type": "string", "format": "binary"}, **schema["properties"]}
    schema["required"] = [file_field, *schema.get("required", [])]
    return _request_body("multipart/form-data", schema)


def openapi_schema(model: type[BaseModel]) -> dict[str, Any]:
    """`model`'s JSON schema with its `$defs` inlined: inside an OpenAPI document a `#/$defs/...`
    reference would point at the document's root, where there are none."""
    schema = model.model_json_schema()
    inlined: dict[str, Any] = _inline(schema, schema.pop("$defs", {}), ())
    return inlined


def _inline(node: Any, defs: dict[str, Any], seen: tuple[str, ...]) -> Any:
    if isinstance(node, list):
        return [_inline(item, defs, seen) for item in node]
    if not isinstance(node, dict):
        return node
    ref = node.get("$ref")
    if not isinstance(ref, str) or not ref.startswith("#/$defs/"):
        return {key: _inline(value, defs, seen) for key, value in node.items()}
    name = ref.removeprefix("#/$defs/")
    if name in seen:
        raise ValueError(f"recursive schema {name} cannot be inlined")
    rest = {key: value for key, value in node.items() if key != "$ref"}
    return {**_inline(defs[name], defs, (*seen, name)), **_inline(rest, defs, seen)}


def _request_body(media_type: str, schema: dict[str, Any]) -> dict[str, Any]:
    return {"requestBody": {"required": True, "content": {media_type: {"schema": schema}}}}


def dashscope_error(request: Request, exc: BaseException) -> JSONResponse:
    status, body = dashscope_body(exc, request_id(request))
    return JSONResponse(body, status_code=status, headers=wire_headers(exc))


def openai_error(request: Request, exc: BaseException) -> JSONResponse:
    status, body = openai_body(exc)
    return JSONResponse(body, status_code=status, headers=wire_headers(exc))


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
