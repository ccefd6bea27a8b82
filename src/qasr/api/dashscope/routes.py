"""DashScope routes: the generation endpoint (JSON and SSE) and the SDK's temporary-upload flow.
Handlers convert the wire request, call the pipeline, and render; errors go through the one table."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from qasr.api.dashscope import protocol
from qasr.api.errors import dashscope_body
from qasr.api.routing import dashscope_error, guarded_route, json_body, read_form, read_json, request_id
from qasr.api.services import services
from qasr.errors import InvalidRequest
from qasr.types import Delta, Transcript

router = APIRouter(route_class=guarded_route(dashscope_error))
log = logging.getLogger(__name__)


def _scheme(audio: str) -> str:
    """What kind of reference a request used (logged without the rest of the URL)."""
    head = audio[:16].split(":", 1)[0].lower() if ":" in audio[:16] else "path"
    return f"{head}://" if head in {"http", "https", "oss", "file"} else head


@router.post(
    "/api/v1/services/aigc/multimodal-generation/generation",
    openapi_extra=json_body(protocol.GenerationRequest),
)
async def generation(request: Request) -> Response:
    svc = services(request)
    rid = request_id(request)
    api_key = svc.check_key(request)
    with svc.admit() as admission:  # 429 before the body is read, fetched or decoded
        body = await read_json(request)
        req = protocol.parse_request(body)
        model = svc.check_model(req.model)
        audio, options = protocol.to_domain(req)
        stream = request.headers.get("x-dashscope-sse", "").lower() == "enable"
        log.info("generation %s: audio %s, stream=%s", rid, _scheme(audio), stream)
        await svc.check_context(options.context)
        policy = svc.source_policy(api_key, model)
        limits = svc.settings.sync_limits
        if not stream:
            work = svc.transcriber.transcribe(audio, options, limits, policy, admission=admission)
            transcript = await svc.bounded(request, work)
            request.state.audio_s = transcript.duration_s
            return JSONResponse(protocol.transcript_body(transcript, rid))
        incremental = req.parameters.incremental_output
        if incremental is None:
            incremental = svc.settings.incremental_output_default
        items = svc.stream(svc.transcriber.stream(audio, options, limits, policy, admission=admission))
        # Run up to the first result before answering 200, so input errors are plain JSON errors.
        first = await svc.bounded(request, items.__anext__())
    return StreamingResponse(_sse(request, first, items, incremental, rid), media_type=_SSE_TYPE)


_SSE_TYPE = "text/event-stream;charset=UTF-8"


async def _sse(
    request: Request,
    first: Delta | Transcript,
    items: AsyncIterator[Delta | Transcript],
    incremental: bool,
    rid: str,
) -> AsyncIterator[bytes]:
    """DashScope SSE (spec 5.1): `id:`, `event:result`, `:HTTP_STATUS/200`, `data:` with no spaces.
    Usage comes from the token counts the model reported (`Delta.output_tokens`): nothing is
    re-tokenized here."""
    event_id = 0
    text = ""
    language: str | None = None
    try:
        item: Delta | Transcript | None = first
        while item is not None:
            if isinstance(item, Transcript):
                request.state.audio_s = item.duration_s
                final_text = "" if incremental else item.text
                usage = protocol.usage(item.duration_s, item.usage.context_tokens, item.usage.output_tokens)
                body = protocol.result_body(final_text, item.language, item.finish_reason, usage, rid)
                event_id += 1
                yield _frame(event_id, "result", 200, body)
                return
            language = item.language or language
            if item.text:
                text += item.text
                usage = protocol.usage(0.0, 0, item.output_tokens)
                body = protocol.result_body(item.text if incremental else text, language, "null", usage, rid)
                event_id += 1
                yield _frame(event_id, "result", 200, body)
            item = await items.__anext__()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        status, err = dashscope_body(exc, rid)
        event_id += 1
        # One error event, then the stream ends (spec 5.4); `event:error` without a space.
        yield _frame(event_id, "error", status, err)
    finally:
        with contextlib.suppress(BaseException):
            await items.aclose()  # type: ignore[attr-defined]


def _frame(event_id: int, event: str, status: int, body: dict[str, Any]) -> bytes:
    data = json.dumps(body, ensure_ascii=False, separators=(",", ":"))
    return f"id:{event_id}\nevent:{event}\n:HTTP_STATUS/{status}\ndata:{data}\n\n".encode()


@router.get("/api/v1/uploads")
async def get_policy(request: Request, action: str = "", model: str = "") -> Response:
    """Step 1 of the SDK's local-file flow (spec 3.2): a signed policy whose host is this server."""
    svc = services(request)
    api_key = svc.check_key(request)
    if action != "getPolicy":
        raise InvalidRequest("Unsupported action: use action=getPolicy.", param="action")
    model = svc.check_model(model, uploads=True)
    upload_host = svc.public_base(request) + UPLOAD_PATH
    data = await asyncio.to_thread(svc.uploads.issue_policy, api_key, model, upload_host)
    return JSONResponse({"request_id": request_id(request), "data": data})


UPLOAD_PATH = "/api/v1/uploads/oss"


@router.post(UPLOAD_PATH)
async def upload(request: Request) -> Response:
    """Step 2 (spec 3.3): the multipart POST, authorised only by the signed policy; 200 on success."""
    svc = services(request)
    limit = svc.settings.upload_max_bytes + 1
    async with read_form(request, max_files=1, max_fields=20, max_part_size=limit) as form:
        fields = {k: v for k, v in form.items() if isinstance(v, str)}
        file = form.get("file")
        if file is None or isinstance(file, str):
            raise InvalidRequest("The upload has no `file` part.", param="file")
        await asyncio.to_thread(svc.uploads.accept_upload, fields, file.filename, file.file)
    return Response(status_code=200)
