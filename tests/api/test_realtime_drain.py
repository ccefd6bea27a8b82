"""Issue 17: while the server drains (SIGTERM), a new live session is refused with a clear `error`
event and close code 1012 (service restart), so a client knows to reconnect elsewhere or later."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from qasr.api.app import create_app
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings

URL = "/api-ws/v1/realtime?model=qwen3-asr-flash-realtime"


def test_new_sessions_are_refused_while_draining(engine: Qwen3ASREngine, tmp_path: Path) -> None:
    settings = Settings(model=str(tmp_path / "tiny"), warmup=False, data_dir=tmp_path / "data")
    app = create_app(settings, engine)
    with TestClient(app) as client:
        for _ in range(600):
            if client.get("/health/ready").status_code == 200:
                break
            time.sleep(0.05)
        with client.websocket_connect(URL) as ws:  # before the drain: a session starts
            assert ws.receive_json()["type"] == "session.created"
        app.state.drain.draining = True
        with client.websocket_connect(URL) as ws:
            event = ws.receive_json()
            assert event["type"] == "error"
            assert event["error"]["code"] == "server_shutting_down"
            with pytest.raises(WebSocketDisconnect) as closed:
                ws.receive_json()
            assert closed.value.code == 1012
