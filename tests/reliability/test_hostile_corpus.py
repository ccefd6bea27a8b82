"""Every item of the hostile corpus (`tests.reliability.corpus`) through both dialects: no answer is a
5xx, every 4xx carries the dialect's error code, and the server keeps serving (issue 13)."""

from __future__ import annotations

import time

import httpx
import pytest

from tests.reliability.corpus import Body, audio_corpus, json_corpus, multipart_corpus, wav
from tests.reliability.wire import (
    AUTH,
    CHAT,
    GENERATION,
    MAX_MESSAGE_CHARS,
    MODEL,
    TRANSCRIPTIONS,
    UPLOAD,
    assert_serving,
    dashscope_request,
    data_uri,
    send,
)

AUDIO = audio_corpus()
DASHSCOPE_PATHS = (GENERATION, UPLOAD)


def _check(path: str, answer: httpx.Response) -> None:
    """Not a 5xx; a 4xx in the dialect's envelope, with a code and a short message."""
    status = answer.status_code
    assert status < 500, (path, status, answer.text[:500])
    if status < 400:
        return
    body = answer.json()
    if path in DASHSCOPE_PATHS:
        assert body["code"] and body["message"] and body["request_id"], body
        message = body["message"]
    else:
        assert body["error"]["code"] and body["error"]["type"] and body["error"]["message"], body
        message = body["error"]["message"]
    assert len(message) <= MAX_MESSAGE_CHARS, (path, message[:500])  # no client value quoted whole


@pytest.mark.parametrize("name", sorted(AUDIO))
def test_hostile_audio_in_both_dialects(base: str, name: str) -> None:
    audio = AUDIO[name]
    answer = httpx.post(base + GENERATION, json=dashscope_request(data_uri(audio)), headers=AUTH, timeout=120)
    _check(GENERATION, answer)
    files = {"file": ("hostile.bin", audio, "application/octet-stream")}
    answer = httpx.post(base + TRANSCRIPTIONS, data={"model": MODEL}, files=files, headers=AUTH, timeout=120)
    _check(TRANSCRIPTIONS, answer)
    assert_serving(base)


def test_a_decompression_bomb_is_stopped_quickly_by_the_duration_limit(base: str) -> None:
    bomb = AUDIO["flac bomb: an hour of silence, length unknown"]
    assert len(bomb) < 1_000_000
    started = time.monotonic()
    files = {"file": ("bomb.flac", bomb, "audio/flac")}
    answer = httpx.post(base + TRANSCRIPTIONS, data={"model": MODEL}, files=files, headers=AUTH, timeout=120)
    elapsed = time.monotonic() - started
    assert answer.status_code == 400 and answer.json()["error"]["code"] == "audio_too_long", answer.text
    # Decoding stops at the 300 s limit, not after the hour: generous bound, not a timing assertion.
    assert elapsed < 30


@pytest.mark.parametrize("body", json_corpus(data_uri(wav(seconds=0.5))), ids=lambda b: b.name)
def test_hostile_json_in_both_dialects(base: str, body: Body) -> None:
    for path in (GENERATION, CHAT):
        _check(path, send(base, path, body))
    assert_serving(base)


# A body that stops before its closing boundary is parsed by Starlette as a form without its last part
# (then answered 400: no `file`), and the spooled file of that part is closed by the garbage collector
# when the parser goes, with a ResourceWarning, instead of by Starlette. It is freed at once (reference
# counting); the warning is Starlette's to fix.
_UNCLOSED_BY_STARLETTE = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
_TRUNCATED = {"cut off inside the file", "no closing boundary"}


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(body, id=body.name, marks=[_UNCLOSED_BY_STARLETTE] if body.name in _TRUNCATED else [])
        for body in multipart_corpus(wav(seconds=0.5))
    ],
)
def test_hostile_multipart_in_both_dialects(base: str, body: Body) -> None:
    for path in (UPLOAD, TRANSCRIPTIONS):
        _check(path, send(base, path, body))
    assert_serving(base)
