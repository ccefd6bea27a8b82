"""What the hostile-input tests send and check: the endpoints, bodies in each dialect, and the two
error envelopes (DashScope `{request_id, code, message}`, OpenAI `{"error": {...}}`)."""

from __future__ import annotations

import base64
from typing import Any

import httpx

from tests.reliability.corpus import Body

KEY = "sk-hostile"
MODEL = "qwen3-asr-flash"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
CHAT = "/v1/chat/completions"
TRANSCRIPTIONS = "/v1/audio/transcriptions"
UPLOAD = "/api/v1/uploads/oss"
AUTH = {"Authorization": f"Bearer {KEY}"}
MAX_MESSAGE_CHARS = 400
"""An error message quotes at most ~100 characters of any client value; the rest is our own text."""


def data_uri(audio: bytes) -> str:
    return "data:audio/wav;base64," + base64.b64encode(audio).decode()


def dashscope_request(audio: str) -> dict[str, Any]:
    return {"model": MODEL, "input": {"messages": [{"role": "user", "content": [{"audio": audio}]}]}}


def chat_request(audio: str) -> dict[str, Any]:
    part = {"type": "input_audio", "input_audio": {"data": audio}}
    return {"model": MODEL, "messages": [{"role": "user", "content": [part]}]}


def send(base: str, path: str, body: Body, headers: dict[str, str] | None = None) -> httpx.Response:
    sent = {**AUTH, **(headers or {})}
    if body.content_type is not None:
        sent["Content-Type"] = body.content_type
    return httpx.post(base + path, content=body.content, headers=sent, timeout=120)


def dashscope_error(response: httpx.Response, status: int, code: str) -> str:
    """Check a DashScope error answer; return its message."""
    assert response.status_code == status, response.text[:2000]
    body = response.json()
    assert set(body) == {"request_id", "code", "message"}, body
    assert body["code"] == code and body["request_id"] and body["message"], body
    assert len(body["message"]) <= MAX_MESSAGE_CHARS, len(body["message"])
    return str(body["message"])


def openai_error(
    response: httpx.Response, status: int, code: str, kind: str = "invalid_request_error"
) -> str:
    """Check an OpenAI error answer; return its message."""
    assert response.status_code == status, response.text[:2000]
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert (error["type"], error["code"]) == (kind, code), error
    assert error["message"] and len(error["message"]) <= MAX_MESSAGE_CHARS, len(error["message"])
    return str(error["message"])


def assert_serving(base: str) -> None:
    """The server still answers after whatever came before."""
    health = httpx.get(base + "/health", timeout=30)
    assert health.status_code == 200 and health.json()["status"] == "ok", health.text
