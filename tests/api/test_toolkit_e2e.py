"""Alibaba's own `qwen3-asr-toolkit` (1.0.4), run unchanged as a separate program against `qasr serve`,
and the `language` annotation it depends on (issue 12).

The toolkit cuts recordings of 3 minutes or more into chunks, uploads each through the SDK's
`file://` flow and reads `annotations[0]["language"]` from every answer; one chunk without speech
used to lose the whole transcript. The server runs a rigged tiny checkpoint that writes `TEXT` for any
speech (tests/helpers.py, `rigged_checkpoint`), so the transcript can be pinned exactly.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from qasr.audio.decode import decode_audio
from qasr.types import SAMPLE_RATE
from tests.helpers import rigged_checkpoint, synthesize
from tests.server import LiveServer, live_server

pytestmark = pytest.mark.slow

TEXT = "Welcome to the speech recognition service."
KEY = "sk-qasr-test"
MIRROR = "https://example.com/audio/"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
SILENT_S = 400
"""Silence between the two utterances: with the toolkit's 3-minute cap its chunks cannot all hold
speech, whether its VAD cuts at speech onsets or (finding none) every 180 s."""


def _write_pcm(path: Path, samples: np.ndarray) -> Path:
    """16 kHz mono 16-bit WAV of float samples in [-1, 1]."""
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes())
    return path


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """speech.wav (about 3 s), silence.wav (3 s) and long.wav: speech, silence, the same speech."""
    root = tmp_path_factory.mktemp("toolkit-audio")
    speech = decode_audio(synthesize(TEXT, root / "espeak.wav")).samples
    _write_pcm(root / "speech.wav", speech)
    _write_pcm(root / "silence.wav", np.zeros(3 * SAMPLE_RATE, dtype=np.float32))
    gap = np.zeros(SILENT_S * SAMPLE_RATE - len(speech), dtype=np.float32)
    _write_pcm(root / "long.wav", np.concatenate([speech, gap, speech]))
    return root


@pytest.fixture(scope="module")
def server(tiny_dir: Path, audio: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged") / "model", TEXT)
    args = ["--api-key", KEY, "--url-map", f"{MIRROR}={audio}/"]
    with live_server(model, tmp_path_factory.mktemp("logs"), *args) as live:
        yield live


def test_toolkit_keeps_every_chunk_with_speech(server: LiveServer, audio: Path, tmp_path: Path) -> None:
    pytest.importorskip("qwen3_asr_toolkit")
    recording = tmp_path / "meeting.wav"
    recording.write_bytes((audio / "long.wav").read_bytes())
    env = {
        **os.environ,
        "DASHSCOPE_HTTP_BASE_URL": f"{server.url}/api/v1",
        "DASHSCOPE_API_KEY": KEY,
        "NO_PROXY": "127.0.0.1,localhost",
    }
    env.pop("DASHSCOPE_API_REGION", None)
    cmd = [sys.executable, "-m", "qwen3_asr_toolkit.call_api", "-i", str(recording), "-j", "2", "-s"]
    run = subprocess.run(
        [*cmd, "-t", str(tmp_path / "cache")], capture_output=True, text=True, env=env, timeout=240
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "Retry" not in run.stdout  # no chunk was answered without a language
    language, full_text = (tmp_path / "meeting.txt").read_text().splitlines()
    # The toolkit joins its chunks' texts with spaces, the silent chunks' empty ones included.
    assert full_text.split() == f"{TEXT} {TEXT}".split()
    assert language in ("English", "Not Supported")  # the most frequent chunk language, ties either way
    assert server.log.count("POST /api/v1/uploads/oss") >= 3  # each chunk came through file://


def _generate(server: LiveServer, clip: str, asr_options: dict[str, str], stream: bool) -> httpx.Response:
    body = {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": MIRROR + clip}]}]},
        "parameters": {"result_format": "message", "asr_options": asr_options},
    }
    headers = {"Authorization": f"Bearer {KEY}", **({"X-DashScope-SSE": "enable"} if stream else {})}
    return httpx.post(server.url + GENERATION, json=body, headers=headers, timeout=60)


def _message(body: dict[str, Any]) -> dict[str, Any]:
    return dict(body["output"]["choices"][0]["message"])


def _events(raw: str) -> list[dict[str, Any]]:
    blocks = [block.split("\n") for block in raw.split("\n\n") if block.strip()]
    return [json.loads(lines[3].removeprefix("data:")) for lines in blocks]


@pytest.mark.parametrize(
    ("clip", "options", "text", "language"),
    [
        pytest.param("speech.wav", {}, TEXT, "en", id="detected"),
        pytest.param("silence.wav", {}, "", "", id="nothing heard"),
        pytest.param("speech.wav", {"language": "zh"}, TEXT, "zh", id="forced"),
        pytest.param("silence.wav", {"language": "en"}, "", "en", id="forced, nothing heard"),
    ],
)
def test_every_answer_carries_a_language(
    server: LiveServer, clip: str, options: dict[str, str], text: str, language: str
) -> None:
    response = _generate(server, clip, options, stream=False)
    assert response.status_code == 200, response.text
    assert _message(response.json()) == {
        "role": "assistant",
        "content": [{"text": text}],
        "annotations": [{"type": "audio_info", "language": language}],
    }
    stream = _generate(server, clip, options, stream=True)
    assert stream.status_code == 200, stream.text
    events = _events(stream.text)
    assert events and all(_message(e)["annotations"][0]["language"] in ("", language) for e in events)
    assert _message(events[-1])["annotations"] == [{"type": "audio_info", "language": language}]
