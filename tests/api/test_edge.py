"""The HTTP edge for every dialect: admission before any work (429 with no body read, fetched or
decoded), request ids and one access-log line per request, streams bounded in time like plain
requests, and a clear refusal for a WebSocket upgrade on an unknown path."""

from __future__ import annotations

import asyncio
import base64
import logging
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
import websockets

from qasr import transcriber as transcriber_module
from qasr.engine.base import Job
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from qasr.types import EngineResult
from tests.api.inprocess import serve_in_thread
from tests.helpers import EngineWrapper, synthesize

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


class _Gated(EngineWrapper):
    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        self.entered.set()
        self.gate.wait(timeout=60)
        return list(self.inner.run(jobs))


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> str:
    clip = synthesize("Edge test.", tmp_path_factory.mktemp("edge") / "clip.wav")
    return "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()


def _body(audio: str) -> dict[str, object]:
    return {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]},
    }


def test_429_comes_before_the_body_is_read_or_any_audio_decoded(
    engine: Qwen3ASREngine, audio: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    decoded: list[object] = []
    real_stream = transcriber_module.AudioStream

    def counting_stream(*args: object, **kwargs: object) -> object:
        decoded.append(args[0])
        return real_stream(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(transcriber_module, "AudioStream", counting_stream)
    gated = _Gated(engine)
    settings = Settings(model="tiny", warmup=False, vad=False, max_batch_size=1, max_wait_ms=0, max_queue=1)
    with serve_in_thread(settings, gated) as url, ThreadPoolExecutor(2) as pool:
        running = pool.submit(httpx.post, url + GENERATION, json=_body(audio), timeout=120)
        assert gated.entered.wait(60)
        waiting = pool.submit(httpx.post, url + GENERATION, json=_body(audio), timeout=120)
        while httpx.get(url + "/health").json()["queue"] < 1:
            pass
        assert len(decoded) == 2  # the running request and the waiting one
        # A body that is not even JSON: refused for load before it is read, in each dialect.
        for path in (GENERATION, "/v1/chat/completions", "/compatible-mode/v1/chat/completions"):
            refused = httpx.post(url + path, content=b"{not json", timeout=30)  # no Content-Type either
            assert refused.status_code == 429, refused.text
            assert refused.headers["retry-after"] == "1"
        files = {"file": ("a.wav", b"RIFF....not audio")}
        refused = httpx.post(url + "/v1/audio/transcriptions", data={"model": "x"}, files=files, timeout=30)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limit_exceeded"
        assert len(decoded) == 2  # nothing more was decoded
        gated.gate.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200


def test_request_ids_and_one_access_line_per_request(
    engine: Qwen3ASREngine, audio: str, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False)
    with caplog.at_level(logging.INFO, logger="qasr.access"), serve_in_thread(settings, engine) as url:
        ok = httpx.post(url + GENERATION, json=_body(audio), timeout=120)
        bad = httpx.post(
            url + "/v1/chat/completions",
            content=b"{",
            headers={"Content-Type": "application/json"},
            timeout=30,
        )
        missing = httpx.get(url + "/nowhere?key=secret", timeout=30)
    assert ok.status_code == 200 and bad.status_code == 400 and missing.status_code == 404
    rid = ok.headers["x-request-id"]
    assert ok.json()["request_id"] == rid  # the body and the header name the same request
    lines = [r.getMessage() for r in caplog.records if r.name == "qasr.access"]
    lines = [line for line in lines if " /health/ready " not in line]  # serve_in_thread's readiness wait
    assert len(lines) == 3
    assert lines[0].startswith(f"{rid} dashscope POST {GENERATION} 200 audio_s=")
    assert lines[0].split("audio_s=")[1].split()[0] != "-"
    assert lines[1].startswith(
        f"{bad.headers['x-request-id']} openai POST /v1/chat/completions 400 audio_s=-"
    )
    assert lines[2].startswith(f"{missing.headers['x-request-id']} server GET /nowhere 404")
    assert "secret" not in "\n".join(lines)  # no query strings (keys, signatures) in logs


def test_a_stream_is_bounded_by_the_request_timeout(engine: Qwen3ASREngine, audio: str) -> None:
    gated = _Gated(engine)
    settings = Settings(model="tiny", warmup=False, vad=False, request_timeout_s=1.0)
    with serve_in_thread(settings, gated) as url:
        headers = {"X-DashScope-SSE": "enable"}
        answer = httpx.post(url + GENERATION, json=_body(audio), headers=headers, timeout=60)
        gated.gate.set()
    # The first result never came within the limit: a plain 504 before any stream started.
    assert answer.status_code == 504 and answer.json()["code"] == "RequestTimeOut"


def test_a_websocket_upgrade_on_an_unknown_path_is_refused_with_404(engine: Qwen3ASREngine) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False)

    async def connect(url: str) -> int:
        try:
            async with websockets.connect(url.replace("http://", "ws://") + "/api-ws/v1/nowhere"):
                return 101
        except websockets.InvalidStatus as exc:
            return exc.response.status_code

    with serve_in_thread(settings, engine) as url:
        assert asyncio.run(connect(url)) == 404
        assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_bounded_stream_ends_a_stalled_stream_and_closes_it() -> None:
    from qasr.api.edge import bounded_stream
    from qasr.errors import RequestTimeout

    closed: list[bool] = []

    async def stalls() -> object:
        try:
            yield "first"
            await asyncio.Event().wait()  # never set: the model stalled
            yield "never"
        finally:
            closed.append(True)

    async def main() -> list[object]:
        got: list[object] = []
        with pytest.raises(RequestTimeout, match="longer than 0 s"):
            async for item in bounded_stream(stalls(), 0.2):  # type: ignore[arg-type]
                got.append(item)
        return got

    assert asyncio.run(main()) == ["first"]
    assert closed == [True]
