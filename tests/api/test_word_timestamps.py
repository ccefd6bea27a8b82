"""Word timestamps on OpenAI's `/v1/audio/transcriptions` (issue 14, "Where it shows"): `qasr serve
--aligner` on a rigged tiny ASR model (one known sentence) and a tiny random forced aligner, driven
with the official `openai` SDK and raw httpx. Random aligner weights give random times: the tests pin
shapes, counts, order, bounds and the honest fallbacks, never a particular time."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from qasr.api.openai.protocol import transcription_verbose
from qasr.text.subtitles import parse_srt
from qasr.types import Segment, Transcript, Word
from tests.helpers import rigged_checkpoint, two_utterances
from tests.server import LiveServer, live_server

TEXT = "Welcome to the speech recognition service."
MODEL = "qwen3-asr-flash"


@pytest.fixture(scope="module")
def rigged_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged-words") / "model", TEXT)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("words-audio") / "two.wav"
    return two_utterances("Hello there, how are you?", "I am fine, thank you.", out)


@pytest.fixture(scope="module")
def aligned(
    rigged_dir: Path, tiny_aligner_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    with live_server(rigged_dir, tmp_path_factory.mktemp("logs"), "--aligner", str(tiny_aligner_dir)) as live:
        yield live


@pytest.fixture(scope="module")
def plain(rigged_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    with live_server(rigged_dir, tmp_path_factory.mktemp("logs")) as live:
        yield live


def _post(server: LiveServer, audio: Path, **fields: Any) -> httpx.Response:
    data = {"model": MODEL, **fields}
    with audio.open("rb") as f:
        return httpx.post(
            f"{server.url}/v1/audio/transcriptions",
            data=data,
            files={"file": (audio.name, f, "audio/wav")},
            timeout=120,
        )


def test_verbose_json_words_through_the_sdk(aligned: LiveServer, audio: Path) -> None:
    client = OpenAI(base_url=f"{aligned.url}/v1", api_key="unused")
    with audio.open("rb") as f:
        result = client.audio.transcriptions.create(
            model=MODEL,
            file=f,
            language="en",
            response_format="verbose_json",
            timestamp_granularities=["word", "segment"],
        )
    assert result.text == f"{TEXT} {TEXT}"
    assert result.segments is not None and len(result.segments) == 2
    words = result.words or []
    assert [w.word for w in words] == TEXT.split() * 2  # one word per aligner unit
    assert " ".join(w.word for w in words) == result.text
    segments = result.segments
    for k, w in enumerate(words):
        seg = segments[k // 6]
        assert seg.start <= w.start < w.end <= seg.end + 1e-3  # offset added once, per segment
        assert k == 0 or words[k - 1].end <= w.start  # monotonic, non-overlapping
    assert words[-1].end <= result.duration + 1e-3
    assert "word_timestamps" not in (result.model_extra or {})


def test_word_granularity_without_an_aligner_is_marked(plain: LiveServer, audio: Path) -> None:
    response = _post(
        plain, audio, language="en", response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["words"] == []
    assert body["word_timestamps"].startswith("unavailable: no forced aligner")
    assert len(body["segments"]) == 2


def test_unsupported_language_is_marked(aligned: LiveServer, audio: Path) -> None:
    response = _post(
        aligned, audio, language="ar", response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["words"] == []
    assert body["word_timestamps"].startswith("unavailable: the forced aligner does not cover ar")
    assert [s["text"] for s in body["segments"]] == [TEXT, TEXT]


def test_segment_granularity_has_no_words(aligned: LiveServer, audio: Path) -> None:
    response = _post(
        aligned,
        audio,
        language="en",
        response_format="verbose_json",
        **{"timestamp_granularities[]": "segment"},
    )
    body = response.json()
    assert "words" not in body and "word_timestamps" not in body
    assert len(body["segments"]) == 2


def test_srt_cues_start_at_their_first_word(aligned: LiveServer, audio: Path) -> None:
    verbose = _post(
        aligned, audio, language="en", response_format="verbose_json", **{"timestamp_granularities[]": "word"}
    ).json()
    words = verbose["words"]
    response = _post(aligned, audio, language="en", response_format="srt")
    assert response.status_code == 200
    at = 0
    for cue in parse_srt(response.text):
        count = len(cue.text.split())
        assert cue.text.split() == [w["word"] for w in words[at : at + count]]
        assert cue.start_s >= words[at]["start"] - 5e-4  # never before its first word is spoken
        at += count
    assert at == len(words)


def test_verbose_json_marks_repaired_words_only() -> None:
    words = (Word("Hello,", 0.0, 0.4), Word("world.", 0.4, 0.5, repaired=True))
    segment = Segment(0.0, 0.5, "Hello, world.", "en", words, "word")
    transcript = Transcript("Hello, world.", "en", 0.5, (segment,))
    body = transcription_verbose(transcript, words=True, aligner=True)
    assert body["words"] == [
        {"word": "Hello,", "start": 0.0, "end": 0.4},
        {"word": "world.", "start": 0.4, "end": 0.5, "repaired": True},
    ]
