"""Slow, oversized and too many connections (issue 13): none of them stops normal clients, and each
is answered or closed within its limit. Raw sockets on 127.0.0.1; no timing decides a pass beyond
generous upper bounds on how long a refusal may take."""

from __future__ import annotations

import base64
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread
from tests.helpers import EngineWrapper, synthesize

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    return sock


def _read_all(sock: socket.socket, within_s: float) -> bytes:
    """Everything the server sends until it closes the connection (or `within_s` pass)."""
    sock.settimeout(within_s)
    chunks = []
    with contextlib.suppress(TimeoutError, ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


@contextlib.contextmanager
def _sockets(url: str, n: int) -> Iterator[list[socket.socket]]:
    socks = [_connect(url) for _ in range(n)]
    try:
        yield socks
    finally:
        for sock in socks:
            sock.close()


def test_trickled_headers_and_bodies_are_cut_off(engine: Qwen3ASREngine) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False, receive_timeout_s=1.0)
    with serve_in_thread(settings, engine) as url:
        silent = _connect(url)  # connects and sends nothing
        headers = _connect(url)
        headers.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n")  # never finishes its headers
        body = _connect(url)
        body.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 1000\r\n\r\n{"model": '
        )  # 10 of 1000 bytes, then nothing
        started = time.monotonic()
        answers = [_read_all(s, within_s=15) for s in (silent, headers, body)]
        assert time.monotonic() - started < 15
        for answer in answers[:2]:
            assert answer.startswith(b"HTTP/1.1 408 "), answer
        # The body's request reached the app: it is told the client is gone, and the socket closes.
        assert answers[2] == b"" or answers[2].startswith(b"HTTP/1.1 408 "), answers[2]
        for sock in (silent, headers, body):
            sock.close()
        assert httpx.get(url + "/health", timeout=10).status_code == 200


def test_oversized_headers_are_refused(engine: Qwen3ASREngine) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False, max_header_bytes=8 * 1024)
    with serve_in_thread(settings, engine) as url:
        sock = _connect(url)
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 64 * 1024 + b"\r\n\r\n")
        answer = _read_all(sock, within_s=15)
        sock.close()
        assert answer.split(b" ")[1] in {b"400", b"431"}, answer[:200]
        ok = httpx.get(url + "/health", headers={"X-Small": "a" * 1024}, timeout=10)
        assert ok.status_code == 200


class _Gated(EngineWrapper):
    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.received = 0

    def run(self, jobs: Any) -> Any:
        self.received += len(jobs)
        self.gate.wait(timeout=60)
        return self.inner.run(jobs)


def test_beyond_the_connection_cap_health_still_answers_and_the_rest_is_refused(
    engine: Qwen3ASREngine, tmp_path: Path
) -> None:
    """The cap is held by requests that arrived whole and wait for the model (nothing to cut off):
    one more connection may still reach /health, anything else there gets 503, and past the
    reserve a connection is closed at once."""
    clip = synthesize("Held.", tmp_path / "held.wav")
    body = {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": _data_uri(clip)}]}]},
    }
    gated = _Gated(engine)
    settings = Settings(
        model="tiny", warmup=False, vad=False, max_connections=5, health_connections=2, max_batch_size=8
    )
    with (
        serve_in_thread(settings, gated) as url,
        ThreadPoolExecutor(4) as pool,
        httpx.Client(timeout=10) as watcher,  # one kept-alive connection of the five, opened first
    ):
        assert watcher.get(url + "/health").status_code == 200
        held = [pool.submit(httpx.post, url + GENERATION, json=body, timeout=60) for _ in range(4)]
        deadline = time.monotonic() + 30
        while gated.received + watcher.get(url + "/health").json()["queue"] < 4:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        with httpx.Client(timeout=10) as extra:  # the 5th: only /health
            assert extra.get(url + "/health").status_code == 200
        with httpx.Client(timeout=10) as extra:
            refused = extra.get(url + "/v1/models")
            assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
        with _sockets(url, 3) as more:  # past cap + reserve: closed at once, unanswered
            answers = [_read_all(s, within_s=10) for s in more]
        assert b"" in answers
        gated.gate.set()
        assert [f.result().status_code for f in held] == [200] * 4
        assert httpx.get(url + "/v1/models", timeout=10).status_code == 200  # nothing held: normal


def _data_uri(path: Path) -> str:
    return "data:audio/wav;base64," + base64.b64encode(path.read_bytes()).decode()


def test_a_new_client_over_the_cap_cuts_off_the_slowest_trickler(engine: Qwen3ASREngine) -> None:
    """Connections that trickle their requests hold the whole cap: a normal client still gets in, by
    cutting off (408) the one that has been receiving longest."""
    settings = Settings(
        model="tiny", warmup=False, vad=False, max_connections=4, health_connections=2, receive_timeout_s=60
    )
    with serve_in_thread(settings, engine) as url, _sockets(url, 4) as slow:
        for sock in slow:
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n")  # and never the rest
        time.sleep(0.5)  # trickling (no byte since) for longer than the slow-eviction age
        clients = [httpx.Client(timeout=10) for _ in range(3)]
        try:
            for client in clients:  # each new client, kept open, makes room for itself
                assert client.get(url + "/v1/models").status_code == 200
        finally:
            for client in clients:
                client.close()
        answers = [_read_all(s, within_s=2) for s in slow]
        assert sum(a.startswith(b"HTTP/1.1 408 ") for a in answers) == 3  # the three oldest
