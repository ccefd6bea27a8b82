"""Live steps with cached decoder keys/values (`qasr.engine.live_steps`) on the tiny random model:
the same output as decoding the whole prompt, a prefill that covers only what follows the cached
positions, and batches of utterances of different ages that give each row its output alone."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qasr.engine.base import Job
from qasr.engine.live_steps import WindowCache, plain_greedy
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.types import SAMPLE_RATE, EngineRequest
from tests.helpers import rigged_checkpoint


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


def test_a_final_on_the_cache_prefills_only_after_it(
    engine: Qwen3ASREngine, audio: np.ndarray, prefills: list[int]
) -> None:
    """A live final (no prefix, no cap) on the utterance's cache: the plain decode's text, with the
    system turn and the completed windows' audio tokens taken from the cache."""
    cache = engine.new_window_cache()
    for seconds in (6.0, 12.0, 18.0):
        _step(engine, _request(audio, seconds, cache))
    cached = cache.cached_positions
    final = EngineRequest(audio[: 19 * SAMPLE_RATE], "hotwords", "en", encoder_cache=cache)
    result = _step(engine, final)
    assert prefills[-1] == len(engine.prepare(final).input_ids) - cached
    plain = engine.transcribe([dataclasses.replace(final, encoder_cache=None)])[0]
    assert (result.text, result.output_tokens) == (plain.text, plain.output_tokens)


def test_one_cache_twice_in_a_batch_is_used_once(engine: Qwen3ASREngine, audio: np.ndarray) -> None:
    """An utterance's final in the batch of its own step (cancelled too late to leave the queue):
    the second row gets a throwaway cache, both outputs are their prompts' own, and the cache holds
    each completed window once."""
    cache = engine.new_window_cache()
    _step(engine, _request(audio, 9.0, cache))
    step = _request(audio, 17.0, cache)
    final = EngineRequest(audio[: 17 * SAMPLE_RATE], "hotwords", "en", encoder_cache=cache)
    results = engine.run([Job(step), Job(final)])
    alone = [engine.transcribe([dataclasses.replace(r, encoder_cache=None)])[0] for r in (step, final)]
    assert [r.text for r in results] == [a.text for a in alone]
    assert cache.windows == 2
    first_audio = int(np.flatnonzero(engine.prepare(step).input_ids == engine._audio_pad_id)[0])
    assert cache.cached_positions == first_audio + 2 * cache.window_tokens


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


def _decoder_calls(engine: Qwen3ASREngine, monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    decoder = engine.model.model.language_model
    original = decoder.forward

    def spy(*args: Any, **kwargs: Any) -> Any:
        calls.append(int(kwargs["inputs_embeds"].shape[1]))
        return original(*args, **kwargs)

    monkeypatch.setattr(decoder, "forward", spy)
    return calls


RIGGED_TEXT = "Welcome to the speech recognition service."


@pytest.fixture(scope="module")
def rigged(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Qwen3ASREngine:
    """The tiny model rigged to write `RIGGED_TEXT` in canonical tokens (as a real model writes
    text): the random model's tokens do not survive decoding and re-tokenizing, so a draft made from
    its text is never right."""
    path = rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged") / "model", RIGGED_TEXT)
    return Qwen3ASREngine.load(str(path), device="cpu", dtype="float32")


@pytest.mark.parametrize("language", ["en", None])
def test_a_right_draft_is_checked_in_one_pass(
    rigged: Qwen3ASREngine, audio: np.ndarray, monkeypatch: pytest.MonkeyPatch, language: str | None
) -> None:
    """A final whose draft is what greedy decoding writes: the same result, from the prefill alone
    instead of one decoding step per token."""
    request = EngineRequest(audio[: 6 * SAMPLE_RATE], "", language)
    plain = rigged.transcribe([request])[0]
    assert plain.text == RIGGED_TEXT
    header = "" if language else "language English<asr_text>"
    calls = _decoder_calls(rigged, monkeypatch)
    drafted = rigged.transcribe([dataclasses.replace(request, draft=header + plain.text)])[0]
    assert (drafted.text, drafted.language, drafted.output_tokens, drafted.finish_reason) == (
        plain.text,
        plain.language,
        plain.output_tokens,
        plain.finish_reason,
    )
    assert plain.output_tokens > 5
    assert len(calls) == 1  # the prefill predicts each draft token, and the end token after them


def test_a_draft_right_up_to_a_point_saves_that_far(
    rigged: Qwen3ASREngine, audio: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    request = EngineRequest(audio[: 4 * SAMPLE_RATE], "", "en")
    plain = rigged.transcribe([request])[0]
    draft = "Welcome to the speech rec"
    calls = _decoder_calls(rigged, monkeypatch)
    drafted = rigged.transcribe([dataclasses.replace(request, draft=draft)])[0]
    assert drafted.text == plain.text == RIGGED_TEXT
    right = len(rigged.tokenizer("Welcome to the speech", add_special_tokens=False)["input_ids"])
    assert len(calls) == 1 + plain.output_tokens - right  # one step per token after the right ones


def test_wrong_and_partly_right_drafts_change_nothing(engine: Qwen3ASREngine, audio: np.ndarray) -> None:
    """Drafts that go wrong at the start, in the middle, or are longer than the output, in one batch
    with a request without a draft: every row's result is what it is without a draft."""
    requests = [EngineRequest(audio[: s * SAMPLE_RATE], "", "en", max_new_tokens=16) for s in (3, 5, 7, 9)]
    plain = engine.transcribe(requests)
    words = plain[1].text.split(" ")
    drafts = ["quite another text", " ".join(words[: len(words) // 2]) + " zebra", plain[2].text * 3, ""]
    drafted = engine.transcribe(
        [dataclasses.replace(r, draft=d) for r, d in zip(requests, drafts, strict=True)]
    )
    assert [(d.text, d.output_tokens, d.finish_reason) for d in drafted] == [
        (p.text, p.output_tokens, p.finish_reason) for p in plain
    ]
