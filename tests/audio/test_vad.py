"""The Silero VAD wrapper: probabilities per 32 ms frame, per-stream state, offline loading."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from qasr.audio.vad import FRAME_SAMPLES, VoiceActivityDetector
from qasr.errors import ModelLoadError
from qasr.types import SAMPLE_RATE
from tests.audio.test_segment import SENTENCES, babble, needs_espeak, odd_chunks, speech_with_gaps


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


def test_one_probability_per_frame_the_last_one_padded(vad: VoiceActivityDetector) -> None:
    for samples in (0, 1, FRAME_SAMPLES, FRAME_SAMPLES + 1, 64 * FRAME_SAMPLES, 200 * FRAME_SAMPLES - 3):
        probs = vad.speech_probabilities(np.zeros(samples, np.float32))
        assert probs.shape == (-(-samples // FRAME_SAMPLES),)
        assert probs.dtype == np.float32


@pytest.mark.parametrize("level", [0.0, 0.001, 0.01, 0.1])
def test_silence_and_white_noise_are_not_speech(vad: VoiceActivityDetector, level: float) -> None:
    noise = np.random.default_rng(7).standard_normal(10 * SAMPLE_RATE) * level
    probs = vad.speech_probabilities(noise.astype(np.float32))
    assert probs.max() < 0.3


@needs_espeak
def test_speech_is_speech_and_the_gap_is_not(vad: VoiceActivityDetector) -> None:
    audio, spans = speech_with_gaps(SENTENCES[:2], [2.0, 1.0])
    probs = vad.speech_probabilities(audio)
    frame_s = FRAME_SAMPLES / SAMPLE_RATE

    def frames(start_s: float, end_s: float) -> np.ndarray:
        return probs[round(start_s / frame_s) : round(end_s / frame_s)]

    for start_s, end_s in spans:
        assert np.mean(frames(start_s, end_s) >= 0.5) > 0.8
    gap_start, gap_end = spans[0][1], spans[1][0]
    assert frames(gap_start + 0.3, gap_end).max() < 0.3  # 0.3 s for the model to notice the end


@needs_espeak
def test_chunk_sizes_do_not_change_the_probabilities(vad: VoiceActivityDetector) -> None:
    audio, _ = speech_with_gaps(SENTENCES[:3], [0.5, 1.0, 0.3])
    whole = vad.speech_probabilities(audio)

    stream = vad.stream()
    parts = [stream.feed(chunk) for chunk in odd_chunks(audio, [1, 1234, 0, 511, 40_000])]
    parts.append(stream.flush())

    assert np.array_equal(np.concatenate(parts), whole)
    assert stream.frames_done == whole.size


@needs_espeak
def test_each_stream_has_its_own_state(vad: VoiceActivityDetector) -> None:
    audio, _ = speech_with_gaps(SENTENCES[:2], [0.5, 0.5])
    alone = vad.speech_probabilities(audio)

    # Two streams fed in turn on the same detector must not see each other's recurrent state.
    first, second = vad.stream(), vad.stream()
    noise = babble(audio.size / SAMPLE_RATE)
    outputs: list[list[np.ndarray]] = [[], []]
    for a, b in zip(odd_chunks(audio, [3000]), odd_chunks(noise, [3000]), strict=True):
        outputs[0].append(first.feed(a))
        outputs[1].append(second.feed(b))
    outputs[0].append(first.flush())

    assert np.array_equal(np.concatenate(outputs[0]), alone)


def test_feeding_after_flush_or_multichannel_is_refused(vad: VoiceActivityDetector) -> None:
    stream = vad.stream()
    with pytest.raises(ValueError, match="1-D"):
        stream.feed(np.zeros((2, 512), np.float32))
    stream.flush()
    with pytest.raises(RuntimeError, match="new stream"):
        stream.feed(np.zeros(512, np.float32))


def test_a_missing_or_wrong_model_file_is_a_model_load_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError):
        VoiceActivityDetector(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ModelLoadError):
        VoiceActivityDetector(tmp_path / "junk.onnx")


def test_loading_does_not_import_silero_vad() -> None:
    # Importing the silero_vad package calls torch.set_num_threads(1) for the whole process.
    code = (
        "import sys; from qasr.audio.vad import VoiceActivityDetector; VoiceActivityDetector(); "
        "assert 'silero_vad' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
