"""`runtime.live` as the server builds it, and the final's text processing, on a rigged checkpoint
whose greedy decoding writes a known sentence (tests/helpers.py, `rigged_checkpoint`)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import numpy as np
import pytest

from qasr.audio.decode import decode_audio
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.live import LiveOptions, Partial
from qasr.runtime import Runtime
from qasr.settings import Settings
from qasr.text import itn
from qasr.types import SAMPLE_RATE
from tests.helpers import rigged_checkpoint, synthesize

SPOKEN = "Welcome to twenty services."


@pytest.fixture(scope="module")
def rigged(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Qwen3ASREngine:
    model = rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged-live") / "model", SPOKEN)
    return Qwen3ASREngine.load(str(model), device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    path = synthesize("one two three four five six seven", tmp_path_factory.mktemp("live-rt") / "s.wav")
    return decode_audio(Path(path)).samples


def test_only_a_server_runtime_has_a_live_recognizer(engine: Qwen3ASREngine) -> None:
    with Runtime.build(Settings(model="tiny", warmup=False), engine) as plain:
        assert plain.live is None
    with Runtime.build(Settings(model="tiny", warmup=False), engine, server=True) as server:
        assert server.live is not None
        assert server.live.scheduler is server.scheduler  # live steps share the model's batches
        assert server.live.encoder_cache == engine.new_window_cache
        assert server.live.max_utterance_s == 30.0
    tuned = Settings(model="tiny", warmup=False, live_max_utterance_s=20, live_step_tokens=5)
    with Runtime.build(tuned, engine, server=True) as server:
        assert server.live is not None
        assert (server.live.max_utterance_s, server.live.config.step_tokens) == (20.0, 5)
    with pytest.raises(ValueError, match="live_max_utterance_s"):
        Settings(live_max_utterance_s=1.0)


def _utterance_run(
    engine: Qwen3ASREngine, speech: np.ndarray, options: LiveOptions
) -> tuple[list[Partial], str]:
    async def main() -> tuple[list[Partial], str]:
        with Runtime.build(Settings(model="tiny", warmup=False), engine, server=True) as runtime:
            assert runtime.live is not None
            utterance = runtime.live.utterance(options)
            partials = []
            for start in range(0, len(speech), SAMPLE_RATE // 2):
                utterance.append(speech[start : start + SAMPLE_RATE // 2])
                partial = await utterance.partial()
                if partial is not None:
                    partials.append(partial)
            final = await utterance.final()
            return partials, final.transcript

    return asyncio.run(main())


def test_partials_continue_the_settled_text_and_the_final_is_the_whole_sentence(
    rigged: Qwen3ASREngine, speech: np.ndarray
) -> None:
    partials, final = _utterance_run(rigged, speech, LiveOptions(language="en"))
    assert final == SPOKEN
    shown = [p.text + p.stash for p in partials]
    assert all(SPOKEN.startswith(s) for s in shown)  # never a raw header, never other text
    assert partials[-1].text and SPOKEN.startswith(partials[-1].text)


def test_a_detected_language_is_forced_once_text_is_settled(
    rigged: Qwen3ASREngine, speech: np.ndarray
) -> None:
    partials, final = _utterance_run(rigged, speech, LiveOptions())
    assert final == SPOKEN
    assert all("language" not in p.text + p.stash and "<asr_text>" not in p.stash for p in partials)
    assert partials[-1].language == "en"


@pytest.mark.skipif(not itn.available(), reason=itn.UNAVAILABLE_HINT)
def test_the_final_gets_itn_like_the_other_apis(rigged: Qwen3ASREngine, speech: np.ndarray) -> None:
    _, final = _utterance_run(rigged, speech, LiveOptions(language="en", enable_itn=True))
    assert final == itn.apply_itn(SPOKEN, "en")
    assert final != SPOKEN  # the numbers were written out
