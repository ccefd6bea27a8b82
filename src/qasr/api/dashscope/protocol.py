"""DashScope wire schemas for qwen3-asr-flash (spec sections 2, 4 and 5) and the conversions to and
from domain types. Pydantic only; no web framework in here."""

from __future__ import annotations

import math
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from qasr.errors import InvalidRequest, format_value
from qasr.text.languages import normalize_code
from qasr.types import TranscribeOptions, Transcript


class _Lenient(BaseModel):
    # The SDK and users send keys we do not use (image, video, temperature, seed...): ignore them.
    model_config = ConfigDict(extra="ignore")


class ContentItem(_Lenient):
    text: str | None = None
    audio: str | None = None


class Message(_Lenient):
    role: str
    content: list[ContentItem] | str = []


class Input(_Lenient):
    messages: list[Message]


class AsrOptions(_Lenient):
    language: str | None = None
    enable_itn: bool = False
    enable_lid: bool | None = None
    """Accepted and ignored: the language is always returned (spec section 7)."""


class Parameters(_Lenient):
    asr_options: AsrOptions = AsrOptions()
    result_format: str | None = None
    incremental_output: bool | None = None


class GenerationRequest(_Lenient):
    model: str
    input: Input
    parameters: Parameters = Parameters()


def parse_request(body: Any) -> GenerationRequest:
    """Validate the JSON body with the cloud's error codes' meaning; raise `InvalidRequest`."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not body.get("model"):
        raise InvalidRequest("Missing `model`.", param="model")
    if not body.get("input"):
        raise InvalidRequest("Missing `input`.", param="input")
    try:
        return GenerationRequest.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidRequest(f"Invalid `{where}`: {first['msg']}.", param=where) from None


def to_domain(req: GenerationRequest) -> tuple[str, TranscribeOptions]:
    """The audio reference and options of a generation request (exactly one user audio item)."""
    context_parts: list[str] = []
    audio: list[str] = []
    for message in req.input.messages:
        items = [ContentItem(text=message.content)] if isinstance(message.content, str) else message.content
        if message.role == "system":
            context_parts += [i.text for i in items if i.text]
        elif message.role == "user":
            audio += [i.audio for i in items if i.audio]
        else:
            raise InvalidRequest(
                f"Message role {format_value(message.role)!r} is not supported: qwen3-asr-flash takes "
                "one user message with one audio item and an optional system message with context.",
                param="input.messages",
            )
    if sum(m.role == "user" for m in req.input.messages) != 1 or len(audio) != 1:
        raise InvalidRequest(
            "Send exactly one user message with exactly one `audio` item.", param="input.messages"
        )
    fmt = req.parameters.result_format
    if fmt not in (None, "message", "text"):
        raise InvalidRequest(
            f"Unsupported result_format {format_value(fmt)!r}: use message.", param="result_format"
        )
    asr = req.parameters.asr_options
    options = TranscribeOptions(
        language=normalize_code(asr.language), context="\n".join(context_parts), enable_itn=asr.enable_itn
    )
    return audio[0], options


def usage(seconds: float, context_tokens: int, text_tokens: int) -> dict[str, Any]:
    return {
        "input_tokens_details": {"text_tokens": context_tokens},
        "output_tokens_details": {"text_tokens": text_tokens},
        "seconds": max(1, math.ceil(seconds)) if seconds > 0 else 0,
    }


def result_body(
    text: str, language: str | None, finish_reason: str, usage_body: dict[str, Any], request_id: str
) -> dict[str, Any]:
    """A response (or stream chunk) in message format. The annotation always carries `language`, as
    every cloud response does (an empty string when no speech was heard): Alibaba's own
    qwen3-asr-toolkit reads `annotations[0]["language"]` and fails the whole file without it (issue
    12). No `emotion`: the open model does not predict one."""
    annotation = {"type": "audio_info", "language": language or ""}
    return {
        "output": {
            "choices": [
                {
                    "finish_reason": finish_reason,
                    "message": {
                        "role": "assistant",
                        "content": [{"text": text}],
                        "annotations": [annotation],
                    },
                }
            ]
        },
        "usage": usage_body,
        "request_id": request_id,
    }


def transcript_body(t: Transcript, request_id: str) -> dict[str, Any]:
    """The non-streamed answer; usage from the token counts the model reported."""
    return result_body(
        t.text,
        t.language,
        t.finish_reason,
        usage(t.duration_s, t.usage.context_tokens, t.usage.output_tokens),
        request_id,
    )
