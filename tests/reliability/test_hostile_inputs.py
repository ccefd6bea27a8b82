"""Issue 13: client input that used to get a 500 (and a traceback in the log), against a live server
in both dialects. Each test checks the status, the dialect's error body and code, and that the server
still answers /health; the `no_tracebacks` fixture checks the log."""

from __future__ import annotations

import errno
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from starlette.datastructures import UploadFile

from qasr.audio.uploads import UploadStore
from tests.reliability.corpus import (
    LONG,
    MULTIPART,
    Body,
    end,
    field_part,
    file_part,
    part,
    wav,
)
from tests.reliability.wire import (
    AUTH,
    CHAT,
    GENERATION,
    KEY,
    MODEL,
    TRANSCRIPTIONS,
    UPLOAD,
    assert_serving,
    chat_request,
    dashscope_error,
    dashscope_request,
    data_uri,
    openai_error,
    send,
)

CLIP = wav(seconds=1.0)
"""One second of noise: the tiny model transcribes it to some text, with a 200."""


def _json(value: Any, content_type: str | None = "application/json") -> Body:
    return Body("json", json.dumps(value).encode(), content_type)


# --- JSON nested too deeply ---------------------------------------------------------------------------


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_deeply_nested_json_is_invalid_json_in_both_dialects(base: str, depth: int) -> None:
    body = Body("deep", b"[" * depth + b"]" * depth, "application/json")
    message = dashscope_error(send(base, GENERATION, body), 400, "InvalidParameter")
    assert "nested too deeply" in message
    openai_error(send(base, CHAT, body), 400, "invalid_parameter")
    assert_serving(base)


def test_deep_nesting_inside_an_otherwise_valid_body(base: str) -> None:
    deep = b"[" * 5_000 + b"]" * 5_000
    body = Body(
        "deep", b'{"model": "qwen3-asr-flash", "input": {"messages": ' + deep + b"}}", "application/json"
    )
    dashscope_error(send(base, GENERATION, body), 400, "InvalidParameter")
    body = Body("deep", b'{"model": "qwen3-asr-flash", "messages": ' + deep + b"}", "application/json")
    openai_error(send(base, CHAT, body), 400, "invalid_parameter")
    assert_serving(base)


# --- WAV files with odd channel counts or no bits per sample -------------------------------------------


@pytest.mark.parametrize("channels", [9, 32, 64])
def test_wavs_with_many_channels_are_downmixed_and_transcribed(base: str, channels: int) -> None:
    audio = wav(channels=channels, seconds=0.5)
    answer = httpx.post(base + GENERATION, json=dashscope_request(data_uri(audio)), headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    files = {"file": ("many.wav", audio, "audio/wav")}
    answer = httpx.post(base + TRANSCRIPTIONS, data={"model": MODEL}, files=files, headers=AUTH, timeout=120)
    assert answer.status_code == 200, answer.text
    assert_serving(base)


@pytest.mark.parametrize("channels", [1, 2])
def test_a_wav_with_zero_bits_per_sample_is_invalid_audio(base: str, channels: int) -> None:
    audio = wav(channels=channels, bits=0)
    answer = httpx.post(base + GENERATION, json=dashscope_request(data_uri(audio)), headers=AUTH, timeout=60)
    dashscope_error(answer, 400, "InvalidParameter")
    files = {"file": ("zero.wav", audio, "audio/wav")}
    answer = httpx.post(base + TRANSCRIPTIONS, data={"model": MODEL}, files=files, headers=AUTH, timeout=60)
    openai_error(answer, 400, "invalid_audio")
    assert_serving(base)


# --- malformed multipart -------------------------------------------------------------------------------

MALFORMED = {
    "two file parts": Body(
        "two", field_part("model", MODEL) + file_part(CLIP) + file_part(CLIP) + end(), MULTIPART
    ),
    "no boundary": Body("none", field_part("model", MODEL) + file_part(CLIP) + end(), "multipart/form-data"),
    "wrong boundary": Body(
        "wrong", field_part("model", MODEL) + file_part(CLIP) + end(), "multipart/form-data; boundary=x"
    ),
    "nameless part": Body(
        "nameless",
        field_part("model", MODEL) + part('Content-Disposition: form-data; filename="a.wav"', CLIP) + end(),
        MULTIPART,
    ),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_multipart_is_a_bad_request_on_the_upload_endpoint(base: str, case: str) -> None:
    dashscope_error(send(base, UPLOAD, MALFORMED[case]), 400, "InvalidParameter")
    assert_serving(base)


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_multipart_is_a_bad_request_on_transcriptions(base: str, case: str) -> None:
    openai_error(send(base, TRANSCRIPTIONS, MALFORMED[case]), 400, "invalid_parameter")
    assert_serving(base)


# --- a download redirected to a data: URI --------------------------------------------------------------


class _Redirector(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        location = {
            "/data": "data:audio/wav;base64,UklGRg==",
            "/mailto": "mailto:a@b.c",
            "/nohost": "http:a.wav",
        }
        self.send_response(302)
        self.send_header("Location", location[self.path])
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize("path", ["/data", "/mailto"])
def test_a_redirect_to_a_data_uri_or_another_scheme_is_a_refused_url(
    base: str, redirector: str, path: str
) -> None:
    url = redirector + path
    answer = httpx.post(base + GENERATION, json=dashscope_request(url), headers=AUTH, timeout=60)
    message = dashscope_error(answer, 400, "InvalidURL")
    assert "Only http and https audio URLs are followed" in message
    answer = httpx.post(base + CHAT, json=chat_request(url), headers=AUTH, timeout=60)
    openai_error(answer, 400, "forbidden_url")
    assert_serving(base)


def test_a_redirect_to_a_url_without_a_host_is_a_failed_download(base: str, redirector: str) -> None:
    answer = httpx.post(
        base + GENERATION, json=dashscope_request(redirector + "/nohost"), headers=AUTH, timeout=60
    )
    dashscope_error(answer, 400, "BadRequest.InputDownloadFailed")
    assert_serving(base)


# --- disk full --------------------------------------------------------------------------------------------


def _disk_full(*args: object, **kwargs: object) -> Any:
    raise OSError(errno.ENOSPC, "No space left on device")


def _grant(base: str) -> dict[str, Any]:
    answer = httpx.get(base + "/api/v1/uploads", params={"action": "getPolicy", "model": MODEL}, headers=AUTH)
    assert answer.status_code == 200, answer.text
    data: dict[str, Any] = answer.json()["data"]
    return data


def _upload(base: str, grant: dict[str, Any], audio: bytes) -> httpx.Response:
    fields = {
        "OSSAccessKeyId": str(grant["oss_access_key_id"]),
        "Signature": str(grant["signature"]),
        "policy": str(grant["policy"]),
        "key": f"{grant['upload_dir']}/a.wav",
        "x-oss-object-acl": str(grant["x_oss_object_acl"]),
        "x-oss-forbid-overwrite": str(grant["x_oss_forbid_overwrite"]),
        "success_action_status": "200",
    }
    return httpx.post(base + UPLOAD, data=fields, files={"file": ("a.wav", audio, "audio/wav")}, timeout=60)


def test_disk_full_while_storing_an_upload_is_507(base: str, monkeypatch: pytest.MonkeyPatch) -> None:
    grant = _grant(base)
    monkeypatch.setattr(UploadStore, "_write_temp", _disk_full)
    dashscope_error(_upload(base, grant, CLIP), 507, "InsufficientStorage")
    monkeypatch.undo()
    assert _upload(base, grant, CLIP).status_code == 200  # the same policy works once there is room
    assert_serving(base)


def test_disk_full_while_spooling_a_form_is_507_in_both_dialects(
    base: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    grant = _grant(base)
    monkeypatch.setattr(UploadFile, "write", _disk_full)
    dashscope_error(_upload(base, grant, CLIP), 507, "InsufficientStorage")
    files = {"file": ("a.wav", CLIP, "audio/wav")}
    answer = httpx.post(base + TRANSCRIPTIONS, data={"model": MODEL}, files=files, headers=AUTH, timeout=60)
    openai_error(answer, 507, "insufficient_storage", kind="server_error")
    assert_serving(base)


# --- JSON endpoints take JSON only ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "content_type",
    [
        None,
        "text/plain",
        "text/plain;charset=UTF-8",
        "application/x-www-form-urlencoded",
        MULTIPART,
        "application/jsonx",
    ],
)
def test_json_endpoints_refuse_other_content_types_with_415(base: str, content_type: str | None) -> None:
    body = _json(dashscope_request(data_uri(CLIP)), content_type)
    message = dashscope_error(send(base, GENERATION, body), 415, "InvalidParameter")
    assert "application/json" in message
    body = _json(chat_request(data_uri(CLIP)), content_type)
    openai_error(send(base, CHAT, body), 415, "unsupported_media_type")
    assert_serving(base)


@pytest.mark.parametrize(
    "content_type", ["application/json", "application/json; charset=utf-8", "Application/JSON"]
)
def test_json_endpoints_take_json_with_parameters_in_any_case(base: str, content_type: str) -> None:
    body = _json(dashscope_request(data_uri(CLIP)), content_type)
    assert send(base, GENERATION, body).status_code == 200
    body = _json(chat_request(data_uri(CLIP)), content_type)
    assert send(base, CHAT, body).status_code == 200


# --- error messages quote client values briefly -------------------------------------------------------------


def test_messages_quote_at_most_a_short_prefix_of_a_long_role(base: str) -> None:
    request = dashscope_request(data_uri(CLIP))
    request["input"]["messages"][0]["role"] = "r" * LONG
    message = dashscope_error(
        httpx.post(base + GENERATION, json=request, headers=AUTH), 400, "InvalidParameter"
    )
    assert "r" * 100 in message and "r" * 101 not in message
    request = chat_request(data_uri(CLIP))
    request["messages"][0]["role"] = "r" * LONG
    openai_error(httpx.post(base + CHAT, json=request, headers=AUTH), 400, "invalid_parameter")


def test_messages_quote_at_most_a_short_prefix_of_a_long_reference(base: str) -> None:
    for audio, code in [("s" * LONG + ":x", "InvalidURL"), ("/" + "p" * LONG, "InvalidURL")]:
        answer = httpx.post(base + GENERATION, json=dashscope_request(audio), headers=AUTH)
        dashscope_error(answer, 400, code)
    host = f"http://{'h' * LONG}.example/a.wav"
    answer = httpx.post(base + GENERATION, json=dashscope_request(host), headers=AUTH)
    assert answer.status_code == 400 and len(answer.text) < 1000, answer.text[:1000]


def test_a_lone_surrogate_in_a_value_is_answered(base: str) -> None:
    request = dashscope_request(data_uri(CLIP))
    request["input"]["messages"][0]["role"] = "\ud800"
    body = Body("surrogate", json.dumps(request).encode(), "application/json")
    dashscope_error(send(base, GENERATION, body), 400, "InvalidParameter")


def test_a_100k_character_model_name_gets_a_short_error(base: str) -> None:
    request = {**dashscope_request(data_uri(CLIP)), "model": "m" * LONG}
    answer = httpx.post(base + GENERATION, json=request, headers=AUTH)
    dashscope_error(answer, 404, "ModelNotFound")


def test_a_lone_surrogate_as_the_model_name_is_answered(base: str) -> None:
    request = {**dashscope_request(data_uri(CLIP)), "model": "\ud800"}
    body = Body("surrogate", json.dumps(request).encode(), "application/json")
    dashscope_error(send(base, GENERATION, body), 404, "ModelNotFound")


def test_a_100k_character_language_gets_a_short_error(base: str) -> None:
    request = {
        **dashscope_request(data_uri(CLIP)),
        "parameters": {"asr_options": {"language": "l" * LONG}},
    }
    answer = httpx.post(base + GENERATION, json=request, headers=AUTH)
    dashscope_error(answer, 400, "InvalidParameter")


# --- Authorization -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", ["Bearer", "bearer", "BEARER", "bEaReR"])
def test_the_auth_scheme_is_case_insensitive(base: str, scheme: str) -> None:
    headers = {"Authorization": f"{scheme} {KEY}"}
    assert httpx.get(base + "/v1/models", headers=headers).status_code == 200
    policy = httpx.get(
        base + "/api/v1/uploads", params={"action": "getPolicy", "model": MODEL}, headers=headers
    )
    assert policy.status_code == 200


@pytest.mark.parametrize("second", [f"Bearer {KEY}", "Bearer wrong", "Basic abc"])
def test_two_authorization_headers_are_refused_in_both_dialects(base: str, second: str) -> None:
    headers = [("Authorization", f"Bearer {KEY}"), ("Authorization", second)]
    message = openai_error(httpx.get(base + "/v1/models", headers=headers), 401, "invalid_api_key")
    assert "one Authorization header" in message
    params = {"action": "getPolicy", "model": MODEL}
    dashscope_error(httpx.get(base + "/api/v1/uploads", params=params, headers=headers), 401, "InvalidApiKey")
    answer = httpx.post(base + GENERATION, json=dashscope_request(data_uri(CLIP)), headers=headers)
    dashscope_error(answer, 401, "InvalidApiKey")
    assert_serving(base)
