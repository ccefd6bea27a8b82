"""Start `qasr serve` as a real subprocess on 127.0.0.1 for end-to-end tests."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@contextlib.contextmanager
def live_server(
    model_dir: Path, log_dir: Path, *args: str, env: dict[str, str] | None = None
) -> Iterator[LiveServer]:
    """Run `qasr serve --model model_dir` with extra CLI `args`; stop it afterwards."""
    port = free_port()
    log_path = log_dir / f"serve-{port}.log"
    full_env = {**os.environ, "QASR_DTYPE": "float32", "QASR_WARMUP": "false", **(env or {})}
    cmd = [sys.executable, "-m", "qasr.cli", "serve", "--model", str(model_dir), "--port", str(port), *args]
    with log_path.open("wb") as log:
        process = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=full_env)
    server = LiveServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"qasr serve exited early:\n{server.log}")
            try:
                if httpx.get(server.url + "/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"qasr serve did not become healthy:\n{server.log}")
            time.sleep(0.2)
        yield server
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
