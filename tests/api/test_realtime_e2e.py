"""The cloud's realtime recognition client (`OmniRealtimeConversation`), run unchanged as a separate
program with dashscope 2.0.2 and 1.24.6 against `qasr serve` (issue 16).

The server runs a rigged tiny checkpoint that writes `TEXT` for any speech (tests/helpers.py), through
the real live recognizer and engine, so transcripts can be pinned exactly.
"""

from __future__ import annotations

import itertools
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.api.realtime_support import (
    COMPLETED,
    KEY,
    SDK_OLD,
    TEXT,
    TEXT_EVENT,
    check_text_semantics,
    of_type,
    run_seed,
    silence,
    speech,
    write_wav,
)
from tests.api.sdk import MAIN, sdk_path
from tests.helpers import rigged_checkpoint
from tests.server import LiveServer, live_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("realtime-audio")
    first = speech("Hello, this is a test of live recognition.", root)
    second = speech("The second sentence comes after a pause.", root)
    two = np.concatenate([silence(0.5), first, silence(2.0), second, silence(1.5)])
    write_wav(root / "two16.wav", two)
    write_wav(root / "two8.wav", two, rate=8000)
    write_wav(root / "silence.wav", silence(3.0))
    write_wav(root / "unfinished.wav", np.concatenate([silence(0.5), first]))
    write_wav(root / "manual.wav", np.concatenate([first, second]))
    return root


@pytest.fixture(scope="module")
def server(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    model = rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged-rt") / "model", TEXT)
    # A short receive timeout: WebSocket sessions must outlive it (it is for HTTP requests).
    args = ["--api-key", KEY, "--receive-timeout-s", "2"]
    with live_server(model, tmp_path_factory.mktemp("logs"), *args) as live:
        yield live


@pytest.fixture(scope="module", params=[MAIN, SDK_OLD])
def sdk(request: pytest.FixtureRequest) -> Path | None:
    return sdk_path(request.param)


def _check_utterances(events: list[dict], count: int, language: str = "en") -> None:
    """`count` utterances, each announced, committed and completed with `TEXT` exactly, in order."""
    assert events[0]["type"] == "session.created" and events[0]["session"]["id"].startswith("sess_")
    assert events[-1]["type"] == "session.finished"
    committed = of_type(events, "input_audio_buffer.committed")
    created = of_type(events, "conversation.item.created")
    completed = of_type(events, COMPLETED)
    items = [e["item_id"] for e in committed]
    assert len(set(items)) == count
    assert [e["item"]["id"] for e in created] == items == [e["item_id"] for e in completed]
    assert [e["previous_item_id"] for e in committed] == [None, *items[:-1]]
    for e in completed:
        # The whole utterance decoded once: the rigged text exactly, nothing carried from before.
        assert (e["transcript"], e["language"], e["content_index"]) == (TEXT, language, 0)
        assert "emotion" not in e
    for item in items:
        order = [e["type"] for e in events if e.get("item_id") == item or e.get("item", {}).get("id") == item]
        assert order.index("input_audio_buffer.committed") < order.index(COMPLETED)
    check_text_semantics(events)
    for e in of_type(events, TEXT_EVENT):
        assert (e["text"] + e["stash"]) and TEXT.startswith(e["text"])


@pytest.mark.parametrize("rate", [16000, 8000])
def test_server_vad_two_utterances(sdk: Path | None, server: LiveServer, audio: Path, rate: int) -> None:
    events = run_seed(sdk, server, audio / f"two{rate // 1000}.wav")
    assert events[1]["type"] == "session.updated"
    session = events[1]["session"]
    assert (session["sample_rate"], session["input_audio_format"]) == (rate, "pcm")
    assert session["turn_detection"]["type"] == "server_vad"
    _check_utterances(events, 2)
    started = of_type(events, "input_audio_buffer.speech_started")
    stopped = of_type(events, "input_audio_buffer.speech_stopped")
    assert [e["item_id"] for e in started] == [e["item_id"] for e in stopped]
    # Speech starts after the 0.5 s of silence; the second one after the first and the 2 s pause.
    first_start, second_start = (e["audio_start_ms"] for e in started)
    assert 300 <= first_start <= 900
    assert stopped[0]["audio_end_ms"] + 1500 <= second_start


def test_manual_mode_with_context_and_language(sdk: Path | None, server: LiveServer, audio: Path) -> None:
    # Commits about every 2.6 s of audio, each after an interim result has arrived.
    events = run_seed(
        sdk,
        server,
        audio / "manual.wav",
        mode="manual",
        commit_every_s="2.6",
        wait_text="yes",
        language="en",
        context="Qwen, DashScope",
    )
    session = events[1]["session"]
    assert session["turn_detection"] is None
    assert session["input_audio_transcription"] == {"language": "en", "corpus": {"text": "Qwen, DashScope"}}
    assert not of_type(events, "input_audio_buffer.speech_started")
    count = len(of_type(events, "input_audio_buffer.committed"))
    assert count >= 2
    _check_utterances(events, count)
    texts = of_type(events, TEXT_EVENT)
    assert {e["item_id"] for e in texts} == {e["item_id"] for e in of_type(events, COMPLETED)}
    assert all(e["language"] == "en" for e in texts)


def test_silence_only_session_has_no_items(sdk: Path | None, server: LiveServer, audio: Path) -> None:
    events = run_seed(sdk, server, audio / "silence.wav")
    assert [e["type"] for e in events] == ["session.created", "session.updated", "session.finished"]


def test_finish_mid_utterance_gives_its_result(sdk: Path | None, server: LiveServer, audio: Path) -> None:
    events = run_seed(sdk, server, audio / "unfinished.wav")
    _check_utterances(events, 1)
    kinds = [e["type"] for e in events]
    # The speech was still going: session.finish ends it, and its result comes before session.finished.
    assert kinds[-2:] == [COMPLETED, "session.finished"]
    assert kinds.index("input_audio_buffer.speech_stopped") < kinds.index("input_audio_buffer.committed")


def test_disconnect_without_finish_frees_the_session(server: LiveServer, audio: Path) -> None:
    events = run_seed(None, server, audio / "unfinished.wav", finish="no", pace_s="0.02")
    assert events[0]["type"] == "session.created"
    deadline = time.monotonic() + 30
    while True:
        metrics = httpx.get(server.url + "/metrics", headers={"Authorization": f"Bearer {KEY}"}).text
        if "qasr_live_sessions 0.0" in metrics:
            break
        assert time.monotonic() < deadline, [m for m in metrics.splitlines() if "live" in m]
        time.sleep(0.2)
    assert "ended=disconnect" in server.log
    for line in server.log.splitlines():
        if " realtime WS " in line:
            assert "?" not in line and KEY not in line


def test_sessions_in_a_row_are_independent(server: LiveServer, audio: Path) -> None:
    """The same audio in two sessions, and twice in one: identical results, nothing carried over."""
    one = run_seed(None, server, audio / "two16.wav")
    two = run_seed(None, server, audio / "two16.wav")
    finals = [[e["transcript"] for e in of_type(events, COMPLETED)] for events in (one, two)]
    assert finals[0] == finals[1] == [TEXT, TEXT]
    assert all(a != b for a, b in itertools.pairwise(e["item_id"] for e in of_type(one + two, COMPLETED)))
