"""One live server for the hostile-input tests, and a guard that no test leaves a traceback or an
error line in the log: client input is answered, never logged as a server failure (issue 13)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread
from tests.reliability.wire import KEY


@pytest.fixture(scope="module")
def base(engine: Qwen3ASREngine) -> Iterator[str]:
    """The server's URL: API keys on, loopback downloads allowed (for the local HTTP server)."""
    settings = Settings(model="tiny", warmup=False, vad=False, api_keys=[KEY], allow_url_hosts=["127.0.0.1"])
    with serve_in_thread(settings, engine) as url:
        yield url


@pytest.fixture(autouse=True)
def no_tracebacks(request: pytest.FixtureRequest, caplog: pytest.LogCaptureFixture) -> Iterator[None]:
    caplog.set_level(logging.INFO)
    yield
    if request.node.get_closest_marker("xfail") is not None:
        return  # a known failure (waiting for a fix elsewhere) may log one
    failures = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]
    assert not failures, [f"{r.name}: {r.getMessage()}" for r in failures]
