"""ITN is optional (issue 11): without WeTextProcessing (pynini has wheels only for Linux x86_64) the
server and the CLI work, and asking for `enable_itn` gets a clear 400 in each dialect."""

from __future__ import annotations

import base64
import logging
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.errors import ItnUnavailable
from qasr.settings import Settings
from qasr.text import itn
from tests.api.inprocess import serve_in_thread
from tests.helpers import scripted_output, synthesize

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
SPOKEN = "language Chinese<asr_text>我花了一百二十三块五。明天下午三点半见。"
RAW = "我花了一百二十三块五。明天下午三点半见。"
# WeTextProcessing's top-level packages (its top_level.txt) and pynini's.
BLOCKED = ("itn", "tn", "pynini", "_pynini", "pywrapfst")


@pytest.fixture
def without_wetext(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if WeTextProcessing and pynini were not installed: importing them raises ImportError."""
    for name in list(sys.modules):
        if name.split(".")[0] in BLOCKED:
            monkeypatch.setitem(sys.modules, name, None)
    for name in BLOCKED:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "qasr.text.itn_rules", raising=False)
    monkeypatch.setattr(itn, "_default", None)  # no grammar loaded by an earlier test


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    text = "A clip that is long enough for the scripted transcript to fit in its token budget."
    return synthesize(text, tmp_path_factory.mktemp("itn-optional") / "clip.wav")


@pytest.mark.usefixtures("without_wetext")
def test_itn_reports_itself_unavailable() -> None:
    assert itn.available() is False
    with pytest.raises(ItnUnavailable) as raised:
        itn.apply_itn("我花了一百二十三块五。", "zh")
    assert raised.value.message == itn.UNAVAILABLE_HINT
    assert "pip install WeTextProcessing==1.2.0" in itn.UNAVAILABLE_HINT
    with pytest.raises(ItnUnavailable):
        itn.require()
    with pytest.raises(ItnUnavailable):
        itn.warm_up()
    assert itn.apply_itn("二十五", "ja") == "二十五"  # no ITN for this language: nothing is needed


def test_itn_is_available_here() -> None:
    assert itn.available() is True  # the test environment has the wheels (Linux x86_64)
    itn.require()


@pytest.mark.usefixtures("without_wetext")
def test_warm_up_skips_with_one_info_line(
    engine: Qwen3ASREngine, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from qasr.runtime import Runtime

    warmed: list[bool] = []
    monkeypatch.setattr(engine, "warmup", lambda: warmed.append(True))
    monkeypatch.setattr(Qwen3ASREngine, "load", lambda *args, **kwargs: engine)
    with caplog.at_level(logging.INFO, logger="qasr"):
        runtime = Runtime.build(Settings(model="tiny", warmup=True, vad=False))
        runtime.close()
    assert runtime.engine is engine
    assert warmed == [True]
    lines = [(r.levelno, r.getMessage()) for r in caplog.records if r.name.startswith("qasr.")]
    assert lines == [(logging.INFO, f"ITN is unavailable: {itn.UNAVAILABLE_HINT}")]


@pytest.mark.usefixtures("without_wetext")
def test_enable_itn_is_a_clear_400_and_the_rest_works(engine: Qwen3ASREngine, clip: Path) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False, allow_local_dirs=[clip.parent])
    audio = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()

    def generation(url: str, enable_itn: bool) -> httpx.Response:
        messages = [{"role": "user", "content": [{"audio": f"file://{clip}"}]}]
        body = {
            "model": "qwen3-asr-flash",
            "input": {"messages": messages},
            "parameters": {"asr_options": {"enable_itn": enable_itn}},
        }
        return httpx.post(url + GENERATION, json=body, timeout=60)

    def chat(url: str, enable_itn: bool) -> httpx.Response:
        content = [{"type": "input_audio", "input_audio": {"data": audio}}]
        body = {
            "model": "qwen3-asr-flash",
            "messages": [{"role": "user", "content": content}],
            "asr_options": {"enable_itn": enable_itn},
        }
        return httpx.post(url + "/v1/chat/completions", json=body, timeout=60)

    def transcription(url: str, enable_itn: bool) -> httpx.Response:
        form = {"model": "qwen3-asr-flash", "enable_itn": str(enable_itn).lower()}
        files = {"file": ("clip.wav", clip.read_bytes(), "audio/wav")}
        return httpx.post(url + "/v1/audio/transcriptions", data=form, files=files, timeout=60)

    openai_error = {
        "error": {
            "message": itn.UNAVAILABLE_HINT,
            "type": "invalid_request_error",
            "param": "enable_itn",
            "code": "itn_unavailable",
        }
    }
    with scripted_output(engine, SPOKEN), serve_in_thread(settings, engine) as url:
        refused = generation(url, True)
        assert refused.status_code == 400
        assert (refused.json()["code"], refused.json()["message"]) == (
            "InvalidParameter",
            itn.UNAVAILABLE_HINT,
        )
        for call in (chat, transcription):
            refused = call(url, True)
            assert (refused.status_code, refused.json()) == (400, openai_error)

        plain = generation(url, False)
        assert plain.status_code == 200
        assert plain.json()["output"]["choices"][0]["message"]["content"][0]["text"] == RAW
        assert chat(url, False).json()["choices"][0]["message"]["content"] == RAW
        assert transcription(url, False).json()["text"] == RAW


def test_server_and_cli_import_without_wetext() -> None:
    code = (
        "import sys\n"
        f"sys.modules.update(dict.fromkeys({BLOCKED!r}))\n"
        "import qasr.api.app, qasr.cli\n"
        "from qasr.text import itn\n"
        "sys.exit(0 if itn.available() is False else 3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
