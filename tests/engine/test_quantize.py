"""int8 dynamic quantization on the tiny model: what is replaced, that it still transcribes, and where
it refuses. No accuracy or speed claims: a random model writes nonsense, and timings live in bench/."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from qasr.engine.quantize import quantize_int8
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.errors import ModelLoadError
from qasr.types import Delta, EngineRequest, EngineResult
from tests.helpers import noise

_DYNAMIC_INT8 = torch.ao.nn.quantized.dynamic.Linear


@pytest.fixture(scope="module")
def int8_engine(tiny_dir: Path) -> Qwen3ASREngine:
    # bf16 in: the text side must be converted to fp32 by quantization itself.
    return Qwen3ASREngine.load(str(tiny_dir), device="cpu", dtype="bfloat16", quantize="int8")


def test_text_linears_replaced_audio_side_kept(int8_engine: Qwen3ASREngine, engine: Qwen3ASREngine) -> None:
    linears = [n for n, m in engine.model.named_modules() if isinstance(m, torch.nn.Linear)]
    text = [n for n in linears if n.startswith("model.language_model.") or n == "lm_head"]
    quantized = [n for n, m in int8_engine.model.named_modules() if isinstance(m, _DYNAMIC_INT8)]
    assert sorted(quantized) == sorted(text)
    assert "lm_head" in quantized
    # The audio encoder and projector keep their Linear layers, in the loaded dtype (bf16 here).
    left = [n for n, m in int8_engine.model.named_modules() if isinstance(m, torch.nn.Linear)]
    assert sorted(left) == sorted(set(linears) - set(text))
    assert all(n.startswith(("model.audio_tower.", "model.multi_modal_projector.")) for n in left)
    audio = {p.dtype for p in int8_engine.model.model.audio_tower.parameters()}
    assert audio == {torch.bfloat16}
    # The rest of the text side (embeddings, norms) is fp32, what the int8 kernels take.
    text_params = {p.dtype for p in int8_engine.model.model.language_model.parameters()}
    assert text_params == {torch.float32}
    assert isinstance(int8_engine.model.get_input_embeddings(), torch.nn.Embedding)


def test_other_models_are_quantized_whole() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2)).to(
        torch.bfloat16
    )
    quantize_int8(model, "cpu")
    assert [type(m) for m in model] == [_DYNAMIC_INT8, torch.nn.ReLU, _DYNAMIC_INT8]
    assert model(torch.ones(1, 4)).shape == (1, 2)


def test_quantized_model_transcribes(int8_engine: Qwen3ASREngine) -> None:
    clips = [noise(s, seed=i) for i, s in enumerate((1.0, 3.5))]
    results = int8_engine.transcribe([EngineRequest(c) for c in clips])
    assert [type(r) for r in results] == [EngineResult, EngineResult]
    for r in results:
        assert isinstance(r.text, str)
        assert r.output_tokens > 0
        assert r.finish_reason in {"stop", "length", "repetition"}
    assert [r.audio_tokens for r in results] == [13, 46]
    assert int8_engine.transcribe([EngineRequest(clips[0])]) == int8_engine.transcribe(
        [EngineRequest(clips[0])]
    )


def test_quantized_stream_joins_to_result(int8_engine: Qwen3ASREngine) -> None:
    items = list(int8_engine.stream(EngineRequest(noise(2.0, seed=7))))
    final = items[-1]
    assert isinstance(final, EngineResult)
    assert "".join(d.text for d in items[:-1] if isinstance(d, Delta)) == final.text


@pytest.mark.parametrize("device", ["cuda", "cuda:0", torch.device("cuda", 1)])
def test_refuses_gpu(device: str | torch.device) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4))
    with pytest.raises(ModelLoadError, match="int8 quantization is for CPU; on GPU use bf16"):
        quantize_int8(model, device)
    assert isinstance(model[0], torch.nn.Linear)  # untouched
