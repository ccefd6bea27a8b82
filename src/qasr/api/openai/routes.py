"""OpenAI routes: chat completions (DashScope's compatible mode), audio transcriptions, the model list.

Each is served under `/v1` and `/compatible-mode/v1`, so one `base_url` works for all of them.
Handlers convert the wire request, call the pipeline and render; every error becomes one OpenAI error
body in `_OpenAIRoute`, through the one table in `qasr.api.errors`.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.datastructures import UploadFile

from qasr.api.errors import openai_body
from qasr.api.openai import protocol
from qasr.api.routing import form_body, guarded_route, json_body, openai_error, read_form, read_json
from qasr.api.services import MAX_CONTEXT_TOKENS, Services, services
from qasr.audio.decode import check_size
from qasr.errors import InvalidRequest
from qasr.types import Delta, Transcript

PREFIXES = ("/v1", "/compatible-mode/v1")
_DONE = b"data: [DONE]\n\n"
_MAX_FORM_FIELDS = 32


router = APIRouter(route_class=guarded_route(openai_error))


async def chat_completions(request: Request) -> Response:
    """One audio in, its transcript as the assistant message; `stream: true` for SSE chunks."""
    svc = services(request)
    api_key = svc.check_key(request)
    with svc.admit() as admission:  # 429 before the body is read, fetched or decoded
        body = await read_json(request)
        req = protocol.parse_chat_request(body)
        model = svc.check_model(req.model)
        audio, options = protocol.chat_to_domain(req)
        await svc.check_context(options.context)
        policy = svc.source_policy(api_key, model)
        meta = protocol.ChatMeta.new(req.model)
        limits = svc.settings.sync_limits
        if not req.stream:
            work = svc.transcriber.transcribe(audio, options, limits, policy, admission=admission)
            transcript = await svc.bounded(request, work)
            request.state.audio_s = transcript.duration_s
            return JSONResponse(protocol.chat_completion(meta, transcript))
        items = svc.stream(svc.transcriber.stream(audio, options, limits, policy, admission=admission))
        # Run up to the first result before answering 200, so input errors are plain JSON errors.
        first = await svc.bounded(request, items.__anext__())
    include_usage = req.stream_options is not None and req.stream_options.include_usage
    chat = protocol.ChatStream(meta, include_usage)
    return _event_stream(request, first, items, chat.chunks)


async def transcriptions(request: Request) -> Response:
    """OpenAI's `POST /audio/transcriptions`: a multipart form with the audio as `file`.

    `prompt` is used as context. `temperature` is validated (0 to 1) and then not used: decoding is
    always greedy, so the same audio always gives the same text. `timestamp_granularities[]=segment`
    is accepted (verbose_json always has segments); `word` adds the forced aligner's word times to
    verbose_json, or says why there are none (issue 14). srt and vtt cues follow word times when the
    aligner placed them.
    """
    svc = services(request)
    api_key = svc.check_key(request)
    with svc.admit() as admission:  # 429 before the upload is read or decoded
        form, data = await _read_upload(request, svc)
        model = svc.check_model(form.model)
        options = protocol.transcription_options(form)
        await svc.check_context(options.context)
        policy = svc.source_policy(api_key, model)
        limits = svc.settings.sync_limits
        if form.stream:
            items = svc.stream(svc.transcriber.stream(data, options, limits, policy, admission=admission))
            first = await svc.bounded(request, items.__anext__())
            return _event_stream(request, first, items, protocol.transcription_events)
        work = svc.transcriber.transcribe(data, options, limits, policy, admission=admission)
        transcript = await svc.bounded(request, work)
    request.state.audio_s = transcript.duration_s
    fmt = form.response_format
    if fmt == "json":
        return JSONResponse(protocol.transcription_json(transcript))
    if fmt == "verbose_json":
        words = "word" in form.timestamp_granularities
        aligner = svc.runtime.aligner is not None
        return JSONResponse(protocol.transcription_verbose(transcript, words, aligner))
    render, media_type = protocol.TEXT_FORMATS[fmt]
    return Response(render(transcript), media_type=media_type)


async def models(request: Request) -> Response:
    svc = services(request)
    svc.check_key(request)
    settings = svc.settings
    limits = {
        "max_audio_s": settings.max_audio_s,
        "max_audio_bytes": settings.max_audio_bytes,
        "max_body_bytes": settings.max_body_bytes,
        "max_context_tokens": MAX_CONTEXT_TOKENS,
        "request_timeout_s": settings.request_timeout_s,
        "max_queue_wait_s": settings.max_queue_wait_s,
    }
    return JSONResponse(protocol.model_list(settings.served_model_name, limits))


for _prefix in PREFIXES:
    router.add_api_route(
        f"{_prefix}/chat/completions",
        chat_completions,
        methods=["POST"],
        openapi_extra=json_body(protocol.ChatCompletionRequest),
    )
    router.add_api_route(
        f"{_prefix}/audio/transcriptions",
        transcriptions,
        methods=["POST"],
        openapi_extra=form_body(protocol.TranscriptionForm),
    )
    router.add_api_route(f"{_prefix}/models", models, methods=["GET"])


async def _read_upload(request: Request, svc: Services) -> tuple[protocol.TranscriptionForm, bytes]:
    """The form's fields, validated, and the file's bytes (refused over `max_audio_bytes` unread)."""
    if not request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        raise InvalidRequest(
            "Send a multipart/form-data body: the audio as the file part `file`, plus `model` and options."
        )
    async with read_form(request, max_files=1, max_fields=_MAX_FORM_FIELDS) as form:
        file = form.get("file")
        fields: dict[str, list[str]] = {}
        for name, value in form.multi_items():
            if isinstance(value, str):
                fields.setdefault(name, []).append(value)
        params = protocol.parse_transcription_form(fields)
        if not isinstance(file, UploadFile):
            raise InvalidRequest(
                "Missing `file`: send the audio as the multipart/form-data file part `file`.",
                param="file",
            )
        if file.size is not None:
            check_size(file.size, svc.settings.sync_limits)
        return params, await file.read()


def _event_stream(
    request: Request,
    first: Delta | Transcript,
    items: AsyncIterator[Delta | Transcript],
    events: Callable[[Delta | Transcript], list[dict[str, Any]]],
) -> StreamingResponse:
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    return StreamingResponse(
        _sse(request, first, items, events), media_type="text/event-stream; charset=utf-8", headers=headers
    )


async def _sse(
    request: Request,
    first: Delta | Transcript,
    items: AsyncIterator[Delta | Transcript],
    events: Callable[[Delta | Transcript], list[dict[str, Any]]],
) -> AsyncIterator[bytes]:
    """OpenAI SSE: `data: <json>` events, then `data: [DONE]`. An error after the first byte becomes
    one `data: {"error": ...}` event (the SDK raises it), then `[DONE]`."""
    try:
        item = first
        while True:
            for event in events(item):
                yield _frame(event)
            if isinstance(item, Transcript):
                request.state.audio_s = item.duration_s
                break
            item = await items.__anext__()
    except Exception as exc:
        yield _frame(openai_body(exc)[1])
    finally:
        with contextlib.suppress(BaseException):
            await items.aclose()  # type: ignore[attr-defined]
    yield _DONE


def _frame(body: dict[str, Any]) -> bytes:
    return f"data: {json.dumps(body, ensure_ascii=False, separators=(',', ':'))}\n\n".encode()
