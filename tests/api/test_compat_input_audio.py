"""Compatible-mode chat completions (issue 12): `input_audio` given as `{"url": ...}`, errors that name
`input_audio` when it is malformed, and a `language` annotation on every answer, silence included."""

from __future__ import annotations

import base64
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from openai import OpenAI

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from qasr.types import SAMPLE_RATE
from tests.api.inprocess import serve_in_thread
from tests.helpers import scripted_output, synthesize

MODEL = "qwen3-asr-flash"
MIRROR = "https://example.com/audio/"
SCRIPT = "language English<asr_text>Welcome to the speech recognition service."
TEXT = "Welcome to the speech recognition service."
ANNOTATED_EN = [{"type": "audio_info", "language": "en"}]
NOTHING_HEARD = [{"type": "audio_info", "language": ""}]


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("compat-audio")
    synthesize("A clip long enough for the scripted transcript to fit its token budget.", root / "speech.wav")
    with wave.open(str(root / "silence.wav"), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(np.zeros(3 * SAMPLE_RATE, dtype=np.int16).tobytes())
    return root


@pytest.fixture(scope="module")
def url(engine: Qwen3ASREngine, audio: Path) -> Iterator[str]:
    settings = Settings(model="tiny", warmup=False, url_map={MIRROR: f"{audio}/"})
    with scripted_output(engine, SCRIPT), serve_in_thread(settings, engine) as base:
        yield base


@pytest.fixture
def client(url: str) -> OpenAI:
    return OpenAI(base_url=f"{url}/compatible-mode/v1", api_key="sk-anything", max_retries=0)


def _data_uri(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def _messages(input_audio: Any) -> list[Any]:
    return [{"role": "user", "content": [{"type": "input_audio", "input_audio": input_audio}]}]


@pytest.mark.parametrize("form", ["url", "data"])
@pytest.mark.parametrize("reference", ["https", "data URI"])
def test_input_audio_url_and_data_are_alike(client: OpenAI, audio: Path, form: str, reference: str) -> None:
    where = MIRROR + "speech.wav" if reference == "https" else _data_uri(audio / "speech.wav")
    completion = client.chat.completions.create(model=MODEL, messages=_messages({form: where}))
    message = completion.choices[0].message.model_dump(exclude_none=True)
    assert message == {"role": "assistant", "content": TEXT, "annotations": ANNOTATED_EN}


@pytest.mark.parametrize(
    ("input_audio", "param", "says"),
    [
        pytest.param({}, "input_audio", "give either `data`", id="empty"),
        pytest.param({"format": "wav"}, "input_audio", "give either `data`", id="format only"),
        pytest.param({"data": "x", "url": MIRROR}, "input_audio", "give either `data`", id="both"),
        pytest.param({"url": "UklGRg=="}, "input_audio", "`url` must be a URL", id="url not a URL"),
        pytest.param({"url": 5}, "input_audio.url", "valid string", id="url not a string"),
        pytest.param(MIRROR + "speech.wav", "input_audio", "valid dictionary", id="a bare string"),
    ],
)
def test_malformed_input_audio_is_named(url: str, input_audio: Any, param: str, says: str) -> None:
    body = {"model": MODEL, "messages": _messages(input_audio)}
    response = httpx.post(f"{url}/compatible-mode/v1/chat/completions", json=body, timeout=30)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error"
    assert error["param"] == f"messages.0.content.0.{param}"
    assert error["message"].startswith(f"Invalid `messages.0.content.0.{param}`: ")
    assert says in error["message"]


def test_silence_is_annotated_with_an_empty_language(client: OpenAI, audio: Path) -> None:
    messages = _messages({"url": MIRROR + "silence.wav"})
    completion = client.chat.completions.create(model=MODEL, messages=messages)
    message = completion.choices[0].message.model_dump(exclude_none=True)
    assert message == {"role": "assistant", "content": "", "annotations": NOTHING_HEARD}

    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks]
    assert [d.get("annotations") for d in deltas] == [None, NOTHING_HEARD]  # on the finish_reason chunk
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_stream_annotates_the_language_once(client: OpenAI) -> None:
    messages = _messages({"url": MIRROR + "speech.wav"})
    chunks = list(client.chat.completions.create(model=MODEL, messages=messages, stream=True))
    deltas = [c.choices[0].delta.model_dump(exclude_none=True) for c in chunks]
    assert [d["annotations"] for d in deltas if "annotations" in d] == [ANNOTATED_EN]
    assert "".join(d.get("content") or "" for d in deltas) == TEXT
