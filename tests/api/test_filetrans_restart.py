"""Durability of async file jobs (issue 15): `kill -9` of the real `qasr serve` while one task runs
and another waits loses neither, and neither does a graceful stop (SIGTERM: the drain does not wait
for a job, which runs again after the restart; issue 17); after a restart on the same data directory both finish, each with a
complete result. The running task is held RUNNING by a download the test keeps open (no timing)."""

from __future__ import annotations

import signal
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.helpers import rigged_checkpoint, two_utterances
from tests.jobs.gate import file_server
from tests.server import LiveServer, live_server

KEY = "sk-restart"
TEXT = "Welcome to the speech recognition service."
HEADERS = {"Authorization": f"Bearer {KEY}", "X-DashScope-Async": "enable"}


def _submit(server: LiveServer, url: str) -> str:
    body = {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": url}}
    response = httpx.post(f"{server.url}/api/v1/services/audio/asr/transcription", json=body, headers=HEADERS)
    assert response.status_code == 200, response.text
    task_id: str = response.json()["output"]["task_id"]
    return task_id


def _status(server: LiveServer, task_id: str) -> dict[str, Any]:
    output: dict[str, Any] = httpx.get(f"{server.url}/api/v1/tasks/{task_id}", headers=HEADERS).json()[
        "output"
    ]
    return output


def _finished(server: LiveServer, task_id: str) -> dict[str, Any]:
    for _ in range(1200):
        output = _status(server, task_id)
        if output["task_status"] not in ("PENDING", "RUNNING"):
            return output
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish:\n{server.log}")


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["kill-9", "sigterm"])
def test_a_stop_loses_no_task(tiny_dir: Path, tmp_path: Path, stop: signal.Signals) -> None:
    model = rigged_checkpoint(tiny_dir, tmp_path / "model", TEXT)
    audio = tmp_path / "audio"
    audio.mkdir()
    two_utterances("Hello there, how are you?", "I am fine, thank you.", audio / "two.wav")
    env = {"QASR_DATA_DIR": str(tmp_path / "data")}
    with file_server(audio) as gates:
        args = ["--api-key", KEY, "--allow-url-host", gates.url.removeprefix("http://")]
        with live_server(model, tmp_path, *args, env=env) as first:
            running = _submit(first, f"{gates.url}/gated/restart/two.wav")
            assert gates.event(gates.requested, "restart").wait(60)
            waiting = _submit(first, f"{gates.url}/open/two.wav")
            assert _status(first, running)["task_status"] == "RUNNING"
            assert _status(first, waiting)["task_status"] == "PENDING"  # one job at a time
            first.process.send_signal(stop)
            # SIGTERM: the drain ends at once (no request in flight; the running job is left to
            # resume), and the server stops as the signal says.
            assert first.process.wait(timeout=30) == -stop
        gates.event(gates.opened, "restart").set()
        with live_server(model, tmp_path, *args, env=env) as second:
            for task_id in (running, waiting):
                output = _finished(second, task_id)
                assert output["task_status"] == "SUCCEEDED", output
                document = httpx.get(output["result"]["transcription_url"]).json()
                (transcript,) = document["transcripts"]
                assert transcript["text"] == f"{TEXT} {TEXT}"  # both speech segments: complete
                assert [s["text"] for s in transcript["sentences"]] == [TEXT, TEXT]
            assert "1 task(s) left running by the last process will run again" in second.log
