"""The realtime API on the wire, with a plain WebSocket client: bad events, authentication and
browser tokens, limits, and a drain (issue 16, issue 17). The server runs the rigged tiny checkpoint."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.api.realtime_support import (
    COMPLETED,
    KEY,
    MODEL,
    TEXT,
    of_type,
    raw_client,
    silence,
    speech,
)
from tests.helpers import rigged_checkpoint
from tests.server import LiveServer, live_server

pytestmark = pytest.mark.slow
TOKENS = "/api/v1/realtime/tokens"


@pytest.fixture(scope="module")
def model(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged-wire") / "model", TEXT)


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech("Hello, this is a test of live recognition.", tmp_path_factory.mktemp("wire-audio"))


@pytest.fixture(scope="module")
def server(model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    # -vv: debug logs, where the `websockets` library writes every request header, keys included.
    args = ["--api-key", KEY, "--live-max-append-bytes", "20000", "-v", "-v"]
    with live_server(model, tmp_path_factory.mktemp("logs"), *args) as live:
        yield live


def _error(event: dict, code: str, event_id: str | None = None) -> dict:
    assert event["type"] == "error", event
    error = event["error"]
    assert error["code"] == code, error
    assert error["type"] in ("invalid_request_error", "server_error", "rate_limit_error")
    assert error["message"] and "Traceback" not in error["message"]
    if event_id is not None:
        assert error["event_id"] == event_id
    return dict(error)


def test_bad_events_get_error_events_and_the_session_goes_on(server: LiveServer, words: np.ndarray) -> None:
    with raw_client(server) as client:
        assert client.next()["type"] == "session.created"
        client.send("no.such.event", "e1")
        _error(client.next(), "unknown_event", "e1")
        client.ws.send("{not json")
        _error(client.next(), "invalid_event")
        client.ws.send(b"\x00\x01binary")
        _error(client.next(), "invalid_event")
        client.send("input_audio_buffer.append", "e2", audio="not base64!!")
        assert _error(client.next(), "invalid_value", "e2")["param"] == "audio"
        client.send("input_audio_buffer.append", "e3", audio="A" * 20004)
        _error(client.next(), "audio_too_large", "e3")
        client.send("session.update", "e4", session={"input_audio_format": "opus"})
        assert "opus" in _error(client.next(), "invalid_value", "e4")["message"]
        client.send("session.update", "e5", session={"sample_rate": 44100})
        assert _error(client.next(), "invalid_value", "e5")["param"] == "session.sample_rate"
        client.send("session.update", "e6", session={"turn_detection": {"threshold": 3}})
        assert _error(client.next(), "invalid_value", "e6")["param"] == "session.turn_detection.threshold"
        client.send("session.update", "e7", session={"input_audio_transcription": {"language": "xx"}})
        _error(client.next(), "unsupported_language", "e7")
        client.send("input_audio_buffer.commit", "e8")  # server VAD mode: the server commits
        _error(client.next(), "invalid_request", "e8")
        client.send("response.create", "e9")
        _error(client.next(), "unsupported_event", "e9")
        # Unknown keys are ignored; the session still recognizes speech.
        client.send("session.update", "e10", session={"voice": "Cherry", "whatever": 1})
        assert client.next()["type"] == "session.updated"
        client.append(np.concatenate([silence(0.3), words]))
        client.send("session.finish")
        events = client.rest()
    assert [e["transcript"] for e in of_type(events, COMPLETED)] == [TEXT]
    assert events[-1]["type"] == "session.finished"


def test_manual_mode_commit_and_clear(server: LiveServer, words: np.ndarray) -> None:
    with raw_client(server) as client:
        client.next()
        client.send("session.update", session={"turn_detection": None, "sample_rate": 16000})
        assert client.next()["session"]["turn_detection"] is None
        client.send("input_audio_buffer.commit", "c1")
        _error(client.next(), "input_audio_buffer_commit_empty", "c1")
        client.append(words)
        client.send("input_audio_buffer.clear")
        assert client.until("input_audio_buffer.cleared")
        client.append(words)
        client.send("input_audio_buffer.commit")
        events = client.until(COMPLETED)
        assert events[-1]["transcript"] == TEXT
        assert [e["type"] for e in events if not e["type"].endswith(".text")][:2] == [
            "input_audio_buffer.committed",
            "conversation.item.created",
        ]
        client.send("session.finish")
        assert client.rest()[-1]["type"] == "session.finished"
        assert client.ws.close_code == 1000


@pytest.mark.parametrize(
    ("key", "query", "code"),
    [
        (None, f"?model={MODEL}", "invalid_api_key"),
        ("sk-wrong", f"?model={MODEL}", "invalid_api_key"),
        (KEY, "?model=qwen-max", "model_not_found"),
        (KEY, "", "model_not_found"),
        (None, f"?model={MODEL}&api_key={KEY}", "invalid_api_key"),  # never a key in the URL
    ],
)
def test_refused_sessions(server: LiveServer, key: str | None, query: str, code: str) -> None:
    with raw_client(server, key=key, query=query) as client:
        events = client.rest()
        assert len(events) == 1
        _error(events[0], code)
        assert client.ws.close_code == 1008


def test_browser_token(server: LiveServer, words: np.ndarray) -> None:
    assert httpx.post(server.url + TOKENS).status_code == 401
    issued = httpx.post(server.url + TOKENS, headers={"Authorization": f"Bearer {KEY}"})
    assert issued.status_code == 200 and issued.headers["cache-control"] == "no-store"
    body = issued.json()
    token = body["token"]
    assert 0 < body["expires_in_s"] <= 60 and body["subprotocols"] == ["qasr.realtime", f"qasr-token.{token}"]
    with raw_client(server, key=None, subprotocols=body["subprotocols"]) as client:
        assert client.ws.subprotocol == "qasr.realtime"
        assert client.next()["type"] == "session.created"
        client.append(words)
        client.send("session.finish")
        events = client.rest()
        assert [e["transcript"] for e in of_type(events, COMPLETED)] == [TEXT], [
            e.get("error") for e in events
        ]
    with raw_client(server, key=None, subprotocols=body["subprotocols"]) as again:  # spent
        _error(again.rest()[0], "invalid_api_key")
    second = httpx.post(server.url + TOKENS, headers={"Authorization": f"Bearer {KEY}"}).json()["token"]
    with raw_client(server, key=None, query=f"?model={MODEL}&token={second}") as client:
        assert client.next()["type"] == "session.created"
        client.send("session.finish")
        assert client.rest()[-1]["type"] == "session.finished"
    forged = token[:-4] + ("AAAA" if not token.endswith("AAAA") else "BBBB")
    with raw_client(server, key=None, query=f"?model={MODEL}&token={forged}") as client:
        _error(client.rest()[0], "invalid_api_key")
    log = server.log
    assert "< GET /api-ws/v1/realtime?… HTTP/1.1" in log  # debug logging was on: the lines were there
    assert token not in log and second not in log and forged not in log and KEY not in log


def test_limits(model: Path, tmp_path: Path) -> None:
    args = ["--live-max-sessions", "1", "--live-idle-timeout-s", "1.5", "--live-max-session-s", "4"]
    with live_server(model, tmp_path, *args) as server:
        with raw_client(server, key=None) as first:
            assert first.next()["type"] == "session.created"
            with raw_client(server, key=None) as second:
                _error(second.rest()[0], "too_many_sessions")
                assert second.ws.close_code == 1013
            # No event for longer than the idle timeout: ended with a reason, closed normally.
            events = first.rest()
            _error(events[-1], "idle_timeout")
            assert first.ws.close_code == 1000
        with raw_client(server, key=None) as client:  # the slot is free again
            client.next()
            started = time.monotonic()
            with pytest.raises(ConnectionClosed):
                while True:  # keeps sending (never idle) until the session length limit
                    client.append(silence(0.2))
                    time.sleep(0.2)
                    assert time.monotonic() - started < 30
            events = client.rest()
        _error(events[-1], "session_expired")
        # A client that goes away without session.finish frees its slot.
        with raw_client(server, key=None) as gone:
            gone.next()
        deadline = time.monotonic() + 20
        while "qasr_live_sessions 0.0" not in httpx.get(server.url + "/metrics").text:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        with raw_client(server, key=None) as client:
            assert client.next()["type"] == "session.created"


def test_drain_finishes_the_utterance_in_progress(model: Path, tmp_path: Path, words: np.ndarray) -> None:
    with live_server(model, tmp_path, "--drain-timeout-s", "30") as server:
        with raw_client(server, key=None) as client:
            client.next()
            client.append(np.concatenate([silence(0.3), words]))  # still speaking: no end of speech
            client.until("input_audio_buffer.speech_started")
            os.kill(server.process.pid, signal.SIGTERM)
            events = client.rest()
            assert client.ws.close_code == 1000
        assert [e["transcript"] for e in of_type(events, COMPLETED)] == [TEXT]
        _error(events[-1], "server_shutting_down")
        server.process.wait(timeout=30)  # the server waited for the session, then stopped
        assert "ended=draining" in server.log
        with pytest.raises((OSError, InvalidStatus)), raw_client(server, key=None):
            pass


def test_upgrade_outlives_the_http_receive_timeout(model: Path, tmp_path: Path, words: np.ndarray) -> None:
    """The HTTP limits (a request must arrive within --receive-timeout-s) do not cut a WebSocket."""
    with live_server(model, tmp_path, "--receive-timeout-s", "1") as server:
        with raw_client(server, key=None) as client:
            client.next()
            for _ in range(6):
                client.append(silence(0.5))
                time.sleep(0.5)
            client.append(words)
            client.send("session.finish")
            events = client.rest()
        assert [e["transcript"] for e in of_type(events, COMPLETED)] == [TEXT]
        assert events[-1]["type"] == "session.finished"


def test_oversized_frame_is_refused_by_size(server: LiveServer) -> None:
    """A frame far past the append limit (and its envelope) is not read at all: close 1009."""
    with raw_client(server) as client:
        client.next()
        client.ws.send('{"type": "input_audio_buffer.append", "audio": "' + "A" * 200_000 + '"}')
        assert client.rest() == []
        assert client.ws.close_code == 1009


def test_upgrade_over_the_connection_cap_gets_503(model: Path, tmp_path: Path) -> None:
    """Open WebSocket sessions count against --max-connections; one more upgrade is answered 503
    (not let through as a health-check connection), while /health still answers."""
    with (
        live_server(model, tmp_path, "--max-connections", "1") as server,
        raw_client(server, key=None) as client,
    ):
        assert client.next()["type"] == "session.created"
        with pytest.raises(InvalidStatus) as refused, raw_client(server, key=None):
            pass
        assert refused.value.response.status_code == 503
        assert httpx.get(server.url + "/health").status_code == 200
        client.send("session.finish")
        assert client.rest()[-1]["type"] == "session.finished"


def test_itn_applies_to_final_transcripts(tiny_dir: Path, tmp_path: Path, words: np.ndarray) -> None:
    """qasr's `input_audio_transcription.enable_itn`: the same text processing as the other APIs."""
    from qasr.text import itn

    if not itn.available():
        pytest.skip(itn.UNAVAILABLE_HINT)
    model = rigged_checkpoint(tiny_dir, tmp_path / "model", "It is twenty five.")
    with live_server(model, tmp_path) as server:
        transcripts = []
        for enable in (True, False):
            with raw_client(server, key=None) as client:
                client.next()
                client.send("session.update", session={"input_audio_transcription": {"enable_itn": enable}})
                updated = client.next()["session"]["input_audio_transcription"]
                assert updated.get("enable_itn", False) is enable
                client.append(np.concatenate([silence(0.3), words]))
                client.send("session.finish")
                events = client.rest()
                transcripts += [e["transcript"] for e in of_type(events, COMPLETED)]
                assert of_type(events, COMPLETED), events
    assert transcripts == ["It is 25.", "It is twenty five."]
