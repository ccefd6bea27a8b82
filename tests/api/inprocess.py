"""Serve an app built by `create_app` in a background thread on 127.0.0.1 (for tests that need to
hold the engine in their hands, e.g. to inject a failure)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator

import httpx
import uvicorn

from qasr.api.app import create_app
from qasr.api.server import uvicorn_config
from qasr.engine.base import Engine
from qasr.settings import Settings
from tests.server import free_port


@contextlib.contextmanager
def serve_in_thread(settings: Settings, engine: Engine) -> Iterator[str]:
    port = free_port()
    # The server qasr serve runs (its connection limits included), on a free loopback port.
    config = uvicorn_config(create_app(settings, engine=engine), settings, host="127.0.0.1", port=port)
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("in-process server did not start")
        time.sleep(0.05)
    # The runtime is built in the background: wait until the server says it is ready.
    url = f"http://127.0.0.1:{port}"
    while httpx.get(url + "/health/ready", timeout=10).status_code != 200:
        if time.monotonic() > deadline:
            raise RuntimeError("in-process server did not become ready")
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
