"""`enable_itn` through the servers and `--itn` through the CLI, with the engine's output driven to a
known spoken-form text (the real generate loop, steered by a test-only logits processor)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

pytest.importorskip("pynini")  # ITN needs WeTextProcessing; see tests/text/test_itn_optional.py

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread
from tests.helpers import scripted_output, synthesize

GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"
SPOKEN = "language Chinese<asr_text>我花了一百二十三块五。明天下午三点半见。"
WRITTEN = "我花了123.5块。明天下午3:30见。"
RAW = "我花了一百二十三块五。明天下午三点半见。"


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    # long enough that the token budget (scaled to the audio) fits the scripted text
    text = "A clip that is long enough for the scripted transcript to fit in its token budget."
    return synthesize(text, tmp_path_factory.mktemp("itn") / "clip.wav")


def _body(clip: Path, itn: bool, incremental: bool | None = None) -> dict:
    params: dict = {"asr_options": {"enable_itn": itn}}
    if incremental is not None:
        params["incremental_output"] = incremental
    return {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": "user", "content": [{"audio": f"file://{clip}"}]}]},
        "parameters": params,
    }


def _stream_texts(raw: str) -> list[str]:
    texts = []
    for block in raw.split("\n\n"):
        if block.strip():
            data = json.loads(block.split("\n")[3][len("data:") :])
            texts.append(data["output"]["choices"][0]["message"]["content"][0]["text"])
    return texts


def test_dashscope_honours_enable_itn(engine: Qwen3ASREngine, clip: Path) -> None:
    settings = Settings(model="tiny", warmup=False, vad=False, allow_local_dirs=[clip.parent])
    with scripted_output(engine, SPOKEN), serve_in_thread(settings, engine) as url:
        on = httpx.post(url + GENERATION, json=_body(clip, True), timeout=60).json()
        off = httpx.post(url + GENERATION, json=_body(clip, False), timeout=60).json()
        assert on["output"]["choices"][0]["message"]["content"][0]["text"] == WRITTEN
        assert on["output"]["choices"][0]["message"]["annotations"][0]["language"] == "zh"
        assert off["output"]["choices"][0]["message"]["content"][0]["text"] == RAW
        sse = {"X-DashScope-SSE": "enable"}
        cumulative = _stream_texts(
            httpx.post(url + GENERATION, json=_body(clip, True), headers=sse, timeout=60).text
        )
        assert cumulative[-1] == WRITTEN and cumulative[0] == "我花了123.5块。"  # released per sentence
        deltas = _stream_texts(
            httpx.post(url + GENERATION, json=_body(clip, True, True), headers=sse, timeout=60).text
        )
        assert "".join(deltas) == WRITTEN


def test_openai_endpoints_honour_enable_itn(engine: Qwen3ASREngine, clip: Path) -> None:
    import base64

    from openai import OpenAI

    audio = "data:audio/wav;base64," + base64.b64encode(clip.read_bytes()).decode()
    settings = Settings(model="tiny", warmup=False, vad=False)
    with scripted_output(engine, SPOKEN), serve_in_thread(settings, engine) as url:
        for base in ("/compatible-mode/v1", "/v1"):
            client = OpenAI(base_url=url + base, api_key="unused", max_retries=0)
            messages = [
                {"role": "user", "content": [{"type": "input_audio", "input_audio": {"data": audio}}]}
            ]
            for itn, expected in ((True, WRITTEN), (False, RAW)):
                chat = client.chat.completions.create(
                    model="qwen3-asr-flash",
                    messages=messages,
                    extra_body={"asr_options": {"enable_itn": itn}},
                )
                assert chat.choices[0].message.content == expected
        client = OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        for itn, expected in ((True, WRITTEN), (False, RAW)):
            with clip.open("rb") as f:
                result = client.audio.transcriptions.create(
                    model="qwen3-asr-flash", file=f, extra_body={"enable_itn": str(itn).lower()}
                )
            assert result.text == expected


def test_cli_itn(
    engine: Qwen3ASREngine, clip: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from qasr import cli, runtime

    monkeypatch.setattr(runtime, "load_engine", lambda settings: engine)
    with scripted_output(engine, SPOKEN):
        assert cli.main(["transcribe", str(clip), "--itn", "--no-vad"]) == 0
        assert capsys.readouterr().out.strip() == WRITTEN
        assert cli.main(["transcribe", str(clip), "--no-vad"]) == 0
        assert capsys.readouterr().out.strip() == RAW
