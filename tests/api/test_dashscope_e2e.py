"""The cloud's qwen3-asr-flash calls, run unchanged as separate programs with the official `dashscope`
SDK (2.0.2 and 1.24.6) against `qasr serve` on the tiny model; only the environment differs."""

from __future__ import annotations

import base64
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.api.sdk import MAIN, sdk_env, sdk_path
from tests.helpers import synthesize
from tests.server import LiveServer, live_server

SEEDS = Path(__file__).parent / "seeds"
SAMPLE_URL_PREFIX = "https://dashscope.oss-cn-beijing.aliyuncs.com/audios/"
KEY = "sk-qasr-test"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
SDK_OLD = "1.24.6"


@pytest.fixture(scope="module")
def fixtures(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("audio")
    synthesize(
        "欢迎使用阿里云。今天天气很好，我们一起去公园散步吧。", root / "welcome.mp3", voice="zh", fmt="mp3"
    )
    synthesize("This is a longer recording. " * 10, root / "long.wav", voice="en")
    (root / "notes.txt").write_text("this is not audio\n" * 100)
    return root


@pytest.fixture(scope="module")
def server(tiny_dir: Path, fixtures: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    args = ["--api-key", KEY, "--url-map", f"{SAMPLE_URL_PREFIX}={fixtures}/", "--max-audio-s", "15"]
    with live_server(tiny_dir, tmp_path_factory.mktemp("logs"), *args) as live:
        yield live


@pytest.fixture(scope="module", params=[MAIN, SDK_OLD])
def sdk(request: pytest.FixtureRequest) -> Path | None:
    """Which dashscope the seeds import (tests/api/sdk.py)."""
    return sdk_path(request.param)


def _run_seed(
    sdk: Path | None, seed: str, server: LiveServer, fixtures: Path, key: str = KEY
) -> subprocess.CompletedProcess:
    code = (SEEDS / seed).read_text().replace("ABSOLUTE_PATH", str(fixtures))
    env = {**sdk_env(sdk), "DASHSCOPE_HTTP_BASE_URL": f"{server.url}/api/v1", "DASHSCOPE_API_KEY": key}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)


def _check_response(printed: dict) -> str:
    assert printed["status_code"] == 200
    assert printed["request_id"] and printed["code"] == ""
    choice = printed["output"]["choices"][0]
    assert choice["finish_reason"] in ("stop", "length")  # length: the tiny model writes to its budget
    message = choice["message"]
    assert message["role"] == "assistant"
    assert message["annotations"][0]["type"] == "audio_info"
    assert "emotion" not in message["annotations"][0]  # nothing predicts it, so it is not emitted
    text = message["content"][0]["text"]
    assert text  # the tiny random model writes (meaningless) text for real speech
    usage = printed["usage"]
    assert usage["seconds"] >= 3 and usage["output_tokens_details"]["text_tokens"] >= 1
    assert usage["input_tokens_details"]["text_tokens"] == 0  # empty context
    return str(text)


def test_three_documented_calls(sdk: Path | None, server: LiveServer, fixtures: Path) -> None:
    url = _run_seed(sdk, "seed_url.py", server, fixtures)
    assert url.returncode == 0, url.stderr
    url_text = _check_response(json.loads(url.stdout))

    log_before = server.log
    local = _run_seed(sdk, "seed_file.py", server, fixtures)
    assert local.returncode == 0, local.stderr
    assert _check_response(json.loads(local.stdout)) == url_text  # same bytes, same deterministic model
    new_log = server.log[len(log_before) :]
    # qasr's access log: one line per request once answered (id, API, method, path, status, ...).
    policy = new_log.index("dashscope GET /api/v1/uploads 200")
    upload = new_log.index("dashscope POST /api/v1/uploads/oss 200")
    oss_call = new_log.index("audio oss://")
    assert policy < upload < oss_call

    stream = _run_seed(sdk, "seed_stream.py", server, fixtures)
    assert stream.returncode == 0, stream.stderr
    lines = stream.stdout.splitlines()
    assert len(lines) >= 3
    for before, after in itertools.pairwise(lines):
        assert after.startswith(before)  # cumulative: each line extends the last
    assert lines[-1] == url_text


def test_stream_wire_format(server: LiveServer, fixtures: Path) -> None:
    body = {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": SAMPLE_URL_PREFIX + "welcome.mp3"}]}]},
        "parameters": {"incremental_output": True},
    }
    headers = {"Authorization": f"Bearer {KEY}", "X-DashScope-SSE": "enable"}
    with httpx.stream("POST", server.url + GENERATION, json=body, headers=headers, timeout=120) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        raw = response.read().decode()
    events = [e for e in raw.split("\n\n") if e.strip()]
    datas = []
    for i, event in enumerate(events, start=1):
        lines = event.split("\n")
        assert lines[:3] == [f"id:{i}", "event:result", ":HTTP_STATUS/200"]
        assert lines[3].startswith("data:{")
        datas.append(json.loads(lines[3][len("data:") :]))
    plain = httpx.post(
        server.url + GENERATION, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=120
    )
    assert plain.headers["content-type"].startswith("application/json")
    plain_choice = plain.json()["output"]["choices"][0]
    reasons = [d["output"]["choices"][0]["finish_reason"] for d in datas]
    # "null" while generating, then the same final reason as the non-streamed answer
    assert reasons[:-1] == ["null"] * (len(datas) - 1) and reasons[-1] == plain_choice["finish_reason"]
    assert all("usage" in d and d["output"]["choices"][0]["message"]["role"] == "assistant" for d in datas)
    deltas = "".join(d["output"]["choices"][0]["message"]["content"][0]["text"] for d in datas)
    assert deltas == plain_choice["message"]["content"][0]["text"]


def _sdk_call(server: LiveServer, audio: str, key: str = KEY, **params: object) -> dict:
    """One SDK call in a child process; returns what the SDK hands the caller (it never raises here)."""
    code = f"""
import json, os, dashscope
r = dashscope.MultiModalConversation.call(api_key={key!r}, model={params.pop("model", "qwen3-asr-flash")!r},
    messages=[{{"role": "user", "content": [{{"audio": {audio!r}}}]}}], result_format="message",
    asr_options={params.pop("asr_options", {})!r}, stream={params.pop("stream", False)!r})
items = list(r) if not hasattr(r, "status_code") else [r]
print(json.dumps([{{"status": i.status_code, "code": i.code, "message": i.message, "output": i.output}} for i in items]))
"""
    env = {**os.environ, "DASHSCOPE_HTTP_BASE_URL": f"{server.url}/api/v1", "NO_PROXY": "127.0.0.1,localhost"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)  # type: ignore[no-any-return]


def _data_uri(path: Path, mime: str) -> str:
    return f"data:{mime};base64," + base64.b64encode(path.read_bytes()).decode()


@pytest.mark.parametrize(
    ("case", "status", "code", "words"),
    [
        ("wrong key", 401, "InvalidApiKey", "Invalid API-key"),
        ("unknown language", 400, "InvalidParameter", "Unknown language"),
        ("unknown language stream", 400, "InvalidParameter", "Unknown language"),
        ("bad audio", 400, "InvalidParameter", "not audio"),
        ("too long", 400, "InvalidParameter", "at most"),
        ("unknown model", 404, "ModelNotFound", "does not exist"),
        # The SDK reads client-side files itself and uploads them: the server then refuses the bytes as
        # non-audio. The server's own refusal of file:// and paths is test_server_file_refused_over_raw_http.
        ("client passwd", 400, "InvalidParameter", "not audio"),
        ("loopback url", 400, "InvalidURL", "public"),
        ("private url", 400, "InvalidURL", "public"),
    ],
)
def test_errors_through_the_sdk(
    case: str, status: int, code: str, words: str, server: LiveServer, fixtures: Path
) -> None:
    welcome = SAMPLE_URL_PREFIX + "welcome.mp3"
    calls: dict[str, tuple[str, dict]] = {
        "wrong key": (welcome, {"key": "sk-wrong"}),
        "unknown language": (welcome, {"asr_options": {"language": "xx"}}),
        "unknown language stream": (welcome, {"asr_options": {"language": "xx"}, "stream": True}),
        "bad audio": (_data_uri(fixtures / "notes.txt", "audio/mpeg"), {}),
        "too long": (SAMPLE_URL_PREFIX + "long.wav", {}),
        "unknown model": (welcome, {"model": "qwen-max"}),
        "client passwd": ("file:///etc/passwd", {}),
        "loopback url": (f"{server.url}/health", {}),
        "private url": ("http://10.0.0.1/welcome.mp3", {}),
    }
    audio, params = calls[case]
    key = str(params.pop("key", KEY))
    items = _sdk_call(server, audio, key=key, **params)
    assert len(items) == 1
    assert (items[0]["status"], items[0]["code"]) == (status, code)
    assert items[0]["output"] is None and words in items[0]["message"]
    # the server keeps serving
    assert _sdk_call(server, welcome)[0]["status"] == 200


def test_server_file_refused_over_raw_http(server: LiveServer) -> None:
    for audio in ("file:///etc/passwd", "/etc/passwd", "file:///proc/self/environ"):
        body = {
            "model": "qwen3-asr-flash",
            "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]},
        }
        r = httpx.post(
            server.url + GENERATION, json=body, headers={"Authorization": f"Bearer {KEY}"}, timeout=30
        )
        assert r.status_code == 400 and r.json()["code"] == "InvalidURL"
        assert "root:" not in r.text


def test_oversize_audio(tiny_dir: Path, fixtures: Path, tmp_path: Path) -> None:
    args = ["--url-map", f"{SAMPLE_URL_PREFIX}={fixtures}/", "--max-audio-bytes", "20000"]
    with live_server(tiny_dir, tmp_path, *args) as small:
        items = _sdk_call(small, SAMPLE_URL_PREFIX + "welcome.mp3")
        assert (items[0]["status"], items[0]["code"]) == (400, "InvalidParameter")
        assert "MB" in items[0]["message"] or "KB" in items[0]["message"] or "bytes" in items[0]["message"]
        big = _data_uri(fixtures / "welcome.mp3", "audio/mpeg")
        assert _sdk_call(small, big)[0]["status"] == 400
        assert httpx.get(small.url + "/health").status_code == 200


def test_forged_and_expired_upload_policy(server: LiveServer, fixtures: Path) -> None:
    auth = {"Authorization": f"Bearer {KEY}"}
    policy = httpx.get(
        server.url + "/api/v1/uploads",
        params={"action": "getPolicy", "model": "qwen3-asr-flash"},
        headers=auth,
    ).json()["data"]
    form = {
        "OSSAccessKeyId": policy["oss_access_key_id"],
        "Signature": policy["signature"],
        "policy": policy["policy"],
        "key": policy["upload_dir"] + "/welcome.mp3",
        "x-oss-object-acl": policy["x_oss_object_acl"],
        "x-oss-forbid-overwrite": policy["x_oss_forbid_overwrite"],
        "success_action_status": "200",
    }
    files = {"file": ("welcome.mp3", (fixtures / "welcome.mp3").read_bytes(), "audio/mpeg")}
    forged = {**form, "Signature": base64.b64encode(b"x" * 32).decode()}
    r = httpx.post(policy["upload_host"], data=forged, files=files)
    assert r.status_code == 403 and r.json()["code"] == "AccessDenied"
    escaped = {**form, "key": policy["upload_dir"] + "/../../etc/x.mp3"}
    assert httpx.post(policy["upload_host"], data=escaped, files=files).status_code == 403
    assert httpx.post(policy["upload_host"], data=form, files=files).status_code == 200
    # an oss:// key that was never uploaded, or uploaded for another model, is not found
    body = {
        "model": "qwen3-asr-flash",
        "input": {
            "messages": [
                {"role": "user", "content": [{"audio": "oss://" + policy["upload_dir"] + "/other.mp3"}]}
            ]
        },
    }
    r = httpx.post(server.url + GENERATION, json=body, headers=auth, timeout=30)
    assert r.status_code == 400 and r.json()["code"] == "InvalidURL"
    no_key = httpx.get(
        server.url + "/api/v1/uploads", params={"action": "getPolicy", "model": "qwen3-asr-flash"}
    )
    assert no_key.status_code == 401 and no_key.json()["code"] == "InvalidApiKey"


def test_bad_requests_keep_the_server_serving(server: LiveServer) -> None:
    auth = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    cases = [
        (b"{not json", 400, "InvalidParameter"),
        (b'{"input": {}}', 400, "InvalidParameter"),
        (b'{"model": "qwen3-asr-flash"}', 400, "InvalidParameter"),
        (b'{"model": "qwen3-asr-flash", "input": {"messages": []}}', 400, "InvalidParameter"),
        (
            b'{"model": "qwen3-asr-flash", "input": {"messages": [{"role": "assistant", "content": "hi"}]}}',
            400,
            "InvalidParameter",
        ),
    ]
    for body, status, code in cases:
        r = httpx.post(server.url + GENERATION, content=body, headers=auth, timeout=30)
        assert (r.status_code, r.json()["code"]) == (status, code), r.text
        assert r.json()["request_id"] and "Traceback" not in r.text
    assert httpx.get(server.url + "/health").json()["status"] == "ok"
