"""The cloud's async file transcription API (`qwen3-asr-flash-filetrans`, issue 15) driven by the
official `dashscope` SDK, 2.0.2 and 1.25.2, as unchanged programs against `qasr serve`: a rigged tiny
model (one known sentence per speech segment) and a tiny random forced aligner. Inputs come from a
file server on 127.0.0.1 that the test controls (`tests.jobs.gate`), so a job can be held RUNNING
without any timing."""

from __future__ import annotations

import json
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from tests.api.sdk import MAIN, sdk_env, sdk_path
from tests.helpers import rigged_checkpoint, synthesize, two_utterances
from tests.jobs.gate import Gates, file_server
from tests.server import LiveServer, live_server

SEEDS = Path(__file__).parent / "seeds"
KEY, OTHER_KEY = "sk-filetrans-test", "sk-filetrans-other"
TEXT = "Welcome to the speech recognition service."
SUBMIT = "/api/v1/services/audio/asr/transcription"
SDK_OLD = "1.25.2"


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("filetrans-audio")
    two_utterances("Hello there, how are you?", "I am fine, thank you.", root / "two.wav")
    synthesize("A short recording for a job.", root / "short.mp3", fmt="mp3")
    _stereo(root / "short.mp3", root / "stereo.wav")
    (root / "notes.txt").write_text("this is not audio\n" * 100)
    return root


def _stereo(source: Path, out: Path) -> None:
    """Speech on the left channel, silence on the right."""
    from qasr.audio.decode import decode_audio

    speech = (decode_audio(source).samples * 32767).astype("<i2")
    frames = np.stack([speech, np.zeros_like(speech)], axis=1)
    with wave.open(str(out), "wb") as wav:
        wav.setnchannels(2)
        wav.setsampwidth(2)
        wav.setframerate(16_000)
        wav.writeframes(frames.tobytes())


@pytest.fixture(scope="module")
def gate(files: Path) -> Iterator[Gates]:
    with file_server(files) as served:
        yield served


@pytest.fixture(scope="module")
def server(
    tiny_dir: Path, tiny_aligner_dir: Path, gate: Gates, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[LiveServer]:
    model = rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged-ft") / "model", TEXT)
    host = gate.url.removeprefix("http://")
    args = ["--api-key", KEY, "--api-key", OTHER_KEY, "--aligner", str(tiny_aligner_dir)]
    args += ["--allow-url-host", host, "--jobs-max-audio-s", "60"]
    env = {"QASR_DATA_DIR": str(tmp_path_factory.mktemp("ft-data"))}
    with live_server(model, tmp_path_factory.mktemp("logs"), *args, env=env) as live:
        yield live


@pytest.fixture(scope="module", params=[MAIN, SDK_OLD])
def sdk(request: pytest.FixtureRequest) -> Path | None:
    """Which dashscope the seeds import (tests/api/sdk.py)."""
    return sdk_path(request.param)


def _seed(sdk: Path | None, seed: str, server: LiveServer, key: str = KEY, **env: str) -> dict[str, Any]:
    full = {**sdk_env(sdk), "DASHSCOPE_HTTP_BASE_URL": f"{server.url}/api/v1", "DASHSCOPE_API_KEY": key}
    ran = subprocess.run(
        [sys.executable, "-c", (SEEDS / seed).read_text()],
        capture_output=True,
        text=True,
        env={**full, **env},
        timeout=300,
    )
    assert ran.returncode == 0, ran.stderr
    out: dict[str, Any] = json.loads(ran.stdout)
    return out


def _words_ok(sentence: dict[str, Any]) -> None:
    words = sentence["words"]
    assert words and all(set(w) == {"begin_time", "end_time", "text", "punctuation"} for w in words)
    assert all(isinstance(w["begin_time"], int) and w["begin_time"] <= w["end_time"] for w in words)
    assert "".join(w["text"] + w["punctuation"] for w in words).replace(" ", "") == sentence["text"].replace(
        " ", ""
    )


def test_submit_wait_and_fetch_with_words(sdk: Path | None, server: LiveServer, gate: Gates) -> None:
    out = _seed(sdk, "filetrans_wait.py", server, FT_FILE_URL=f"{gate.url}/open/two.wav", FT_WORDS="1")
    assert out["submit"]["status_code"] == 200
    assert out["submit"]["output"]["task_status"] == "PENDING"
    wait = out["wait"]
    assert wait["status_code"] == 200 and wait["output"]["task_status"] == "SUCCEEDED"
    assert wait["output"]["task_metrics"] == {"TOTAL": 1, "SUCCEEDED": 1, "FAILED": 0}
    assert wait["usage"]["seconds"] >= 3
    for key in ("submit_time", "scheduled_time", "end_time"):
        assert len(wait["output"][key]) == len("2025-10-27 14:19:31.150")
    doc = out["document"]
    assert doc["file_url"] == f"{gate.url}/open/two.wav"
    assert doc["audio_info"] == {"format": "wav", "sample_rate": 22050}
    (transcript,) = doc["transcripts"]
    assert transcript["channel_id"] == 0
    assert transcript["text"] == f"{TEXT} {TEXT}"  # two speech segments, the rigged sentence each
    sentences = transcript["sentences"]
    assert [s["sentence_id"] for s in sentences] == list(range(len(sentences)))
    assert [s["text"] for s in sentences] == [TEXT, TEXT]
    assert sentences[0]["end_time"] <= sentences[1]["begin_time"]  # in order on the file's timeline
    for sentence in sentences:
        assert sentence["language"] == "en" and "emotion" not in sentence
        _words_ok(sentence)
        assert sentence["words"][-1]["text"] == "service" and sentence["words"][-1]["punctuation"] == "."


def test_local_file_uploaded_first(sdk: Path | None, server: LiveServer, files: Path) -> None:
    out = _seed(sdk, "filetrans_wait.py", server, FT_UPLOAD=str(files / "two.wav"))
    assert out["wait"]["output"]["task_status"] == "SUCCEEDED"
    assert out["document"]["file_url"].startswith("oss://")
    assert out["document"]["transcripts"][0]["text"] == f"{TEXT} {TEXT}"
    # Another key cannot use that upload: refused at submit, before anything is stored.
    body = {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": out["document"]["file_url"]}}
    theirs = httpx.post(server.url + SUBMIT, json=body, headers=_headers(OTHER_KEY), timeout=30)
    assert theirs.status_code == 400 and theirs.json()["code"] == "InvalidURL"


def test_words_only_when_asked(sdk: Path | None, server: LiveServer, gate: Gates) -> None:
    out = _seed(sdk, "filetrans_wait.py", server, FT_FILE_URL=f"{gate.url}/open/two.wav")
    (transcript,) = out["document"]["transcripts"]
    assert transcript["text"] == f"{TEXT} {TEXT}"
    assert all("words" not in s for s in transcript["sentences"])
    assert "word_timestamps" not in transcript


def test_channels_each_transcribed(sdk: Path | None, server: LiveServer, gate: Gates) -> None:
    out = _seed(
        sdk, "filetrans_wait.py", server, FT_FILE_URL=f"{gate.url}/open/stereo.wav", FT_CHANNELS="[0, 1]"
    )
    assert out["wait"]["output"]["task_status"] == "SUCCEEDED"
    left, right = out["document"]["transcripts"]
    assert (left["channel_id"], right["channel_id"]) == (0, 1)
    assert left["text"] == TEXT and left["sentences"]
    assert right["text"] == "" and right["sentences"] == []  # silence never reaches the model


@pytest.mark.parametrize(
    ("name", "channels", "code"),
    [
        ("notes.txt", "[0]", "FILE_CHECK_FAILED"),
        ("missing.wav", "[0]", "FILE_404_NOT_FOUND"),
        ("two.wav", "[1]", "InvalidParameter"),
    ],
)
def test_failure_codes(server: LiveServer, gate: Gates, name: str, channels: str, code: str) -> None:
    out = _seed(
        None, "filetrans_wait.py", server, FT_FILE_URL=f"{gate.url}/open/{name}", FT_CHANNELS=channels
    )
    output = out["wait"]["output"]
    assert output["task_status"] == "FAILED"
    assert output["code"] == code and output["message"]
    assert output["task_metrics"]["FAILED"] == 1 and "result" not in output


def test_private_url_refused_when_the_job_runs(server: LiveServer) -> None:
    out = _seed(None, "filetrans_wait.py", server, FT_FILE_URL="http://127.0.0.2:9/a.wav")
    output = out["wait"]["output"]
    assert (output["task_status"], output["code"]) == ("FAILED", "REQUEST_INVALID_FILE_URL_VALUE")


def test_cancel_fetch_list(sdk: Path | None, server: LiveServer, gate: Gates) -> None:
    # Gate "cancel-sdk" is never opened: the job is PENDING or downloading when the cancel arrives.
    out = _seed(sdk, "filetrans_cancel.py", server, FT_FILE_URL=f"{gate.url}/gated/cancel-sdk/short.mp3")
    assert out["cancel"]["status_code"] == 200
    assert out["fetch"]["output"]["task_status"] == "CANCELED"
    assert out["wait"]["output"]["task_status"] == "CANCELED"
    assert out["wait"]["output"]["code"] == "TASK_CANCELED"
    listed = out["list"]["output"]
    assert out["list"]["status_code"] == 200
    assert out["task_id"] in [t["task_id"] for t in listed["data"]]
    assert listed["total"] >= 1 and listed["page_size"] == 100


def _headers(key: str = KEY) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "X-DashScope-Async": "enable"}


def _submit(server: LiveServer, file_url: str, key: str = KEY, **parameters: Any) -> httpx.Response:
    body = {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": file_url}, "parameters": parameters}
    return httpx.post(server.url + SUBMIT, json=body, headers=_headers(key), timeout=30)


def _wait(server: LiveServer, task_id: str, key: str = KEY) -> dict[str, Any]:
    import time

    for _ in range(1200):
        body: dict[str, Any] = httpx.get(f"{server.url}/api/v1/tasks/{task_id}", headers=_headers(key)).json()
        if body["output"]["task_status"] not in ("PENDING", "RUNNING"):
            return body
        time.sleep(0.1)
    raise AssertionError(f"task {task_id} did not finish")


def test_running_task_cancelled_within_its_work(server: LiveServer, gate: Gates) -> None:
    """A RUNNING task (its download held open) is cancelled, and the next task runs."""
    task = _submit(server, f"{gate.url}/gated/running/short.mp3").json()["output"]["task_id"]
    assert gate.event(gate.requested, "running").wait(60)  # the job is downloading: RUNNING
    status = httpx.get(f"{server.url}/api/v1/tasks/{task}", headers=_headers()).json()["output"]
    assert status["task_status"] == "RUNNING" and 0.0 <= status["progress"] < 1.0
    cancelled = httpx.post(f"{server.url}/api/v1/tasks/{task}/cancel", headers=_headers())
    assert cancelled.status_code == 200 and cancelled.json()["output"]["task_status"] == "CANCELED"
    again = httpx.post(f"{server.url}/api/v1/tasks/{task}/cancel", headers=_headers())
    assert again.status_code == 400 and again.json()["code"] == "InvalidParameter"
    after = _submit(server, f"{gate.url}/open/short.mp3").json()["output"]["task_id"]
    assert _wait(server, after)["output"]["task_status"] == "SUCCEEDED"  # the worker moved on
    assert _wait(server, task)["output"]["task_status"] == "CANCELED"


def test_result_url_tampered_or_expired_refused(server: LiveServer, gate: Gates) -> None:
    task = _submit(server, f"{gate.url}/open/short.mp3").json()["output"]["task_id"]
    url = _wait(server, task)["output"]["result"]["transcription_url"]
    assert httpx.get(url).status_code == 200
    signature = url.rsplit("Signature=", 1)[1]
    tampered = url.replace(signature, ("0" if signature[0] != "0" else "1") + signature[1:])
    expires = url.split("Expires=", 1)[1].split("&", 1)[0]
    expired = url.replace(f"Expires={expires}", "Expires=1000")
    other_task = url.replace(task, "00000000-0000-4000-8000-000000000000")
    for bad in (tampered, expired, other_task, url.split("?", 1)[0]):
        refused = httpx.get(bad)
        assert refused.status_code == 403 and refused.json()["code"] == "AccessDenied"


def test_tasks_are_per_key(server: LiveServer, gate: Gates) -> None:
    task = _submit(server, f"{gate.url}/open/short.mp3").json()["output"]["task_id"]
    mine = httpx.get(f"{server.url}/api/v1/tasks/{task}", headers=_headers())
    assert mine.status_code == 200
    theirs = httpx.get(f"{server.url}/api/v1/tasks/{task}", headers=_headers(OTHER_KEY))
    assert theirs.status_code == 404 and theirs.json()["code"] == "NotFound"
    cancel = httpx.post(f"{server.url}/api/v1/tasks/{task}/cancel", headers=_headers(OTHER_KEY))
    assert cancel.status_code == 404
    listed = httpx.get(f"{server.url}/api/v1/tasks?page_size=100", headers=_headers(OTHER_KEY)).json()
    assert task not in [t["task_id"] for t in listed["data"]]
    _wait(server, task)


@pytest.mark.parametrize(
    ("headers", "body", "status", "code"),
    [
        ({"Authorization": f"Bearer {KEY}"}, None, 400, "InvalidParameter"),  # no X-DashScope-Async
        (None, {"model": "qwen3-asr-flash", "input": {"file_url": "https://x/a.wav"}}, 404, "ModelNotFound"),
        (None, {"model": "qwen3-asr-flash-filetrans", "input": {}}, 400, "InvalidParameter"),
        (
            None,
            {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": "/etc/passwd"}},
            400,
            "InvalidURL",
        ),
        (
            None,
            {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": "data:audio/wav;base64,AA=="}},
            400,
            "InvalidURL",
        ),
        (
            None,
            {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": "oss://nothing/here.wav"}},
            400,
            "InvalidURL",
        ),
        (
            None,
            {
                "model": "qwen3-asr-flash-filetrans",
                "input": {"file_url": "https://x/a.wav"},
                "parameters": {"channel_id": [0, 0]},
            },
            400,
            "InvalidParameter",
        ),
        (
            None,
            {
                "model": "qwen3-asr-flash-filetrans",
                "input": {"file_url": "https://x/a.wav"},
                "parameters": {"language": "xx"},
            },
            400,
            "InvalidParameter",
        ),
        ({"X-DashScope-Async": "enable"}, None, 401, "InvalidApiKey"),
    ],
)
def test_submit_errors(
    server: LiveServer, headers: dict[str, str] | None, body: dict[str, Any] | None, status: int, code: str
) -> None:
    body = body or {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": "https://x/a.wav"}}
    response = httpx.post(server.url + SUBMIT, json=body, headers=headers or _headers(), timeout=30)
    assert response.status_code == status, response.text
    assert response.json()["code"] == code and response.json()["request_id"]


def test_unknown_task_and_metrics(server: LiveServer) -> None:
    missing = httpx.get(f"{server.url}/api/v1/tasks/not-a-task", headers=_headers())
    assert missing.status_code == 404 and missing.json()["code"] == "NotFound"
    metrics = httpx.get(f"{server.url}/metrics", headers=_headers()).text
    assert 'qasr_jobs{status="succeeded"}' in metrics and 'qasr_jobs{status="pending"}' in metrics
