"""Per-clip model inputs (`qasr.engine.features`) against the transformers processor they replace."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from qasr.engine.features import PreparedClip, collate, log_mel
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.types import EngineRequest
from tests.helpers import noise

# Lengths around the edges: under the extractor's 0.5 s minimum, not a whole hop, exactly one
# chunk of 100 frames, one sample over, and a long clip.
_SAMPLES = (3_200, 8_000, 16_000, 16_001, 48_123, 160_000, 321_077)


@pytest.mark.parametrize("n", _SAMPLES)
def test_log_mel_matches_the_processor(engine: Qwen3ASREngine, n: int) -> None:
    extractor = engine.processor.feature_extractor
    clip = noise(n / 16_000, seed=n)[:n]
    reference = extractor(
        clip, sampling_rate=16_000, padding=True, return_attention_mask=True, return_tensors="np"
    )
    features, mask = log_mel(clip, extractor)
    assert features.shape == reference["input_features"][0].shape
    assert features.shape[1] % 100 == 0
    np.testing.assert_array_equal(mask, reference["attention_mask"][0])
    np.testing.assert_allclose(features, reference["input_features"][0], atol=1e-4, rtol=0)
    assert np.abs(features[:, mask.astype(bool)]).max() > 0.1  # real values were compared, not only padding


@pytest.mark.parametrize("n", _SAMPLES)
def test_prepared_prompt_matches_the_processor(engine: Qwen3ASREngine, n: int) -> None:
    request = EngineRequest(noise(n / 16_000, seed=1)[:n], context="hotwords: Qwen", language="en")
    prepared = engine.prepare(request)
    prompt = engine.prompt(request.context, request.language)
    reference = engine.processor(text=[prompt], audio=[request.samples], sampling_rate=16_000)
    assert prepared.input_ids.tolist() == reference["input_ids"][0].tolist()
    np.testing.assert_array_equal(prepared.features_mask, reference["input_features_mask"][0].numpy())
    pads = int((prepared.input_ids == engine._audio_pad_id).sum())
    assert pads == engine.count_audio_tokens(n) > 0


def test_equal_clips_collate_as_the_processor_batches(engine: Qwen3ASREngine) -> None:
    clips = [noise(2.5, seed=i) for i in range(3)]
    contexts = ["", "a longer context, so the prompts differ in length", "x"]
    prompts = [engine.prompt(c) for c in contexts]
    ours = engine.build_inputs([EngineRequest(s, context=c) for s, c in zip(clips, contexts, strict=True)])
    reference = engine.processor(text=prompts, audio=clips, sampling_rate=16_000)
    for key in ("input_ids", "attention_mask", "input_features_mask"):
        assert torch.equal(ours[key], reference[key]), key
    torch.testing.assert_close(ours["input_features"], reference["input_features"], atol=1e-4, rtol=0)
    assert ours["attention_mask"][0].sum() < ours["attention_mask"][1].sum()  # left padding was exercised


def test_a_clip_encodes_the_same_alone_and_beside_a_longer_one(engine: Qwen3ASREngine) -> None:
    short, long = noise(1.3, seed=3), noise(6.2, seed=4)
    alone = engine.build_inputs([EngineRequest(short)])
    both = engine.build_inputs([EngineRequest(short), EngineRequest(long)])
    model = engine.model.model
    with torch.inference_mode():
        a = model.get_audio_features(alone["input_features"], alone["input_features_mask"]).pooler_output
        b = model.get_audio_features(both["input_features"], both["input_features_mask"]).pooler_output
    assert torch.equal(a, b[: a.shape[0]])


def test_collate_pads_ids_left_and_features_right() -> None:
    a = PreparedClip(np.array([5, 6, 7]), np.ones((2, 100), np.float32), np.ones(100, np.int64))
    mask = np.r_[np.ones(150, np.int64), np.zeros(50, np.int64)]
    b = PreparedClip(np.array([8]), np.full((2, 200), 2.0, np.float32), mask)
    batch = collate([a, b], pad_token_id=0)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [0, 0, 8]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [0, 0, 1]]
    assert batch["input_features"].shape == (2, 2, 200)
    assert batch["input_features"][0, :, 100:].abs().sum() == 0
    assert batch["input_features_mask"].sum(dim=1).tolist() == [100, 150]


def test_a_checkpoint_with_dither_is_refused(tiny_dir: Path, tmp_path: Path) -> None:
    import json
    import shutil

    from qasr.errors import ModelLoadError

    copy = tmp_path / "dither"
    shutil.copytree(tiny_dir, copy)
    config_path = copy / "processor_config.json"
    config = json.loads(config_path.read_text())
    config["feature_extractor"]["dither"] = 1e-5
    config_path.write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="dither"):
        Qwen3ASREngine.load(str(copy), device="cpu", dtype="float32")
