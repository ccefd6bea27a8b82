"""Failures during a stream and client disconnects, with the real pipeline and a test-held engine."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path

import httpx
import pytest

from qasr.engine.base import Job
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from qasr.types import EngineResult
from tests.api.inprocess import serve_in_thread
from tests.helpers import EngineWrapper, synthesize

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


class _Faulty(EngineWrapper):
    """The real engine, failing its Nth batch (a server-side failure in the middle of a stream), and
    recording whether jobs were cancelled."""

    def __init__(self, inner: Qwen3ASREngine, fail_on: int | None = None) -> None:
        super().__init__(inner)
        self.fail_on = fail_on
        self.calls = 0
        self.cancelled_rows: list[bool] = []
        self.first_delta = threading.Event()

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        self.calls += 1
        if self.calls == self.fail_on:
            raise RuntimeError("simulated model failure")
        results = self.inner.run(jobs)
        self.cancelled_rows += [j.cancelled() if j.cancelled else False for j in jobs]
        return results


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = "First sentence here. Second sentence follows after a pause. And a third one closes it."
    return synthesize(text, tmp_path_factory.mktemp("speech") / "speech.wav")


def _settings(speech: Path, **extra: object) -> Settings:
    # Short fixed windows give several segments, hence several model calls per request.
    return Settings(
        model="tiny", warmup=False, vad=False, segment_max_s=1.5, allow_local_dirs=[speech.parent], **extra
    )


def _body(speech: Path) -> dict:
    return {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": f"file://{speech}"}]}]},
        "parameters": {"incremental_output": True},
    }


def _events(raw: str) -> Iterator[tuple[str, str, dict]]:
    for block in raw.split("\n\n"):
        if block.strip():
            lines = block.split("\n")
            yield lines[1], lines[2], json.loads(lines[3][len("data:") :])


def test_failure_mid_stream_is_one_error_event(engine: Qwen3ASREngine, speech: Path) -> None:
    faulty = _Faulty(engine, fail_on=3)
    with serve_in_thread(_settings(speech, max_batch_size=1), faulty) as url:
        headers = {"X-DashScope-SSE": "enable"}
        raw = httpx.post(url + GENERATION, json=_body(speech), headers=headers, timeout=120).text
        events = list(_events(raw))
        assert [e[0] for e in events[:-1]] == ["event:result"] * (len(events) - 1) and len(events) >= 2
        kind, status, body = events[-1]
        assert (kind, status) == ("event:error", ":HTTP_STATUS/500")
        assert body["code"] == "InternalError" and "simulated" not in body["message"]  # no internals leak
        assert body["request_id"] == events[0][2]["request_id"]
        # the server keeps serving
        assert httpx.get(url + "/health").json()["status"] == "ok"
        assert httpx.post(url + GENERATION, json=_body(speech), timeout=120).status_code == 200


def test_sdk_sees_result_then_error(
    engine: Qwen3ASREngine, speech: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    import dashscope

    faulty = _Faulty(engine, fail_on=3)
    with serve_in_thread(_settings(speech, max_batch_size=1), faulty) as url:
        # Every SDK request goes to the test server (the module attribute, not base_address: spec 1.1).
        monkeypatch.setattr(dashscope, "base_http_api_url", url + "/api/v1")
        audio = "data:audio/wav;base64," + base64.b64encode(speech.read_bytes()).decode()
        responses = dashscope.MultiModalConversation.call(
            api_key="sk-any",
            model="qwen3-asr-flash",
            messages=[{"role": "user", "content": [{"audio": audio}]}],
            result_format="message",
            stream=True,
        )
        items = list(responses)
    assert items[0].status_code == 200
    assert (items[-1].status_code, items[-1].code) == (400, "InternalError")  # the SDK reports 400 (spec 5.2)


def test_disconnect_cancels_the_work(engine: Qwen3ASREngine, speech: Path) -> None:
    faulty = _Faulty(engine)
    with serve_in_thread(_settings(speech, max_batch_size=1), faulty) as url:
        assert httpx.post(url + GENERATION, json=_body(speech), timeout=120).status_code == 200
        full = faulty.calls  # model calls for one whole request (one per segment)
        assert full >= 4
        with httpx.stream(
            "POST", url + GENERATION, json=_body(speech), headers={"X-DashScope-SSE": "enable"}
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data:"):
                    break  # one chunk, then hang up
        # The next request queues behind whatever the abandoned one still had: its segments were
        # taken out of the queue, so together they cost less than two whole requests.
        assert httpx.post(url + GENERATION, json=_body(speech), timeout=120).status_code == 200
        abandoned = faulty.calls - 2 * full
        assert abandoned < full - 1
        assert httpx.get(url + "/health").json()["queue"] == 0
