"""CPU kernels (issue 18): the packed oneDNN Linear gives the default path's greedy tokens and logits
up to summation order, on a slice of the real 0.6B shapes (hidden 1024, MLP 3072, 16/8 heads of
128, two layers); weight-only int8 stays within its rounding bound. No speed claims: bench/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from qasr.engine import testing
from qasr.engine.cpu_kernels import PackedLinear, apply_cpu_linear, text_linears
from qasr.engine.quantize import Int8WeightLinear, quantize_int8_weight_only, quantize_rows
from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine
from qasr.errors import ModelLoadError
from qasr.types import EngineRequest
from tests.helpers import noise

# Real text-decoder sizes of 0.6B (testing.DIMS["0.6B"]) with two layers, the tiny audio encoder,
# an untied head over the compact vocabulary (so the random model writes varied text).
_SLICE = testing.ModelDims(2, 32, 2, 64, 8, 2, 1024, 16, 8, 128, 3072, tie_embeddings=False)
# Logits of the two paths may differ by summation order only: measured max |diff| here 5e-6, for
# logits with a standard deviation of 0.63; 1e-3 leaves room for other CPUs' kernels and is still far
# below what a change of arithmetic gives (weight-only int8 on the same inputs: 0.07).
_LOGIT_ATOL = 1e-3
_CLIPS = [noise(s, seed=i) for i, s in enumerate((0.7, 2.0, 3.3))]
_OPTIONS = GenerationOptions(max_new_tokens_cap=24, guard_repetition=False)


@pytest.fixture(scope="module")
def slice_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    saved = testing.DIMS.get("slice")
    testing.DIMS["slice"] = _SLICE
    try:
        return testing.build_checkpoint(tmp_path_factory.mktemp("slice"), size="slice")
    finally:
        if saved is None:
            del testing.DIMS["slice"]
        else:
            testing.DIMS["slice"] = saved


def _load(path: Path, **kwargs: Any) -> Qwen3ASREngine:
    return Qwen3ASREngine.load(str(path), device="cpu", dtype="float32", options=_OPTIONS, **kwargs)


@pytest.fixture(scope="module")
def default_engine(slice_dir: Path) -> Qwen3ASREngine:
    return _load(slice_dir, cpu_linear="default")


@pytest.fixture(scope="module")
def packed_engine(slice_dir: Path) -> Qwen3ASREngine:
    return _load(slice_dir, cpu_linear="packed")


def test_packed_replaces_only_text_linears(packed_engine: Qwen3ASREngine) -> None:
    model = packed_engine.model
    packed = sorted(n for n, m in model.named_modules() if isinstance(m, PackedLinear))
    plain = [n for n, m in model.named_modules() if type(m) is torch.nn.Linear]
    assert "lm_head" in packed
    assert "model.language_model.layers.1.mlp.down_proj" in packed
    assert len(packed) == 2 * 7 + 1  # q, k, v, o, gate, up, down per layer, and the head
    assert plain and all(n.startswith(("model.audio_tower.", "model.multi_modal_projector.")) for n in plain)
    assert text_linears(model) == []  # nothing left to pack
    assert packed_engine.describe()["linear"] == "packed"  # shown in the qasr_model metric


def test_packed_gives_the_same_greedy_tokens(
    default_engine: Qwen3ASREngine, packed_engine: Qwen3ASREngine
) -> None:
    for batch in ([_CLIPS[0]], _CLIPS, [_CLIPS[2], _CLIPS[1]]):
        requests = [EngineRequest(c) for c in batch]
        want = default_engine.transcribe(requests)
        got = packed_engine.transcribe(requests)
        assert [r.output_tokens for r in want] == [r.output_tokens for r in got]
        assert all(r.output_tokens > 3 for r in want)  # real text was written, not an early stop
        assert [r.text for r in got] == [r.text for r in want]


def test_packed_logits_within_tolerance(
    default_engine: Qwen3ASREngine, packed_engine: Qwen3ASREngine
) -> None:
    inputs = default_engine.build_inputs([EngineRequest(c) for c in _CLIPS])
    with torch.inference_mode():
        want = default_engine.model(**inputs).logits
        got = packed_engine.model(**inputs).logits
    assert got.shape == want.shape
    assert want.std() > 0.1  # logits with a real spread, so the tolerance means something
    assert (got - want).abs().max().item() <= _LOGIT_ATOL


def test_auto_keeps_small_models_on_the_default_path(tiny_dir: Path) -> None:
    engine = Qwen3ASREngine.load(str(tiny_dir), device="cpu", dtype="float32", cpu_linear="auto")
    assert not any(isinstance(m, PackedLinear) for m in engine.model.modules())
    assert engine.describe()["linear"] == "default"


def test_unknown_choice_and_non_cpu_devices(default_engine: Qwen3ASREngine) -> None:
    model = default_engine.model
    with pytest.raises(ValueError, match="auto, packed, default"):
        apply_cpu_linear(model, "fast", torch.device("cpu"), torch.float32)
    # Not a CPU model: nothing is touched (the packed kernels are CPU kernels).
    assert apply_cpu_linear(model, "packed", torch.device("meta"), torch.float32) == "default"
    assert not any(isinstance(m, PackedLinear) for m in model.modules())


def test_int8_rows_within_rounding_bound() -> None:
    gen = torch.Generator().manual_seed(0)
    linear = torch.nn.Linear(1024, 96, bias=True)
    with torch.no_grad():
        linear.weight.copy_(torch.randn(96, 1024, generator=gen) * 0.02)
        linear.weight[3] = 0.0  # an all-zero row must not divide by zero
    q, scale = quantize_rows(linear.weight.detach())
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127
    assert torch.all(q[3] == 0)
    x = torch.randn(2, 5, 1024, generator=gen)
    with torch.inference_mode():
        want = linear(x)
        got = Int8WeightLinear(linear)(x)
    # Each weight is off by at most half a step (scale / 2), so each output by sum|x| * scale / 2.
    bound = x.abs().sum(-1, keepdim=True) * scale / 2 + 1e-4
    assert got.shape == want.shape
    assert torch.all((got - want).abs() <= bound)
    assert (got - want).abs().max() > 0  # it really is quantized


def test_int8_weight_engine(slice_dir: Path) -> None:
    engine = _load(slice_dir, quantize="int8-weight")
    model = engine.model
    replaced = [n for n, m in model.named_modules() if isinstance(m, Int8WeightLinear)]
    assert len(replaced) == 2 * 7 + 1 and "lm_head" in replaced
    assert engine.describe()["linear"] == "int8-weight"
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    results = engine.transcribe([EngineRequest(c) for c in _CLIPS])
    assert all(r.output_tokens > 0 and r.finish_reason in {"stop", "length"} for r in results)


def test_int8_weight_refuses_gpu() -> None:
    with pytest.raises(ModelLoadError, match="CPU"):
        quantize_int8_weight_only(torch.nn.Linear(2, 2), "cuda")
