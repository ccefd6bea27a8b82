"""The OpenAI APIs end to end: the official `openai` SDK (and raw httpx for the wire) against
`qasr serve` on the tiny model. Chat completions in DashScope's compatible mode (spec section 8),
audio transcriptions in every response format, the model list, and errors in the OpenAI envelope.

The tiny model decodes greedily, so the same audio always gives the same (meaningless) text: every
path is checked against one reference transcript.
"""

from __future__ import annotations

import base64
import itertools
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from qasr.engine.base import Job
from qasr.settings import Settings
from qasr.text.subtitles import parse_srt, parse_vtt
from qasr.types import EngineResult, Segment
from tests.api.inprocess import serve_in_thread
from tests.helpers import synthesize
from tests.server import LiveServer, live_server

KEY = "k1"
MODEL = "qwen3-asr-flash"
URL_PREFIX = "https://example.com/audio/"
MAX_AUDIO_BYTES = 20_000
ERROR_FIELDS = {"message", "type", "param", "code"}


@dataclass(frozen=True)
class Speech:
    path: Path
    """A short English sentence as a small mp3 (under the server's 20 000-byte limit)."""
    large: Path
    """The same kind of speech as a wav over the limit."""
    duration_s: float

    @property
    def data_uri(self) -> str:
        return "data:audio/mpeg;base64," + base64.b64encode(self.path.read_bytes()).decode()

    @property
    def url(self) -> str:
        return URL_PREFIX + self.path.name


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Speech:
    import av

    root = tmp_path_factory.mktemp("openai-audio")
    path = synthesize("Hello world, this is a test.", root / "hello.mp3", fmt="mp3", rate=16_000)
    large = synthesize("Hello world, this is a test.", root / "hello.wav")
    assert path.stat().st_size < MAX_AUDIO_BYTES < large.stat().st_size
    with av.open(str(path)) as container:
        assert container.duration is not None
        duration_s = container.duration / 1e6
    return Speech(path, large, duration_s)


@pytest.fixture(scope="module")
def server(tiny_dir: Path, speech: Speech, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    args = [
        *("--api-key", KEY),
        *("--max-audio-bytes", str(MAX_AUDIO_BYTES)),
        *("--url-map", f"{URL_PREFIX}={speech.path.parent}/"),
    ]
    with live_server(tiny_dir, tmp_path_factory.mktemp("logs"), *args) as live:
        yield live


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[OpenAI]:
    with OpenAI(base_url=f"{server.url}/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def compat(server: LiveServer) -> Iterator[OpenAI]:
    """The client as DashScope documents it: base URL `/compatible-mode/v1`."""
    with OpenAI(base_url=f"{server.url}/compatible-mode/v1", api_key=KEY, max_retries=0) as sdk:
        yield sdk


@pytest.fixture(scope="module")
def reference(client: OpenAI, speech: Speech) -> Any:
    """The `json` transcription of the speech with default options: the text every path must give."""
    raw = client.audio.transcriptions.with_raw_response.create(file=speech.path, model=MODEL)
    assert raw.headers["content-type"] == "application/json"
    result = raw.parse()
    assert result.text  # the tiny random model writes (meaningless) text for real speech
    return result


def user_audio(part: dict[str, Any]) -> list[dict[str, Any]]:
    return [{"role": "user", "content": [part]}]


def input_audio(data: str) -> dict[str, Any]:
    return {"type": "input_audio", "input_audio": {"data": data}}


# --- models ------------------------------------------------------------------------------------------


def test_models_lists_the_served_model(client: OpenAI, compat: OpenAI) -> None:
    for sdk in (client, compat):
        models = sdk.models.list()
        assert [m.id for m in models.data] == [MODEL]
        assert models.data[0].object == "model" and models.data[0].owned_by == "qasr"


# --- chat completions --------------------------------------------------------------------------------


def test_chat_completion_with_data_uri(compat: OpenAI, speech: Speech, reference: Any) -> None:
    completion = compat.chat.completions.create(
        model=MODEL, messages=user_audio(input_audio(speech.data_uri))
    )
    assert completion.id.startswith("chatcmpl-") and len(completion.id) == len("chatcmpl-") + 36
    assert completion.object == "chat.completion" and completion.model == MODEL
    assert completion.created > 0
    choice = completion.choices[0]
    assert choice.finish_reason in ("stop", "length") and choice.message.role == "assistant"
    assert choice.message.content == reference.text
    # The random model names no language: none is made up, but the annotation is there (the cloud
    # always sends it, and Alibaba's toolkit reads it).
    assert choice.message.model_dump(exclude_none=True)["annotations"] == [
        {"type": "audio_info", "language": ""}
    ]
    usage = completion.usage
    assert usage is not None
    details = usage.model_dump(exclude_none=True)
    audio_tokens = details["prompt_tokens_details"]["audio_tokens"]
    assert audio_tokens > 0 and details["prompt_tokens_details"]["text_tokens"] == 0
    assert usage.prompt_tokens == audio_tokens
    assert usage.completion_tokens == reference.usage.output_tokens > 0
    assert details["completion_tokens_details"] == {"text_tokens": usage.completion_tokens}
    assert usage.total_tokens == usage.prompt_tokens + usage.completion_tokens
    assert details["seconds"] == math.ceil(speech.duration_s)


@pytest.mark.parametrize(
    "shape",
    [
        "raw_base64",  # OpenAI's own input_audio: bare base64 plus a format
        "audio_url_object",
        "audio_url_string",
    ],
)
def test_chat_accepts_other_audio_part_shapes(
    server: LiveServer, speech: Speech, reference: Any, shape: str
) -> None:
    raw = base64.b64encode(speech.path.read_bytes()).decode()
    part: dict[str, Any] = {
        "raw_base64": {"type": "input_audio", "input_audio": {"data": raw, "format": "mp3"}},
        "audio_url_object": {"type": "audio_url", "audio_url": {"url": speech.url}},
        "audio_url_string": {"type": "audio_url", "audio_url": speech.url},
    }[shape]
    messages = [{"role": "user", "content": [{"type": "text", "text": "Transcribe this."}, part]}]
    response = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages},
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == 200, response.text
    assert response.json()["choices"][0]["message"]["content"] == reference.text


def test_chat_stream_deltas_join_to_the_text(compat: OpenAI, speech: Speech, reference: Any) -> None:
    stream = compat.chat.completions.create(
        model=MODEL, messages=user_audio(input_audio(speech.data_uri)), stream=True
    )
    chunks = list(stream)
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert all(c.object == "chat.completion.chunk" and c.model == MODEL for c in chunks)
    first, last = chunks[0].choices[0], chunks[-1].choices[0]
    assert first.delta.role == "assistant" and first.delta.content == ""
    assert last.finish_reason in ("stop", "length") and last.delta.content is None
    assert all(c.choices[0].finish_reason is None for c in chunks[:-1])
    assert all(c.usage is None for c in chunks)  # no include_usage: no usage chunk
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == reference.text
    annotations = [c.choices[0].delta.model_dump(exclude_none=True).get("annotations") for c in chunks]
    assert annotations == [None] * (len(chunks) - 1) + [[{"type": "audio_info", "language": ""}]]


def test_chat_stream_with_usage_url_context_and_asr_options(compat: OpenAI, speech: Speech) -> None:
    """The DashScope body (spec section 8): system text parts, a URL, `asr_options`, include_usage."""
    messages = [
        {"role": "system", "content": [{"text": "Hello"}, {"text": "world"}]},
        {"role": "user", "content": [input_audio(speech.url)]},
    ]
    options = {"asr_options": {"language": "en", "enable_itn": False}}
    stream = compat.chat.completions.create(
        model=MODEL,
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},
        extra_body=options,
    )
    chunks = list(stream)
    usage_chunk = chunks[-1]
    assert usage_chunk.choices == [] and usage_chunk.usage is not None
    assert chunks[-2].choices[0].finish_reason in ("stop", "length")
    annotated = [
        d["annotations"]
        for c in chunks[:-1]
        for d in [c.choices[0].delta.model_dump()]
        if d.get("annotations")
    ]
    assert annotated == [[{"type": "audio_info", "language": "en"}]]  # once, and never an emotion
    text = "".join(c.choices[0].delta.content or "" for c in chunks[:-1])

    completion = compat.chat.completions.create(
        model=MODEL,
        messages=messages,
        extra_body=options,
    )
    assert completion.choices[0].message.content == text
    assert completion.choices[0].message.model_dump(exclude_none=True)["annotations"] == annotated[0]
    assert completion.usage is not None
    assert usage_chunk.usage.model_dump() == completion.usage.model_dump()
    assert completion.usage.model_dump()["prompt_tokens_details"]["text_tokens"] > 0  # the context


@pytest.mark.parametrize("endpoint", ["chat", "transcription"])
def test_stream_wire_framing(server: LiveServer, speech: Speech, reference: Any, endpoint: str) -> None:
    """The bytes: `data: <json>` events, each alone in its block, and `data: [DONE]` once, last."""
    request: dict[str, Any] = {"headers": {"Authorization": f"Bearer {KEY}"}}
    if endpoint == "chat":
        url = f"{server.url}/v1/chat/completions"
        request["json"] = {
            "model": MODEL,
            "messages": user_audio(input_audio(speech.data_uri)),
            "stream": True,
        }
    else:
        url = f"{server.url}/v1/audio/transcriptions"
        request["files"] = {"file": ("hello.mp3", speech.path.read_bytes(), "audio/mpeg")}
        request["data"] = {"model": MODEL, "stream": "true"}
    with httpx.stream("POST", url, timeout=60, **request) as response:
        assert response.status_code == 200
        assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
        wire = response.read().decode()
    assert wire.endswith("\n\n")
    events = wire[:-2].split("\n\n")
    assert all(e.startswith("data: ") and "\n" not in e for e in events)
    assert events[-1] == "data: [DONE]" and events.count("data: [DONE]") == 1
    bodies = [json.loads(e.removeprefix("data: ")) for e in events[:-1]]
    if endpoint == "chat":
        text = "".join(b["choices"][0]["delta"].get("content") or "" for b in bodies)
        assert bodies[-1]["choices"][0]["finish_reason"] in ("stop", "length")
    else:
        types = [b["type"] for b in bodies]
        assert types == ["transcript.text.delta"] * (len(bodies) - 1) + ["transcript.text.done"]
        text = "".join(b["delta"] for b in bodies[:-1])
        assert bodies[-1]["text"] == text
    assert text == reference.text


# --- transcriptions ----------------------------------------------------------------------------------


def test_transcription_json(reference: Any) -> None:
    extra = reference.model_dump()
    assert extra["language"] is None and extra["languages"] == []  # no language heard by the random model
    usage = reference.usage
    assert usage.type == "tokens" and usage.output_tokens > 0
    details = usage.input_token_details
    assert details.audio_tokens > 0 and details.text_tokens == 0
    assert usage.input_tokens == details.audio_tokens + details.text_tokens
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens


def test_transcription_text(client: OpenAI, speech: Speech, reference: Any) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=speech.path, model=MODEL, response_format="text"
    )
    assert raw.headers["content-type"] == "text/plain; charset=utf-8"
    assert raw.parse() == reference.text + "\n"


@pytest.mark.parametrize(
    ("fmt", "content_type"),
    [("srt", "application/x-subrip; charset=utf-8"), ("vtt", "text/vtt; charset=utf-8")],
)
def test_transcription_subtitles(
    client: OpenAI, speech: Speech, reference: Any, fmt: str, content_type: str
) -> None:
    raw = client.audio.transcriptions.with_raw_response.create(
        file=speech.path,
        model=MODEL,
        response_format=fmt,
    )
    assert raw.headers["content-type"] == content_type
    text = raw.parse()
    assert isinstance(text, str)
    cues = parse_srt(text) if fmt == "srt" else parse_vtt(text)
    _check_cues(cues, speech.duration_s)
    assert _squeeze("".join(c.text for c in cues)) == _squeeze(reference.text)


def test_transcription_verbose_json(client: OpenAI, speech: Speech) -> None:
    result = client.audio.transcriptions.create(
        file=speech.path,
        model=MODEL,
        response_format="verbose_json",
        language="en",
        timestamp_granularities=["segment"],
        temperature=0.3,
    )
    body = result.model_dump()
    assert body["task"] == "transcribe"
    assert result.language == "en"  # a code, as everywhere in qasr (OpenAI writes "english")
    assert abs(result.duration - speech.duration_s) < 0.1
    segments = result.segments or []
    assert [s.id for s in segments] == list(range(len(segments))) and segments
    _check_cues([Segment(s.start, s.end, s.text) for s in segments], speech.duration_s)
    assert _squeeze("".join(s.text for s in segments)) == _squeeze(result.text)
    assert body["usage"] == {"type": "duration", "seconds": math.ceil(speech.duration_s)}


def test_transcription_stream(client: OpenAI, speech: Speech, reference: Any) -> None:
    events = list(client.audio.transcriptions.create(file=speech.path, model=MODEL, stream=True))
    deltas, done = events[:-1], events[-1]
    assert deltas and all(e.type == "transcript.text.delta" for e in deltas)
    assert done.type == "transcript.text.done"
    assert "".join(e.delta for e in deltas) == done.text == reference.text
    assert done.usage is not None and done.usage.model_dump() == reference.usage.model_dump()


def test_transcription_prompt_is_context(client: OpenAI, speech: Speech) -> None:
    result = client.audio.transcriptions.create(file=speech.path, model=MODEL, prompt="Hello, world.")
    assert result.usage is not None and result.usage.type == "tokens"
    assert result.usage.input_token_details is not None
    assert (result.usage.input_token_details.text_tokens or 0) > 0


def _check_cues(cues: list[Segment], duration_s: float) -> None:
    assert cues
    for cue in cues:
        assert 0 <= cue.start_s < cue.end_s <= duration_s + 0.05
    for before, after in itertools.pairwise(cues):
        assert before.end_s <= after.start_s


def _squeeze(text: str) -> str:
    return "".join(text.split())


# --- errors ------------------------------------------------------------------------------------------


def _error_body(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS
    assert exc.response.headers["content-type"] == "application/json"
    assert body["error"]["message"] and "Traceback" not in body["error"]["message"]
    return dict(body["error"])


def _still_serving(client: OpenAI, speech: Speech, reference: Any) -> None:
    text = client.audio.transcriptions.create(file=speech.path, model=MODEL, response_format="text")
    assert text == reference.text + "\n"


def test_bad_key(server: LiveServer, speech: Speech, client: OpenAI, reference: Any) -> None:
    with OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0) as bad:
        with pytest.raises(openai.AuthenticationError) as caught:
            bad.audio.transcriptions.create(file=speech.path, model=MODEL)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model=MODEL, messages=user_audio(input_audio(speech.url)))
        with pytest.raises(openai.AuthenticationError):
            bad.models.list()
    error = _error_body(caught.value)
    assert caught.value.status_code == 401
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_api_key")
    _still_serving(client, speech, reference)


LARGE = "large"
"""Stands for the over-size wav in a parametrized form."""


@pytest.mark.parametrize(
    ("fields", "code", "param"),
    [
        pytest.param({"file": None}, "invalid_parameter", "file", id="missing-file"),
        pytest.param(
            {"file": ("notes.txt", b"this is not audio\n" * 50, "text/plain")},
            "invalid_audio",
            None,
            id="not-audio",
        ),
        pytest.param({"file": LARGE}, "audio_too_large", None, id="over-size"),
        pytest.param({"model": "whisper-1"}, "model_not_found", None, id="unknown-model"),
        pytest.param({"model": None}, "invalid_parameter", "model", id="missing-model"),
        pytest.param({"response_format": "xml"}, "invalid_parameter", "response_format", id="bad-format"),
        pytest.param(
            {"timestamp_granularities[]": "sentence", "response_format": "verbose_json"},
            "invalid_parameter",
            "timestamp_granularities.0",
            id="bad-granularity",
        ),
        pytest.param({"temperature": "1.5"}, "invalid_parameter", "temperature", id="temperature"),
        pytest.param({"language": "xx"}, "unsupported_language", "language", id="language"),
        pytest.param(
            {"stream": "true", "response_format": "srt"},
            "invalid_parameter",
            "response_format",
            id="stream-srt",
        ),
    ],
)
def test_transcription_errors(
    server: LiveServer,
    client: OpenAI,
    speech: Speech,
    reference: Any,
    fields: dict[str, Any],
    code: str,
    param: str | None,
) -> None:
    """Each refused with its status in the OpenAI envelope; `None` leaves a field out."""
    form: dict[str, Any] = {"model": MODEL, "file": ("hello.mp3", speech.path.read_bytes(), "audio/mpeg")}
    form.update(fields)
    if form["file"] == LARGE:
        form["file"] = ("hello.wav", speech.large.read_bytes(), "audio/wav")
    # Text fields as parts without a file name, so the body is multipart even without a file.
    files = {k: v if isinstance(v, tuple) else (None, v) for k, v in form.items() if v is not None}
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        files=files,
        headers={"Authorization": f"Bearer {KEY}"},
        timeout=60,
    )
    assert response.status_code == (404 if code == "model_not_found" else 400), response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == ERROR_FIELDS
    assert body["error"]["code"] == code and body["error"]["param"] == param
    assert body["error"]["type"] == "invalid_request_error"
    _still_serving(client, speech, reference)


def test_sdk_errors_raise_typed_exceptions(client: OpenAI, speech: Speech, reference: Any) -> None:
    with pytest.raises(openai.NotFoundError) as missing:
        client.audio.transcriptions.create(file=speech.path, model="whisper-1")
    assert _error_body(missing.value)["code"] == "model_not_found"
    # Word timestamps are accepted now (issue 14; tests/api/test_word_timestamps.py): without an
    # aligner they are marked unavailable, never refused or invented.
    words = client.audio.transcriptions.create(
        file=speech.path, model=MODEL, response_format="verbose_json", timestamp_granularities=["word"]
    )
    assert words.words == [] and (words.model_extra or {})["word_timestamps"].startswith("unavailable")
    with pytest.raises(openai.BadRequestError) as big:
        client.audio.transcriptions.create(file=speech.large, model=MODEL)
    assert _error_body(big.value)["code"] == "audio_too_large"
    _still_serving(client, speech, reference)


@pytest.mark.parametrize(
    ("request_body", "status", "code", "param"),
    [
        ({"stream_options": {"include_usage": True}}, 400, "invalid_parameter", "stream_options"),
        ({"model": "gpt-4o"}, 404, "model_not_found", None),
        ({"messages": [{"role": "user", "content": "hello"}]}, 400, "invalid_parameter", "messages"),
        ({"extra_body": {"asr_options": {"language": "xx"}}}, 400, "unsupported_language", "language"),
        (
            {"messages": user_audio(input_audio("https://example.com/audio/missing.mp3"))},
            400,
            "invalid_parameter",
            None,
        ),
        ({"messages": user_audio(input_audio("file:///etc/passwd"))}, 400, "forbidden_url", None),
    ],
    ids=[
        "stream-options-without-stream",
        "unknown-model",
        "no-audio",
        "language",
        "missing-url",
        "local-file",
    ],
)
def test_chat_errors(
    compat: OpenAI,
    client: OpenAI,
    speech: Speech,
    reference: Any,
    request_body: dict[str, Any],
    status: int,
    code: str,
    param: str | None,
) -> None:
    body: dict[str, Any] = {"model": MODEL, "messages": user_audio(input_audio(speech.url)), **request_body}
    with pytest.raises(openai.APIStatusError) as caught:
        compat.chat.completions.create(**body)
    assert caught.value.status_code == status
    error = _error_body(caught.value)
    assert (error["code"], error["param"]) == (code, param)
    _still_serving(client, speech, reference)


def test_over_size_data_uri_in_a_stream_is_a_json_error(compat: OpenAI, speech: Speech) -> None:
    large = "data:audio/wav;base64," + base64.b64encode(speech.large.read_bytes()).decode()
    with pytest.raises(openai.BadRequestError) as caught:
        compat.chat.completions.create(model=MODEL, messages=user_audio(input_audio(large)), stream=True)
    assert _error_body(caught.value)["code"] == "audio_too_large"


def test_transcription_needs_a_multipart_body(server: LiveServer) -> None:
    response = httpx.post(
        f"{server.url}/v1/audio/transcriptions",
        json={"model": MODEL, "file": "hello.mp3"},
        headers={"Authorization": f"Bearer {KEY}"},
    )
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "invalid_parameter" and "multipart/form-data" in error["message"]


# --- failures after the first byte -------------------------------------------------------------------


class _FailingEngine:
    """The real engine, failing its second batch: a server bug in the middle of a stream."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.calls = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def run(self, jobs: list[Job]) -> list[EngineResult]:
        self.calls += 1
        if self.calls == 2:
            raise RuntimeError("simulated model failure")
        return list(self.inner.run(jobs))


@pytest.fixture
def failing_url(engine: Any) -> Iterator[str]:
    """A server whose second model call fails. Fixed 1 s windows, one per batch: the speech takes two
    calls, so the failure comes after the first text was sent."""
    settings = Settings(model="tiny", warmup=False, vad=False, segment_max_s=1.0, max_batch_size=1)
    with serve_in_thread(settings, _FailingEngine(engine)) as url:
        yield url


def test_chat_failure_mid_stream_raises_in_the_sdk(failing_url: str, speech: Speech) -> None:
    with OpenAI(base_url=f"{failing_url}/v1", api_key="any", max_retries=0) as sdk:
        stream = sdk.chat.completions.create(
            model=MODEL, messages=user_audio(input_audio(speech.data_uri)), stream=True
        )
        received = []
        with pytest.raises(openai.APIError) as caught:
            received.extend(stream)
    assert received and received[0].choices[0].delta.role == "assistant"
    assert caught.value.code == "internal_error" and "simulated" not in caught.value.message


def test_transcription_failure_mid_stream_is_one_error_event(failing_url: str, speech: Speech) -> None:
    """After 200 was sent, a failure is one `data: {"error": ...}` event, then `[DONE]`."""
    files = {"file": ("hello.mp3", speech.path.read_bytes(), "audio/mpeg")}
    data = {"model": MODEL, "stream": "true"}
    response = httpx.post(f"{failing_url}/v1/audio/transcriptions", files=files, data=data, timeout=60)
    assert response.status_code == 200
    events = response.text.removesuffix("\n\n").split("\n\n")
    assert events[-1] == "data: [DONE]"
    error = json.loads(events[-2].removeprefix("data: "))
    assert error == {
        "error": {
            "message": "An internal error occurred; the server logged the details.",
            "type": "server_error",
            "param": None,
            "code": "internal_error",
        }
    }
    types = [json.loads(e.removeprefix("data: "))["type"] for e in events[:-2]]
    assert types and set(types) == {"transcript.text.delta"}
