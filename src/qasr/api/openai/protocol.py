"""OpenAI wire schemas and the conversions to and from domain types, for two endpoints:

- chat completions as DashScope's OpenAI-compatible mode defines them for qwen3-asr-flash (spec
  section 8): a system message with context, one user message with one audio part, `asr_options`;
- audio transcriptions as OpenAI defines them (multipart form; json, text, srt, vtt, verbose_json; an
  SSE stream of `transcript.text.*` events).

Pydantic only; no web framework in here. Every language in a response is a code (`en`, `zh`), never
a name, for both endpoints.
"""

from __future__ import annotations

import math
import re
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from qasr.api.dashscope.protocol import AsrOptions
from qasr.errors import InvalidRequest, format_value
from qasr.text.languages import normalize_code
from qasr.text.subtitles import to_srt, to_vtt
from qasr.text.words import aligner_supports
from qasr.types import Delta, TranscribeOptions, Transcript

M = TypeVar("M", bound=BaseModel)

# A URI scheme. Raw base64 (OpenAI's own `input_audio.data`) never contains a colon.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class _Lenient(BaseModel):
    # Clients send fields we do not use (temperature, max_tokens, modalities, user...): ignore them.
    model_config = ConfigDict(extra="ignore")


def _validate(cls: type[M], data: Any) -> M:
    """`cls` from `data`, or `InvalidRequest` naming the first bad field."""
    try:
        return cls.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        message = first["msg"].removeprefix("Value error, ")  # our own validators' sentences
        raise InvalidRequest(f"Invalid `{where}`: {message}.", param=where) from None


# --- chat completions (spec section 8) --------------------------------------------------------------


class InputAudio(_Lenient):
    """The audio of an `input_audio` part: `data` (DashScope, OpenAI) or `url` (clients that treat
    it like `image_url`; issue 12), exactly one of them."""

    data: str | None = None
    """A URL, a data URI, or raw base64 (then `format` names the container)."""
    url: str | None = None
    """A URL or a data URI."""
    format: str | None = None

    @model_validator(mode="after")
    def _one_source(self) -> InputAudio:
        if bool(self.data) == bool(self.url):
            raise ValueError(
                "give either `data` (a URL, a data URI or base64) or `url` (a URL or a data URI)"
            )
        if self.url is not None and not _URI.match(self.url.strip()):
            raise ValueError("`url` must be a URL or a data URI")
        return self


class AudioUrl(_Lenient):
    url: str


class ContentPart(_Lenient):
    """A text part, or an audio part in one of the shapes clients send: `input_audio` (DashScope,
    OpenAI) or `audio_url` (vLLM and others; an object with `url`, or the URL itself)."""

    type: str | None = None
    text: str | None = None
    input_audio: InputAudio | None = None
    audio_url: AudioUrl | str | None = None


class ChatMessage(_Lenient):
    role: str
    content: list[ContentPart] | None = None
    """A list of parts, or a string (taken as one text part)."""

    @field_validator("content", mode="before")
    @classmethod
    def _string_is_a_text_part(cls, value: Any) -> Any:
        # Converted before validation, not declared as `str | list`: an error inside a part then names
        # the part (`messages.1.content.0.input_audio`), not the union's `str` arm (issue 12).
        return [{"type": "text", "text": value}] if isinstance(value, str) else value


class StreamOptions(_Lenient):
    include_usage: bool = False


class ChatCompletionRequest(_Lenient):
    model: str
    messages: list[ChatMessage]
    stream: bool = False
    stream_options: StreamOptions | None = None
    asr_options: AsrOptions = AsrOptions()
    """Top level in this mode (the SDK's `extra_body`), the same object as DashScope's."""


def parse_chat_request(body: Any) -> ChatCompletionRequest:
    """Validate a chat completion body; raise `InvalidRequest` for anything unusable."""
    if not isinstance(body, dict):
        raise InvalidRequest("The request body must be a JSON object.")
    if not body.get("model"):
        raise InvalidRequest("Missing `model`: use qwen3-asr-flash.", param="model")
    if not body.get("messages"):
        raise InvalidRequest("Missing `messages`.", param="messages")
    req = _validate(ChatCompletionRequest, body)
    if req.stream_options is not None and not req.stream:
        raise InvalidRequest(
            "`stream_options` is only allowed when `stream` is true.", param="stream_options"
        )
    return req


def chat_to_domain(req: ChatCompletionRequest) -> tuple[str, TranscribeOptions]:
    """The audio reference and options of a chat request.

    System text (a string or text parts) is the context. The user message must hold exactly one audio
    part; text parts beside it are ignored, as clients written for other servers add an instruction
    ("Transcribe this audio") that is not context.
    """
    context: list[str] = []
    audio: list[str] = []
    for message in req.messages:
        parts = message.content or []
        if message.role == "system":
            context += [p.text for p in parts if p.text]
        elif message.role == "user":
            audio += [ref for p in parts if (ref := _audio_reference(p)) is not None]
        else:
            raise InvalidRequest(
                f"Message role {format_value(message.role)!r} is not supported: send one user message "
                "with one audio part and an optional system message with context.",
                param="messages",
            )
    if sum(m.role == "user" for m in req.messages) != 1 or len(audio) != 1:
        raise InvalidRequest(
            "Send exactly one user message with exactly one audio part "
            '({"type": "input_audio", "input_audio": {"data": <URL or data URI>}}).',
            param="messages",
        )
    asr = req.asr_options
    options = TranscribeOptions(
        language=normalize_code(asr.language), context="\n".join(context), enable_itn=asr.enable_itn
    )
    return audio[0], options


def _audio_reference(part: ContentPart) -> str | None:
    if part.input_audio is not None:
        if part.input_audio.url:
            return part.input_audio.url.strip()
        data = (part.input_audio.data or "").strip()
        if _URI.match(data):
            return data
        # OpenAI's own shape: bare base64 plus a format name; the decoder sniffs the container.
        return f"data:audio/{part.input_audio.format or 'unknown'};base64,{data}"
    if isinstance(part.audio_url, AudioUrl):
        return part.audio_url.url
    return part.audio_url


@dataclass(frozen=True)
class ChatMeta:
    """What every response or chunk of one completion repeats."""

    id: str
    created: int
    model: str
    """The model name the caller sent, echoed."""

    @classmethod
    def new(cls, model: str) -> ChatMeta:
        return cls(f"chatcmpl-{uuid.uuid4()}", int(time.time()), model)


def audio_seconds(duration_s: float) -> int:
    """Billed seconds as the cloud reports them: partial seconds round up (spec section 7)."""
    return max(1, math.ceil(duration_s)) if duration_s > 0 else 0


def chat_usage(t: Transcript) -> dict[str, Any]:
    completion_tokens = t.usage.output_tokens  # counted where the model ran
    audio, context = t.usage.audio_tokens, t.usage.context_tokens
    return {
        "prompt_tokens": audio + context,
        "completion_tokens": completion_tokens,
        "total_tokens": audio + context + completion_tokens,
        "prompt_tokens_details": {"audio_tokens": audio, "text_tokens": context},
        "completion_tokens_details": {"text_tokens": completion_tokens},
        "seconds": audio_seconds(t.duration_s),
    }


def language_annotations(language: str | None) -> list[dict[str, str]]:
    """The language annotation, always with `language` as in every cloud response (an empty string
    when no speech was heard; issue 12). No `emotion`: the open model does not predict one."""
    return [{"type": "audio_info", "language": language or ""}]


def chat_completion(meta: ChatMeta, t: Transcript) -> dict[str, Any]:
    message = {"role": "assistant", "content": t.text, "annotations": language_annotations(t.language)}
    return {
        "id": meta.id,
        "object": "chat.completion",
        "created": meta.created,
        "model": meta.model,
        "choices": [{"index": 0, "message": message, "finish_reason": t.finish_reason, "logprobs": None}],
        "usage": chat_usage(t),
    }


class ChatStream:
    """Turns the pipeline's items into `chat.completion.chunk` bodies (spec section 8): a first chunk
    with the role, the language annotation once it is known (at the latest on the `finish_reason`
    chunk, with an empty language when no speech was heard), text deltas, a chunk with
    `finish_reason`, and with `include_usage` a last chunk with `choices: []` and the usage."""

    def __init__(self, meta: ChatMeta, include_usage: bool) -> None:
        self.meta = meta
        self.include_usage = include_usage
        self._opened = False
        self._language_sent = False

    def chunks(self, item: Delta | Transcript) -> list[dict[str, Any]]:
        out = [] if self._opened else [self._chunk({"role": "assistant", "content": ""})]
        self._opened = True
        delta = self._language(item.language, final=isinstance(item, Transcript))
        if isinstance(item, Transcript):
            out.append(self._chunk(delta, finish_reason=item.finish_reason))
            if self.include_usage:
                out.append(self._usage_chunk(chat_usage(item)))
        elif item.text or delta:
            out.append(self._chunk({**delta, "content": item.text}))
        return out

    def _language(self, language: str | None, final: bool) -> dict[str, Any]:
        if self._language_sent or not (language or final):
            return {}
        self._language_sent = True
        return {"annotations": language_annotations(language)}

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return {**self._head(), "choices": [choice], "usage": None}

    def _usage_chunk(self, usage: dict[str, Any]) -> dict[str, Any]:
        return {**self._head(), "choices": [], "usage": usage}

    def _head(self) -> dict[str, Any]:
        m = self.meta
        return {"id": m.id, "object": "chat.completion.chunk", "created": m.created, "model": m.model}


# --- audio transcriptions ----------------------------------------------------------------------------

ResponseFormat = Literal["json", "text", "srt", "vtt", "verbose_json"]


class TranscriptionForm(_Lenient):
    """The form fields of `POST /v1/audio/transcriptions` (the file part is the route's)."""

    model: str
    language: str | None = None
    """ISO code to force, e.g. `en`; empty or absent: detect."""
    prompt: str = ""
    """Used as context (hotwords, names, domain text), like the chat system message."""
    response_format: ResponseFormat = "json"
    temperature: float = Field(0.0, ge=0.0, le=1.0)
    """Validated, then not used: decoding is always greedy, so the same audio gives the same text."""
    timestamp_granularities: list[Literal["segment", "word"]] = []
    stream: bool = False
    enable_itn: bool = False
    """qasr extension (the cloud's `asr_options.enable_itn`): spoken numbers as digits, zh and en."""


_LIST_FIELDS = frozenset({"timestamp_granularities"})


def parse_transcription_form(fields: Mapping[str, list[str]]) -> TranscriptionForm:
    """Validate the form's text fields (every value of each name); raise `InvalidRequest`.

    `timestamp_granularities[]` is the SDK's field name (repeated per value); the bare name is accepted
    too. Other fields take their last value. Empty values count as absent, as curl users send
    `-F language=` to mean "detect".
    """
    data: dict[str, str | list[str]] = {}
    for name, values in fields.items():
        key, present = name.removesuffix("[]"), [v for v in values if v != ""]
        if present:
            data[key] = [*data.get(key, []), *present] if key in _LIST_FIELDS else present[-1]
    if not data.get("model"):
        raise InvalidRequest("Missing `model`: use qwen3-asr-flash.", param="model")
    form = _validate(TranscriptionForm, data)
    if form.stream and form.response_format not in ("json", "text"):
        raise InvalidRequest(
            "A stream carries text events only: use response_format json or text with stream=true.",
            param="response_format",
        )
    return form


def wants_words(form: TranscriptionForm) -> bool:
    """Word times are asked for: `verbose_json` with the `word` granularity, or subtitles (whose cues
    then start when their first word is spoken)."""
    verbose_words = form.response_format == "verbose_json" and "word" in form.timestamp_granularities
    return verbose_words or form.response_format in ("srt", "vtt")


def transcription_options(form: TranscriptionForm) -> TranscribeOptions:
    return TranscribeOptions(
        language=normalize_code(form.language),
        context=form.prompt,
        enable_itn=form.enable_itn,
        timestamps="word" if wants_words(form) else "segment",
    )


def transcription_usage(t: Transcript) -> dict[str, Any]:
    output_tokens = t.usage.output_tokens  # counted where the model ran
    """Token usage in the `tokens` shape of OpenAI's transcription usage."""
    audio, context = t.usage.audio_tokens, t.usage.context_tokens
    return {
        "type": "tokens",
        "input_tokens": audio + context,
        "input_token_details": {"audio_tokens": audio, "text_tokens": context},
        "output_tokens": output_tokens,
        "total_tokens": audio + context + output_tokens,
    }


def transcription_json(t: Transcript) -> dict[str, Any]:
    """`json`: OpenAI's `text` and `usage`, plus `language` (a code: the forced one, or the detected one; null when no speech was heard and none was forced)
    and `languages` (every language detected, longest first)."""
    return {
        "text": t.text,
        "language": t.language,
        "languages": [{"code": code} for code in t.languages],
        "usage": transcription_usage(t),
    }


def transcription_verbose(t: Transcript, words: bool = False, aligner: bool = False) -> dict[str, Any]:
    """`verbose_json`. `language` is a code (`en`), not OpenAI's name (`english`), as everywhere in
    qasr; null when no speech was heard and none was forced. Segments carry only what the pipeline measures (id, start,
    end, text): no log-probabilities or compression ratios are made up.

    `words` (the `word` granularity): OpenAI's top-level `words: [{word, start, end}]` (plus
    `repaired: true` on words whose times were repaired), from the segments
    the forced aligner placed (`aligner`: one is loaded). Where some or all could not be placed, the
    qasr extension `word_timestamps` says why; their words are left out, never given invented times."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": t.language,
        "duration": round(t.duration_s, 3),
        "text": t.text,
        "segments": [
            {"id": k, "start": round(s.start_s, 3), "end": round(s.end_s, 3), "text": s.text}
            for k, s in enumerate(t.segments)
        ],
    }
    if words:
        body["words"] = [
            # `repaired` (a qasr extension, only when true): the aligner gave this word no time of its
            # own (zero-length or out of order), so its times were repaired against its neighbours.
            {"word": w.text, "start": w.start_s, "end": w.end_s, **({"repaired": True} if w.repaired else {})}
            for s in t.segments
            if s.word_timing == "word"
            for w in s.words
        ]
        problem = word_timestamps_problem(t, aligner)
        if problem is not None:
            body["word_timestamps"] = problem
    body["usage"] = {"type": "duration", "seconds": audio_seconds(t.duration_s)}
    return body


def word_timestamps_problem(t: Transcript, aligner: bool) -> str | None:
    """Why some or all segments have segment-level times only; None when every one has word times."""
    missing = [s for s in t.segments if s.word_timing != "word"]
    if not missing:
        return None
    kind = "partial" if len(missing) < len(t.segments) else "unavailable"
    if not aligner:
        return f"{kind}: no forced aligner is loaded (QASR_ALIGNER); segment-level times only"
    languages = sorted({s.language or "unknown" for s in missing if not aligner_supports(s.language)})
    if languages:
        return (
            f"{kind}: the forced aligner does not cover {', '.join(languages)}; "
            "segment-level times only for that speech"
        )
    return f"{kind}: a segment could not be aligned (longer than the aligner takes); segment-level times"


TEXT_FORMATS: dict[str, tuple[Callable[[Transcript], str], str]] = {
    # `text` ends with a newline like any text file; srt has no registered type, x-subrip is common.
    "text": (lambda t: t.text + "\n", "text/plain; charset=utf-8"),
    "srt": (lambda t: to_srt(t.segments), "application/x-subrip; charset=utf-8"),
    "vtt": (lambda t: to_vtt(t.segments), "text/vtt; charset=utf-8"),
}
"""Renderer and content type of each response format that is not JSON."""


def transcription_events(item: Delta | Transcript) -> list[dict[str, Any]]:
    """OpenAI's transcription stream events: `transcript.text.delta` per piece of text, then one
    `transcript.text.done` with the whole text and the usage."""
    if isinstance(item, Transcript):
        done: dict[str, Any] = {"type": "transcript.text.done", "text": item.text}
        done["languages"] = [{"code": code} for code in item.languages]
        done["usage"] = transcription_usage(item)
        return [done]
    return [{"type": "transcript.text.delta", "delta": item.text}] if item.text else []


def model_list(served_model_name: str, limits: dict[str, Any]) -> dict[str, Any]:
    """OpenAI's model list; `limits` (a qasr extension) are the input limits the server enforces."""
    model = {
        "id": served_model_name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "qasr",
        "limits": limits,
    }
    return {"object": "list", "data": [model]}
