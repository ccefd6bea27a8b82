"""A full queue answers 429 in both dialects at once, and the server recovers."""

from __future__ import annotations

import base64
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
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


class _Gated(EngineWrapper):
    """The real engine behind a gate the test opens (no timing)."""

    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        self.entered.set()
        self.gate.wait(timeout=60)
        return self.inner.run(jobs)


@pytest.fixture(scope="module")
def audio(tmp_path_factory: pytest.TempPathFactory) -> str:
    clip = synthesize("Overload test.", tmp_path_factory.mktemp("overload") / "clip.wav")
    return "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()


def test_full_queue_is_429_then_recovers(engine: Qwen3ASREngine, audio: str, tmp_path: Path) -> None:
    gated = _Gated(engine)
    settings = Settings(model="tiny", warmup=False, vad=False, max_batch_size=1, max_wait_ms=0, max_queue=1)
    body = {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]},
    }
    with serve_in_thread(settings, gated) as url, ThreadPoolExecutor(4) as pool:
        running = pool.submit(httpx.post, url + GENERATION, json=body, timeout=120)
        assert gated.entered.wait(60)  # one request holds the model
        waiting = pool.submit(httpx.post, url + GENERATION, json=body, timeout=120)
        while httpx.get(url + "/health").json()["queue"] < 1:  # and one fills the queue
            pass
        refused = httpx.post(url + GENERATION, json=body, timeout=30)
        assert refused.status_code == 429
        assert refused.json()["code"] == "Throttling.RateQuota" and "retry" in refused.json()["message"]
        chat = {
            "model": "qwen3-asr-flash",
            "messages": [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio}}]}
            ],
        }
        refused_oa = httpx.post(url + "/v1/chat/completions", json=chat, timeout=30)
        assert refused_oa.status_code == 429
        assert refused_oa.json()["error"]["code"] == "rate_limit_exceeded"
        gated.gate.set()
        assert running.result().status_code == 200 and waiting.result().status_code == 200
        assert httpx.post(url + GENERATION, json=body, timeout=120).status_code == 200  # recovered
