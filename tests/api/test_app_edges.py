"""What a client sees at the app's edges (issue 11): unknown paths, wrong methods, the error table's
class hierarchy, request bodies in the OpenAPI document, and a `/docs` page that needs no CDN."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from qasr import errors as e
from qasr.api.errors import _TABLE, classify
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
SETTINGS = Settings(model="tiny", warmup=False, vad=False)


@pytest.fixture(scope="module")
def url(engine: Qwen3ASREngine) -> Iterator[str]:
    with serve_in_thread(SETTINGS, engine) as base:
        yield base


def _not_found(method: str, path: str) -> str:
    return f"No such endpoint: {method} {path}. The endpoints are listed at /openapi.json."


# --- unknown paths ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/"),
        ("POST", "/v1/chat/completion"),
        ("GET", "/compatible-mode/v1/model"),
        ("GET", "/favicon.ico"),
    ],
)
def test_unknown_path_is_openai_not_found(url: str, method: str, path: str) -> None:
    r = httpx.request(method, url + path)
    assert r.status_code == 404
    assert r.headers["content-type"] == "application/json"
    assert r.json() == {
        "error": {
            "message": _not_found(method, path),
            "type": "invalid_request_error",
            "param": None,
            "code": "not_found",
        }
    }


@pytest.mark.parametrize(("method", "path"), [("POST", GENERATION + "s"), ("GET", "/api/v1/")])
def test_unknown_path_under_api_is_dashscope_not_found(url: str, method: str, path: str) -> None:
    r = httpx.request(method, url + path)
    assert r.status_code == 404
    body = r.json()
    assert set(body) == {"request_id", "code", "message"} and body["request_id"]
    assert (body["code"], body["message"]) == ("NotFound", _not_found(method, path))


def test_a_long_path_is_not_echoed_in_full(url: str) -> None:
    path = "/v1/" + "a" * 5000
    r = httpx.get(url + path)
    assert r.status_code == 404
    assert r.json()["error"]["message"] == _not_found("GET", path[:100] + "…")


# --- wrong methods ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/chat/completions", "POST"),
        ("PUT", "/compatible-mode/v1/audio/transcriptions", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("POST", "/health", "GET"),
    ],
)
def test_wrong_method_is_openai_405_with_allow(url: str, method: str, path: str, allow: str) -> None:
    r = httpx.request(method, url + path)
    assert r.status_code == 405
    assert r.headers["allow"] == allow
    assert r.json() == {
        "error": {
            "message": f"{method} is not allowed on {path}; use {allow}.",
            "type": "invalid_request_error",
            "param": None,
            "code": "method_not_allowed",
        }
    }


def test_wrong_method_under_api_is_dashscope_405_with_allow(url: str) -> None:
    r = httpx.get(url + GENERATION)
    assert r.status_code == 405
    assert r.headers["allow"] == "POST"
    body = r.json()
    assert set(body) == {"request_id", "code", "message"}
    assert body["code"] == "MethodNotAllowed"
    assert body["message"] == f"GET is not allowed on {GENERATION}; use POST."


def test_known_paths_still_answer(url: str) -> None:
    assert httpx.get(url + "/health").status_code == 200
    assert httpx.get(url + "/v1/models").status_code == 200


# --- the error table -------------------------------------------------------------------------------


def _instance(cls: type[BaseException]) -> BaseException:
    return cls("a message")


@pytest.mark.parametrize("cls", list(_TABLE), ids=lambda cls: cls.__name__)
def test_every_table_entry_wins_for_its_own_class(cls: type[BaseException]) -> None:
    # A subclass listed in the table is never answered with a parent's entry, whatever the order.
    assert classify(_instance(cls))[0] is _TABLE[cls]


def test_a_subclass_without_an_entry_takes_its_nearest_parents() -> None:
    class Odd(e.AudioDecodeError):
        pass

    assert classify(Odd("x"))[0] is _TABLE[e.AudioError]
    assert classify(e.ItnUnavailable("x"))[0].openai_code == "itn_unavailable"
    assert classify(e.EndpointNotFound("x"))[0].dashscope_code == "NotFound"
    assert classify(e.ModelNotFound("x"))[0].dashscope_code == "ModelNotFound"


def test_every_domain_error_has_a_deliberate_entry() -> None:
    # ModelLoadError stops start-up and never reaches a client; anything else must map to a 4xx/5xx
    # of its own or of a parent, never fall through to the generic 500.
    unmapped = [
        cls
        for cls in vars(e).values()
        if isinstance(cls, type)
        and issubclass(cls, e.QasrError)
        and cls not in (e.QasrError, e.ModelLoadError)
        and not any(base in _TABLE for base in cls.__mro__)
    ]
    assert unmapped == []


# --- the OpenAPI document --------------------------------------------------------------------------


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            yield from _refs(value)
    elif isinstance(node, list):
        for item in node:
            yield from _refs(item)


def test_openapi_lists_request_bodies(url: str) -> None:
    doc = httpx.get(url + "/openapi.json").json()
    paths = doc["paths"]
    json_bodies = {
        GENERATION: {"model", "input", "parameters"},
        "/v1/chat/completions": {"model", "messages", "stream", "asr_options"},
        "/compatible-mode/v1/chat/completions": {"model", "messages", "stream", "asr_options"},
    }
    for path, fields in json_bodies.items():
        body = paths[path]["post"]["requestBody"]
        assert body["required"] is True
        schema = body["content"]["application/json"]["schema"]
        assert fields <= set(schema["properties"]) and "model" in schema["required"]
    messages = paths[GENERATION]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "messages" in messages["properties"]["input"]["properties"]  # nested models are inlined
    for prefix in ("/v1", "/compatible-mode/v1"):
        form = paths[f"{prefix}/audio/transcriptions"]["post"]["requestBody"]["content"][
            "multipart/form-data"
        ]
        assert form["schema"]["properties"]["file"] == {"type": "string", "format": "binary"}
        assert {"file", "model"} <= set(form["schema"]["required"])
        assert "enable_itn" in form["schema"]["properties"]
    # Every reference resolves inside the document (a model's own `#/$defs/...` would not).
    assert all(ref.startswith("#/components/") for ref in _refs(doc))


# --- /docs -----------------------------------------------------------------------------------------


def test_docs_page_needs_no_other_host(url: str) -> None:
    pytest.importorskip("fastapi_offline")
    page = httpx.get(url + "/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert re.findall(r"(?i)\b(?:https?:)?//[a-z0-9.-]+", page.text) == []
    assert '"validatorUrl": null' in page.text  # no schema sent to validator.swagger.io
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) == 3  # stylesheet, icon, script
    for asset in assets:
        assert asset.startswith("/docs/assets/")
        assert httpx.get(url + asset).status_code == 200
    assert httpx.get(url + "/openapi.json").status_code == 200


def test_docs_are_off_without_local_assets(engine: Qwen3ASREngine, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "fastapi_offline", None)  # as if the package were not installed
    with serve_in_thread(SETTINGS, engine) as base:
        r = httpx.get(base + "/docs")
        assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
        assert httpx.get(base + "/openapi.json").status_code == 200
