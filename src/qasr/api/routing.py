"""One route class per dialect: any error a handler raises becomes that dialect's error body, through
the one table in `qasr.api.errors`; handlers carry no try/except of their own."""

from __future__ import annotations

import json
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel

from qasr.api.edge import new_request_id
from qasr.api.errors import dashscope_body, openai_body, wire_headers
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
