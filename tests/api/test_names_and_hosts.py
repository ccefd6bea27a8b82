"""Model names the server answers to, and the upload host behind a proxy."""

from __future__ import annotations

import httpx
import pytest

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread


@pytest.fixture(scope="module")
def url(engine: Qwen3ASREngine) -> object:
    settings = Settings(
        model="/models/Qwen3-ASR-0.6B-hf", warmup=False, public_base_url="https://asr.example.com/"
    )
    with serve_in_thread(settings, engine) as base:
        yield base


@pytest.mark.parametrize(
    ("name", "status"),
    [
        ("qwen3-asr-flash", 200),
        ("qwen3-asr-flash-2025-09-08", 200),
        ("qwen3-asr-flash-2026-02-10", 200),
        ("qwen3-asr-flash-us", 200),
        ("Qwen3-ASR-0.6B-hf", 200),  # the configured model's own name
        ("/models/Qwen3-ASR-0.6B-hf", 200),
        ("qwen3-asr-flash-realtime", 404),
        ("qwen-max", 404),
    ],
)
def test_model_names(url: str, name: str, status: int) -> None:
    r = httpx.get(url + "/api/v1/uploads", params={"action": "getPolicy", "model": name}, timeout=30)
    assert r.status_code == status
    if status == 404:
        assert r.json()["code"] == "ModelNotFound" and name in r.json()["message"]


def test_upload_host_uses_the_public_base_url(url: str) -> None:
    data = httpx.get(
        url + "/api/v1/uploads", params={"action": "getPolicy", "model": "qwen3-asr-flash"}
    ).json()["data"]
    assert data["upload_host"] == "https://asr.example.com/api/v1/uploads/oss"
