"""Running qasr in production (issue 17): Prometheus metrics that move, health that follows warm-up
and drain, JSON logs without secrets, and a graceful shutdown a client cannot hold up."""

from __future__ import annotations

import base64
import json
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread
from tests.helpers import synthesize
from tests.server import LiveServer, live_server

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize("Operations.", tmp_path_factory.mktemp("ops") / "clip.wav")


def _body(clip: Path) -> dict[str, object]:
    audio = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()
    return {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]},
    }


def _sample(text: str, name: str, **labels: str) -> float:
    """One sample's value from Prometheus text, or 0 when absent."""
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


def test_metrics_move_with_requests_and_batches(engine: Qwen3ASREngine, clip: Path) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False, metrics_public=True)
    route = dict(api="dashscope", route=GENERATION, status="200")
    with serve_in_thread(settings, engine) as url:
        before = httpx.get(url + "/metrics", timeout=10).text
        assert httpx.post(url + GENERATION, json=_body(clip), timeout=120).status_code == 200
        after = httpx.get(url + "/metrics", timeout=10).text
    assert (
        _sample(after, "qasr_http_requests_total", **route)
        == _sample(before, "qasr_http_requests_total", **route) + 1
    )
    assert (
        _sample(after, "qasr_model_batch_size_count", model="asr")
        == _sample(before, "qasr_model_batch_size_count", model="asr") + 1
    )
    assert _sample(after, "qasr_audio_seconds_total", api="dashscope") > 0
    assert _sample(after, "qasr_http_first_result_seconds_count", api="dashscope", route=GENERATION) >= 1
    assert _sample(after, "qasr_real_time_factor_count", api="dashscope") >= 1
    assert _sample(after, "qasr_queue_wait_seconds_count", model="asr", priority="interactive") >= 1
    assert 'qasr_model_info{device="cpu",dtype="float32",layout="hf",linear="default",name=' in after
    for name in (
        "qasr_queue_depth",
        "qasr_rejected_total",
        "qasr_model_batch_seconds_bucket",
        "qasr_draining",
    ):
        assert name in after


def test_metrics_need_a_key_unless_public(engine: Qwen3ASREngine) -> None:
    closed = Settings(model="tiny", warmup=False, vad=False, api_keys=["sk-ops"])
    with serve_in_thread(closed, engine) as url:
        assert httpx.get(url + "/metrics", timeout=10).status_code == 401
        ok = httpx.get(url + "/metrics", headers={"Authorization": "Bearer sk-ops"}, timeout=10)
        assert ok.status_code == 200 and "qasr_http_requests_total" in ok.text
    public = closed.model_copy(update={"metrics_public": True})
    with serve_in_thread(public, engine) as url:
        assert httpx.get(url + "/metrics", timeout=10).status_code == 200


def test_health_follows_warm_up(
    engine: Qwen3ASREngine, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """While the runtime is being built the server answers: live, not ready, API requests 503."""
    from qasr import runtime

    release = threading.Event()
    monkeypatch.setattr(runtime, "warm_up_text", lambda settings: release.wait(60))
    settings = Settings(model=str(tmp_path / "models" / "tiny"), warmup=True, vad=False)
    import uvicorn

    from qasr.api.app import create_app
    from qasr.api.server import uvicorn_config
    from tests.server import free_port

    port = free_port()
    server = uvicorn.Server(
        uvicorn_config(create_app(settings, engine), settings, host="127.0.0.1", port=port)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{port}"
    try:
        while not server.started:
            time.sleep(0.05)
        assert httpx.get(url + "/health/live", timeout=10).status_code == 200
        loading = httpx.get(url + "/health/ready", timeout=10)
        assert loading.status_code == 503 and loading.json()["reason"] == "loading"
        assert httpx.get(url + "/health", timeout=10).status_code == 503
        early = httpx.get(url + "/v1/models", timeout=10)
        assert early.status_code == 503 and early.headers["retry-after"] == "1"
        release.set()
        deadline = time.monotonic() + 60
        while httpx.get(url + "/health/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        health = httpx.get(url + "/health", timeout=10).json()
        assert health["status"] == "ok" and health["model"] == "tiny"  # the name, never the path
        assert str(tmp_path) not in json.dumps(health)
    finally:
        release.set()
        server.should_exit = True
        thread.join(timeout=30)


def _trickle(server: LiveServer, clip: Path) -> tuple[socket.socket, bytes]:
    """A generation request whose headers and first half of body are sent; returns the rest."""
    body = json.dumps(_body(clip)).encode()
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=60)
    head = (
        f"POST {GENERATION} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    sock.sendall(head + body[: len(body) // 2])
    return sock, body[len(body) // 2 :]


def _answer(sock: socket.socket) -> bytes:
    chunks = []
    while chunk := sock.recv(65536):
        chunks.append(chunk)
    return b"".join(chunks)


def test_sigterm_finishes_requests_in_flight_and_refuses_new_ones(
    tiny_dir: Path, tmp_path: Path, clip: Path
) -> None:
    with live_server(tiny_dir, tmp_path, "--no-vad", "--drain-timeout-s", "60") as server:
        sock, rest = _trickle(server, clip)
        time.sleep(0.5)  # the request has reached the app: it is in flight
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 30
        while httpx.get(server.url + "/health/ready", timeout=10).status_code == 200:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        refused = httpx.post(server.url + GENERATION, json=_body(clip), timeout=30)
        assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        assert refused.json()["code"] == "ServiceUnavailable"
        sock.sendall(rest)  # the request in flight completes
        answer = _answer(sock)
        sock.close()
        assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]
        server.process.wait(timeout=30)  # and then the server stops by itself
    assert "draining: 1 request(s) in flight" in server.log


def test_a_trickling_client_cannot_hold_the_exit(tiny_dir: Path, tmp_path: Path, clip: Path) -> None:
    with live_server(tiny_dir, tmp_path, "--no-vad", "--drain-timeout-s", "2") as server:
        sock, _ = _trickle(server, clip)  # never sends the rest
        time.sleep(0.5)
        started = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=30)
        sock.close()
        assert time.monotonic() - started < 20  # the drain timeout (2 s) plus shutdown, not forever
    assert "drain timeout: stopping 1 request(s) still in flight" in server.log


def test_a_second_signal_stops_at_once(tiny_dir: Path, tmp_path: Path, clip: Path) -> None:
    with live_server(tiny_dir, tmp_path, "--no-vad", "--drain-timeout-s", "600") as server:
        sock, _ = _trickle(server, clip)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        server.process.send_signal(signal.SIGTERM)
        try:
            server.process.wait(timeout=30)  # not 600 s
        finally:
            sock.close()


def test_json_logs_carry_the_request_fields_and_no_secrets(
    tiny_dir: Path, tmp_path: Path, clip: Path
) -> None:
    with live_server(
        tiny_dir, tmp_path, "--no-vad", "--log-format", "json", "--api-key", "sk-very-secret"
    ) as server:
        headers = {"Authorization": "Bearer sk-very-secret"}
        ok = httpx.post(server.url + GENERATION, json=_body(clip), headers=headers, timeout=120)
        assert ok.status_code == 200
        bad = httpx.post(
            server.url + GENERATION, json=_body(clip), headers={"Authorization": "Bearer sk-wrong"}
        )
        assert bad.status_code == 401
        httpx.get(server.url + "/health", timeout=10)  # one more line, so the ones above are written
        log = server.log
    entries = [json.loads(line) for line in log.splitlines() if line.startswith("{")]
    assert entries and len(entries) == len([line for line in log.splitlines() if line.strip()])
    access = [e for e in entries if e["logger"] == "qasr.access" and e["path"] == GENERATION]
    assert [e["status"] for e in access] == [200, 401]
    assert access[0]["request_id"] == ok.headers["x-request-id"] == ok.json()["request_id"]
    assert access[0]["api"] == "dashscope" and access[0]["audio_s"] > 0 and access[0]["duration_ms"] > 0
    assert "sk-very-secret" not in log and "sk-wrong" not in log
    assert "data:audio" not in log
