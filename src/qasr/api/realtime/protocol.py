"""The realtime API on the wire (docs/spec/realtime.md Part 1): the session configuration that
`session.update` sets, and every server event, built here and nowhere else.

Events are plain JSON objects. Fields are sent only when something computed them: no `emotion` (no
model here predicts one), no `language` while it is not known.
"""

from __future__ import annotations

import asyncio
import json
import math
import uuid
from dataclasses import dataclass, replace
from typing import Any

from qasr.api.errors import classify
from qasr.errors import InvalidRequest, QasrError, UnknownLanguage, format_value
from qasr.live import LiveOptions
from qasr.text.languages import normalize_code
from qasr.types import SAMPLE_RATE

SAMPLE_RATES = (16000, 8000)
"""Input sample rates the cloud documents; 8 kHz is upsampled to 16 kHz."""
PCM_FORMATS = ("pcm", "pcm16")
"""Names of 16-bit little-endian mono PCM: `pcm` (the documented one) and `pcm16` (what the SDK's
`AudioFormat` enum sends when no `TranscriptionParams` are given)."""
MAX_CONTEXT_CHARS = 160_000
"""`corpus.text` longer than this is refused unread (the token limit is checked by the session)."""
SILENCE_MS_RANGE = (200, 6000)
"""`turn_detection.silence_duration_ms` range the SDK documents."""
MAX_PREFIX_PADDING_MS = 2000
_PARSE_ON_LOOP_CHARS = 64 * 1024
UNSUPPORTED_EVENTS = (
    "response.create",
    "response.cancel",
    "conversation.item.create",
    "conversation.item.delete",
    "conversation.item.truncate",
    "input_image_buffer.append",
)
"""Client events the SDK defines that mean nothing for recognition: refused with an `error` event."""


def new_id(prefix: str) -> str:
    return f"{prefix}_{uuid.uuid4().hex}"


class EventError(QasrError):
    """A client event the server refuses: answered with one `error` event; the session goes on unless
    the caller ends it."""

    def __init__(
        self,
        message: str,
        *,
        code: str = "invalid_value",
        param: str | None = None,
        kind: str = "invalid_request_error",
    ) -> None:
        super().__init__(message)
        self.code = code
        self.param = param
        self.kind = kind

    @classmethod
    def of(cls, exc: BaseException) -> EventError:
        """A domain error (`qasr.errors`) as an `error` event, through the one error table."""
        if isinstance(exc, EventError):
            return exc
        wire, message = classify(exc)
        code = wire.openai_code
        if type(exc) is InvalidRequest:
            code = "invalid_value"  # the cloud's code for a value it refuses
        return cls(message, code=code, param=getattr(exc, "param", None), kind=wire.openai_type)


@dataclass(frozen=True)
class TurnDetection:
    """Server VAD as the cloud configures it (`turn_detection`); see `speech_probability`."""

    threshold: float = 0.2
    """The cloud's sensitivity in [-1, 1]: higher needs louder, clearer speech."""
    silence_duration_ms: int = 800
    """Silence that ends an utterance."""
    prefix_padding_ms: int = 300
    """Audio from before the detected start of speech kept at the start of the utterance."""

    @property
    def speech_probability(self) -> float:
        """The Silero speech probability at which a 32 ms frame counts as speech: the cloud's
        threshold mapped linearly from [-1, 1] onto [0, 1] (0.2 -> 0.6; 0.0 -> 0.5, Silero's own
        default), kept within [0.05, 0.95] so that neither end means "always" or "never"."""
        return min(0.95, max(0.05, (self.threshold + 1.0) / 2.0))

    def to_wire(self) -> dict[str, Any]:
        return {
            "type": "server_vad",
            "threshold": self.threshold,
            "prefix_padding_ms": self.prefix_padding_ms,
            "silence_duration_ms": self.silence_duration_ms,
        }


@dataclass(frozen=True)
class SessionConfig:
    """What a session runs with; the defaults are the cloud's (server VAD on, 16 kHz PCM)."""

    input_audio_format: str = "pcm"
    sample_rate: int = 16000
    language: str | None = None
    """Forced language code (normalized); None: detect."""
    context: str = ""
    """`corpus.text`: hotwords or domain text for the model's system turn."""
    enable_itn: bool = False
    """qasr's extension (`input_audio_transcription.enable_itn`): inverse text normalization of the
    final transcripts, as `asr_options.enable_itn` does in the other APIs."""
    turn_detection: TurnDetection | None = TurnDetection()
    """None: manual mode (the client commits each utterance)."""

    def live_options(self) -> LiveOptions:
        return LiveOptions(language=self.language, context=self.context, enable_itn=self.enable_itn)

    def to_wire(self, session_id: str, model: str) -> dict[str, Any]:
        transcription: dict[str, Any] = {}
        if self.language is not None:
            transcription["language"] = self.language
        if self.context:
            transcription["corpus"] = {"text": self.context}
        if self.enable_itn:
            transcription["enable_itn"] = True
        return {
            "id": session_id,
            "object": "realtime.session",
            "model": model,
            "modalities": ["text"],
            "input_audio_format": self.input_audio_format,
            "sample_rate": self.sample_rate,
            "input_audio_transcription": transcription,
            "turn_detection": self.turn_detection.to_wire() if self.turn_detection else None,
        }


def apply_update(config: SessionConfig, session: object) -> SessionConfig:
    """`config` changed by the `session` object of a `session.update`; unknown keys are ignored (the
    SDK sends `voice`, `modalities`, `output_audio_format` and more that mean nothing here)."""
    if not isinstance(session, dict):
        raise EventError("`session` must be an object.", param="session")
    changes: dict[str, Any] = {}
    audio_format = session.get("input_audio_format")
    rate = session.get("sample_rate")
    nested = _dig(session, "audio", "input", "format")
    if nested is not None:  # the SDK's `input_audio_config`: session.audio.input.format {type, sample_rate}
        if not isinstance(nested, dict):
            raise EventError("`session.audio.input.format` must be an object.", param="session.audio")
        audio_format = nested.get("type", audio_format)
        rate = nested.get("sample_rate", rate)
    if audio_format is not None:
        changes["input_audio_format"] = _audio_format(audio_format)
    if rate is not None:
        changes["sample_rate"] = _sample_rate(rate)
    if "input_audio_transcription" in session:
        changes.update(_transcription(session["input_audio_transcription"]))
    if "turn_detection" in session:
        changes["turn_detection"] = _turn_detection(session["turn_detection"], config.turn_detection)
    return replace(config, **changes)


def _dig(obj: dict[str, Any], *keys: str) -> object:
    value: object = obj
    for key in keys:
        if not isinstance(value, dict):
            return None
        value = value.get(key)
    return value


def _audio_format(value: object) -> str:
    if value == "opus":
        # The cloud lists opus, but documents neither its framing (raw packets or Ogg pages, per
        # append or across appends) nor its frame sizes; guessing would decode garbage.
        raise EventError(
            "input_audio_format `opus` is not supported by this server: send 16-bit mono PCM "
            "(`pcm`) at 16000 or 8000 Hz.",
            param="session.input_audio_format",
        )
    if value not in PCM_FORMATS:
        raise EventError(
            f"Invalid input_audio_format {format_value(value)!r}: use `pcm` (16-bit little-endian mono).",
            param="session.input_audio_format",
        )
    return "pcm"


def _sample_rate(value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value not in SAMPLE_RATES:
        raise EventError(
            f"Invalid sample_rate {format_value(value)!r}: use 16000 or 8000.", param="session.sample_rate"
        )
    return int(value)


def _transcription(value: object) -> dict[str, Any]:
    if value is None:  # the SDK's enable_input_audio_transcription=False: recognition is all we do
        return {}
    if not isinstance(value, dict):
        raise EventError(
            "`input_audio_transcription` must be an object.", param="session.input_audio_transcription"
        )
    changes: dict[str, Any] = {}
    if "language" in value:
        language = value["language"]
        if language is not None and not isinstance(language, str):
            raise EventError(
                "`language` must be a string such as `zh` or `en`.",
                param="session.input_audio_transcription.language",
            )
        try:
            changes["language"] = normalize_code(language)
        except UnknownLanguage as exc:
            raise EventError(
                exc.message, code="unsupported_language", param="session.input_audio_transcription.language"
            ) from None
    if "corpus" in value:
        corpus = value["corpus"]
        text = corpus.get("text", "") if isinstance(corpus, dict) else corpus
        if text is None:
            text = ""
        if not isinstance(text, str):
            raise EventError(
                "`corpus.text` must be a string.", param="session.input_audio_transcription.corpus.text"
            )
        if len(text) > MAX_CONTEXT_CHARS:
            raise EventError(
                "`corpus.text` is longer than 10000 tokens; shorten it.",
                param="session.input_audio_transcription.corpus.text",
            )
        changes["context"] = text
    if "enable_itn" in value:
        if not isinstance(value["enable_itn"], bool):
            raise EventError(
                "`enable_itn` must be true or false.", param="session.input_audio_transcription.enable_itn"
            )
        changes["enable_itn"] = value["enable_itn"]
    return changes


def _turn_detection(value: object, current: TurnDetection | None) -> TurnDetection | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        raise EventError("`turn_detection` must be an object or null.", param="session.turn_detection")
    if value.get("type", "server_vad") != "server_vad":
        raise EventError(
            f"Invalid turn_detection.type {format_value(value.get('type'))!r}: use `server_vad`, or "
            "`turn_detection: null` for manual commits.",
            param="session.turn_detection.type",
        )
    base = current or TurnDetection()
    threshold = _number(value, "threshold", base.threshold, -1.0, 1.0)
    silence = _number(value, "silence_duration_ms", base.silence_duration_ms, *SILENCE_MS_RANGE)
    padding = _number(value, "prefix_padding_ms", base.prefix_padding_ms, 0, MAX_PREFIX_PADDING_MS)
    return TurnDetection(float(threshold), int(silence), int(padding))


def _number(obj: dict[str, Any], key: str, default: float, low: float, high: float) -> float:
    value = obj.get(key)
    if value is None:
        return default
    if (
        isinstance(value, bool)
        or not isinstance(value, (int, float))
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        raise EventError(
            f"Invalid turn_detection.{key} {format_value(value)!r}: use a number from {low:g} to {high:g}.",
            param=f"session.turn_detection.{key}",
        )
    return float(value)


# --- server events -------------------------------------------------------------------------------------


def event(kind: str, **fields: Any) -> dict[str, Any]:
    """A server event: a fresh `event_id`, its `type`, then its fields."""
    return {"event_id": new_id("event"), "type": kind, **fields}


def error_event(error: EventError, client_event_id: str | None = None) -> dict[str, Any]:
    """The cloud's `error` event; `client_event_id`: the event it answers, when there is one."""
    body: dict[str, Any] = {"type": error.kind, "code": error.code, "message": error.message}
    if error.param is not None:
        body["param"] = error.param
    if client_event_id is not None:
        body["event_id"] = client_event_id
    return event("error", error=body)


def item_created(item_id: str, previous_item_id: str | None) -> dict[str, Any]:
    item = {
        "id": item_id,
        "object": "realtime.item",
        "type": "message",
        "status": "in_progress",
        "role": "user",
        "content": [{"type": "input_audio"}],
    }
    return event("conversation.item.created", previous_item_id=previous_item_id, item=item)


def transcription_text(item_id: str, text: str, stash: str, language: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"item_id": item_id, "content_index": 0}
    if language is not None:
        fields["language"] = language
    return event("conversation.item.input_audio_transcription.text", **fields, text=text, stash=stash)


def transcription_completed(item_id: str, transcript: str, language: str | None) -> dict[str, Any]:
    fields: dict[str, Any] = {"item_id": item_id, "content_index": 0}
    if language is not None:
        fields["language"] = language
    return event("conversation.item.input_audio_transcription.completed", **fields, transcript=transcript)


def transcription_failed(item_id: str, error: EventError) -> dict[str, Any]:
    body = {"type": error.kind, "code": error.code, "message": error.message}
    return event(
        "conversation.item.input_audio_transcription.failed", item_id=item_id, content_index=0, error=body
    )


async def parse_event(message: Any) -> dict[str, Any]:
    """A client frame (an ASGI `websocket.receive` message) as an event object, or `EventError`."""
    text = message.get("text")
    if text is None:
        raise EventError(
            "Binary frames are not part of this API: send JSON text events.", code="invalid_event"
        )
    try:
        # A large append (megabytes of base64) is parsed off the event loop.
        data = (
            json.loads(text)
            if len(text) <= _PARSE_ON_LOOP_CHARS
            else await asyncio.to_thread(json.loads, text)
        )
    except (ValueError, RecursionError):
        raise EventError("The event is not valid JSON.", code="invalid_event") from None
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise EventError(
            "An event is a JSON object with a string `type`.", code="invalid_event", param="type"
        )
    return data


def ms(samples: int) -> int:
    """Milliseconds of 16 kHz audio."""
    return int(samples * 1000 // SAMPLE_RATE)


def end_error(reason: str, max_session_s: float, idle_timeout_s: float) -> EventError:
    """The `error` event that says why the server ended a session (`expired`, `idle`, `draining`)."""
    if reason == "expired":
        return EventError(
            f"The session reached this server's limit of {max_session_s:.0f} s; open a new session.",
            code="session_expired",
        )
    if reason == "idle":
        return EventError(
            f"No event arrived for {idle_timeout_s:.0f} s; the session was closed.", code="idle_timeout"
        )
    return EventError(
        "The server is restarting; reconnect shortly.", code="server_shutting_down", kind="server_error"
    )
