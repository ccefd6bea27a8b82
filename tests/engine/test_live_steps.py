"""Live steps with cached decoder keys/values (`qasr.engine.live_steps`) on the tiny random model:
the same output as decoding the whole prompt, a prefill that covers only what follows the cached
positions, and batches of utterances of different ages that give each row its output alone."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from qasr.engine.base import Job
from qasr.engine.live_steps import WindowCache, plain_greedy
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.types import SAMPLE_RATE, EngineRequest


@pytest.fixture(scope="module")
def audio() -> np.ndarray:
    """25 s of noise with a louder first second, so the log-mel floor (the clip's maximum minus 8)
    is set at the start and cached windows keep their features as audio is added."""
    rng = np.random.default_rng(3)
    samples = (rng.standard_normal(25 * SAMPLE_RATE) * 0.05).astype(np.float32)
    samples[:SAMPLE_RATE] *= 8
    return samples


def _step(engine: Qwen3ASREngine, request: EngineRequest) -> Any:
    return engine.run([Job(request)])[0]


def _request(audio: np.ndarray, seconds: float, cache: WindowCache | None, prefix: str = "") -> EngineRequest:
    return EngineRequest(audio[: int(seconds * SAMPLE_RATE)], "hotwords", "en", prefix, 8, cache)


@pytest.fixture
def prefills(engine: Qwen3ASREngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The number of positions of each prefill of the text decoder (a call with more than one)."""
    seen: list[int] = []
    decoder = engine.model.model.language_model
    original = decoder.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        width = int(kwargs["inputs_embeds"].shape[1])
        if width > 1:
            seen.append(width)
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", spy)
    return seen


def test_the_tiny_checkpoint_decodes_plain_greedy(engine: Qwen3ASREngine) -> None:
    assert plain_greedy(engine.model.generation_config)
    assert not plain_greedy(type("Config", (), {"repetition_penalty": 1.1})())


def test_steps_prefill_only_after_the_cached_positions(
    engine: Qwen3ASREngine, audio: np.ndarray, prefills: list[int]
) -> None:
    """An utterance stepped every second up to 20 s: each step prefills its prompt minus the cached
    positions, the cache covers the system turn and grows to the end of each completed window's audio
    tokens, and every step's text equals the uncached decode of the same prompt."""
    cache = engine.new_window_cache()
    for second in range(1, 21):
        request = _request(audio, second, cache, prefix="the" if second > 5 else "")
        cached_before = cache.cached_positions
        ids = engine.prepare(request).input_ids
        result = _step(engine, request)
        step_prefill = prefills[-1]
        assert step_prefill == len(ids) - cached_before
        first_audio = int(np.flatnonzero(ids == engine._audio_pad_id)[0])
        assert cache.cached_positions == first_audio + cache.windows * cache.window_tokens
        plain = engine.transcribe([_request(audio, second, None, request.prefix)])[0]
        assert result.text == plain.text
        assert result.audio_tokens == plain.audio_tokens
    assert cache.windows == 2
    # At 20 s the prompt holds 260 audio tokens; the step prefilled at most the open window's and
    # the text around them.
    assert step_prefill <= cache.window_tokens + 60
    assert len(cache.keys) == engine.model.config.text_config.num_hidden_layers


def test_a_batch_of_different_ages_gives_each_row_its_own_output(
    engine: Qwen3ASREngine, audio: np.ndarray
) -> None:
    """Rows with 0, 1 and 2 cached windows (and different prefixes) in one batch: each row's text is
    what its prompt decodes to alone without any cache."""
    young, middle, old = (engine.new_window_cache() for _ in range(3))
    for seconds, cache in ((9.0, middle), (12.0, old), (17.0, old)):
        _step(engine, _request(audio, seconds, cache))
    assert (young.windows, middle.windows, old.windows) == (0, 1, 2)
    batch = [
        _request(audio, 4.0, young),
        _request(audio, 10.5, middle, prefix="hello there"),
        _request(audio, 23.0, old, prefix="a"),
    ]
    results = engine.run([Job(r) for r in batch])
    alone = [
        engine.transcribe([_request(audio, len(r.samples) / SAMPLE_RATE, None, r.prefix)])[0] for r in batch
    ]
    assert [r.text for r in results] == [a.text for a in alone]
    assert old.windows == 2 and old.cached_positions > middle.cached_positions > 0


def test_a_changed_prompt_start_drops_the_cache(engine: Qwen3ASREngine, audio: np.ndarray) -> None:
    """A cache is used only for the prompt it was made for: another context starts afresh."""
    cache = engine.new_window_cache()
    _step(engine, _request(audio, 10.0, cache))
    assert cache.cached_positions > 0
    other = EngineRequest(audio[: 11 * SAMPLE_RATE], "another context", "en", "", 8, cache)
    result = _step(engine, other)
    plain = engine.transcribe([EngineRequest(other.samples, other.context, "en", "", 8)])[0]
    assert result.text == plain.text
    assert cache.prompt_ids is not None
    assert torch.equal(
        cache.prompt_ids, torch.from_numpy(engine.prepare(other).input_ids[: cache.cached_positions])
    )
