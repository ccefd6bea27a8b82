"""Segmentation on real speech (synthesised by espeak-ng) with silences at known places."""

from __future__ import annotations

import functools
import itertools
import math
import os
import shutil
import subprocess
import tempfile
import tracemalloc
from collections.abc import Iterator, Sequence

import av
import numpy as np
import pytest

from qasr.audio.segment import SegmentationOptions, segment_audio, segment_stream
from qasr.audio.vad import VoiceActivityDetector
from qasr.types import SAMPLE_RATE, Segment

needs_espeak = pytest.mark.skipif(
    shutil.which("espeak-ng") is None,
    reason="espeak-ng is not installed (apt-get install espeak-ng); it synthesises the speech under test",
)

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "Speech recognition turns spoken words into text.",
    "Silence between sentences should be skipped.",
    "Every segment keeps its place on the timeline.",
    "Long files are read a piece at a time.",
    "Nothing is cut in the middle of a word.",
    "Pauses are where the cuts belong.",
    "The model never hears long silence.",
)
PAD_S = SegmentationOptions().speech_pad_ms / 1000
VAD_SLACK_S = 0.15
"""How far past the padding the VAD may place an edge: frames are 32 ms and speech ends with hysteresis."""


@functools.cache
def speak(text: str, voice: str = "en") -> np.ndarray:
    """`text` spoken by espeak-ng at 16 kHz, trimmed to its first and last audible sample."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "speech.wav")
        subprocess.run(["espeak-ng", "-v", voice, "-w", path, text], check=True)
        with av.open(path) as container:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
            frames = [f for frame in container.decode(audio=0) for f in resampler.resample(frame)]
            frames += resampler.resample(None)
    samples = np.concatenate([f.to_ndarray().reshape(-1) for f in frames]).astype(np.float32)
    audible = np.flatnonzero(np.abs(samples) > 1e-3)
    samples = samples[audible[0] : audible[-1] + 1]
    samples.flags.writeable = False
    return samples


def speech_with_gaps(
    sentences: Sequence[str], gaps_s: Sequence[float], lead_s: float = 0.5
) -> tuple[np.ndarray, list[tuple[float, float]]]:
    """Sentences separated by digital silence; also returns each sentence's (start_s, end_s)."""
    parts = [np.zeros(round(lead_s * SAMPLE_RATE), np.float32)]
    spans = []
    position = parts[0].size
    for sentence, gap_s in zip(sentences, gaps_s, strict=True):
        speech = speak(sentence)
        spans.append((position / SAMPLE_RATE, (position + speech.size) / SAMPLE_RATE))
        parts += [speech, np.zeros(round(gap_s * SAMPLE_RATE), np.float32)]
        position += speech.size + parts[-1].size
    return np.concatenate(parts), spans


def babble(seconds: float) -> np.ndarray:
    """Four overlapping voices: speech with no pause at all."""
    length = round(seconds * SAMPLE_RATE)
    mix = np.zeros(length, np.float32)
    for k, sentence in enumerate(SENTENCES[:4]):
        offset = round(k * 0.37 * SAMPLE_RATE)
        voice = np.tile(speak(sentence), 8)[: length - offset]
        mix[offset : offset + voice.size] += voice
    return mix / 3


def odd_chunks(samples: np.ndarray, sizes: Sequence[int]) -> Iterator[np.ndarray]:
    """`samples` in chunks cycling through `sizes` (0 included: empty chunks must be harmless)."""
    position, k = 0, 0
    while position < samples.size:
        size = sizes[k % len(sizes)]
        yield samples[position : position + size]
        position += size
        k += 1


def check_invariants(
    segments: list[tuple[Segment, np.ndarray]], audio: np.ndarray, options: SegmentationOptions
) -> None:
    """Ordered, non-overlapping, inside the audio, within the maximum, samples cut from the audio."""
    duration_s = audio.size / SAMPLE_RATE
    previous_end = 0.0
    for segment, samples in segments:
        assert previous_end <= segment.start_s < segment.end_s <= duration_s
        assert segment.end_s - segment.start_s <= options.max_segment_s
        start = round(segment.start_s * SAMPLE_RATE)
        assert np.array_equal(samples, audio[start : start + samples.size])
        assert samples.size == round((segment.end_s - segment.start_s) * SAMPLE_RATE)
        assert samples.dtype == np.float32
        previous_end = segment.end_s


def as_times(segments: list[tuple[Segment, np.ndarray]]) -> list[tuple[float, float]]:
    return [(segment.start_s, segment.end_s) for segment, _ in segments]


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@needs_espeak
def test_sentences_become_segments_cut_inside_the_silences(vad: VoiceActivityDetector) -> None:
    options = SegmentationOptions()
    audio, spans = speech_with_gaps(SENTENCES[:3], [1.2, 1.6, 2.0])

    segments = segment_audio(audio, vad, options)

    check_invariants(segments, audio, options)
    assert len(segments) == len(spans)
    for (segment, _), (speech_start, speech_end) in zip(segments, spans, strict=True):
        # All of the sentence is inside, and the silence around it only up to the padding.
        assert speech_start - PAD_S - VAD_SLACK_S <= segment.start_s <= speech_start
        assert speech_end <= segment.end_s <= speech_end + PAD_S + VAD_SLACK_S


@pytest.mark.parametrize(
    "audio",
    [
        np.zeros(30 * SAMPLE_RATE, np.float32),
        (np.random.default_rng(0).standard_normal(30 * SAMPLE_RATE) * 0.01).astype(np.float32),
        (np.random.default_rng(1).standard_normal(30 * SAMPLE_RATE) * 0.1).astype(np.float32),
        np.zeros(0, np.float32),
    ],
    ids=["digital-silence", "low-white-noise", "loud-white-noise", "empty"],
)
def test_no_speech_gives_no_segments(vad: VoiceActivityDetector, audio: np.ndarray) -> None:
    assert segment_audio(audio, vad) == []
    assert list(segment_stream(odd_chunks(audio, [4000, 1234]), vad)) == []


@needs_espeak
def test_long_speech_is_cut_at_pauses_within_the_maximum(vad: VoiceActivityDetector) -> None:
    # Pauses shorter than min_silence_ms keep sentences together until the 5 s maximum forces a cut.
    options = SegmentationOptions(max_segment_s=5.0)
    gaps = [0.4, 0.6, 0.5, 0.45, 0.65, 0.55, 0.5, 1.0]
    audio, spans = speech_with_gaps(SENTENCES, gaps)

    segments = segment_audio(audio, vad, options)

    check_invariants(segments, audio, options)
    assert 1 < len(segments) < len(spans)
    pauses = [(end, start) for (_, end), (start, _) in itertools.pairwise(spans)]
    for (left, _), (right, _) in itertools.pairwise(segments):
        assert any(p_start <= left.end_s <= right.start_s <= p_end for p_start, p_end in pauses)
    for speech_start, speech_end in spans:  # no sentence is split: each lies inside one segment
        assert any(s.start_s <= speech_start and speech_end <= s.end_s for s, _ in segments)


@needs_espeak
def test_an_over_long_stretch_is_cut_at_its_longest_pause(vad: VoiceActivityDetector) -> None:
    # The three sentences (~9.5 s with their pauses) do not fit in 9 s; the 0.9 s pause wins over the later
    # 0.4 s one, although cutting at the later pause would give a longer first segment.
    options = SegmentationOptions(max_segment_s=9.0)
    audio, spans = speech_with_gaps(SENTENCES[:3], [0.9, 0.4, 0.5])

    segments = segment_audio(audio, vad, options)

    check_invariants(segments, audio, options)
    assert len(segments) == 2
    assert spans[0][1] <= segments[0][0].end_s <= segments[1][0].start_s <= spans[1][0]


@needs_espeak
def test_speech_without_any_pause_is_cut_hard_at_the_maximum(vad: VoiceActivityDetector) -> None:
    options = SegmentationOptions(max_segment_s=3.0)
    silence = np.zeros(SAMPLE_RATE, np.float32)
    audio = np.concatenate([silence, babble(12.0), silence])

    segments = segment_audio(audio, vad, options)

    check_invariants(segments, audio, options)
    assert len(segments) >= 12.0 / 3.0
    # Hard cuts leave no gap and no overlap: the babble is covered end to end.
    for (left, _), (right, _) in itertools.pairwise(segments):
        assert left.end_s == right.start_s
    assert segments[0][0].start_s <= 1.0 + VAD_SLACK_S
    assert segments[-1][0].end_s >= 13.0


@needs_espeak
@pytest.mark.parametrize("sizes", [[1234], [1, 511, 0, 4097, 1234, 16000 * 3 + 7]])
def test_streaming_any_chunk_sizes_gives_the_same_segments(
    vad: VoiceActivityDetector, sizes: list[int]
) -> None:
    options = SegmentationOptions(max_segment_s=5.0)
    audio, _ = speech_with_gaps(SENTENCES[:6], [0.5, 1.5, 0.3, 2.5, 0.6, 0.2])

    whole = segment_audio(audio, vad, options)
    streamed = list(segment_stream(odd_chunks(audio, sizes), vad, options))

    assert as_times(streamed) == as_times(whole)
    assert all(np.array_equal(a, b) for (_, a), (_, b) in zip(streamed, whole, strict=True))


def stream_peak_memory(
    vad: VoiceActivityDetector, block: np.ndarray, repeats: int, options: SegmentationOptions
) -> tuple[int, int, float]:
    """Stream `block` `repeats` times in 1234-sample chunks: (segments, peak bytes, first-yield lag)."""
    consumed = 0

    def chunks() -> Iterator[np.ndarray]:
        nonlocal consumed
        for _ in range(repeats):
            for chunk in odd_chunks(block, [1234]):
                consumed += chunk.size
                yield chunk

    count, first_lag_s = 0, math.inf
    tracemalloc.start()
    try:
        for segment, _ in segment_stream(chunks(), vad, options):
            count += 1
            first_lag_s = min(first_lag_s, consumed / SAMPLE_RATE - segment.end_s)
        _, peak_bytes = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return count, peak_bytes, first_lag_s


@needs_espeak
def test_stream_memory_does_not_grow_with_the_input_and_segments_come_early(
    vad: VoiceActivityDetector,
) -> None:
    options = SegmentationOptions(max_segment_s=5.0)
    block, _ = speech_with_gaps(SENTENCES, [0.5, 1.5, 0.4, 3.0, 0.6, 0.5, 2.0, 0.7])  # 26 s

    short_count, short_peak, _ = stream_peak_memory(vad, block, 2, options)
    long_count, long_peak, first_lag_s = stream_peak_memory(vad, block, 8, options)  # 13 MB of audio

    assert long_count == 4 * short_count
    assert long_peak < short_peak * 1.1
    # Held audio: the open segment, the trailing pause, a VAD block (~2 s) and a chunk; then the VAD's
    # working copies (2 blocks) and the segment just yielded. As float32, with a second of slack:
    bound_s = 2 * options.max_segment_s + options.min_silence_ms / 1000 + 3 * 2.05 + 1
    assert long_peak < bound_s * SAMPLE_RATE * 4
    assert first_lag_s < 4.0  # a segment comes out within a VAD block and a pause of its end


@needs_espeak
def test_vad_state_starts_fresh_for_every_stream(vad: VoiceActivityDetector) -> None:
    audio, _ = speech_with_gaps(SENTENCES[:2], [1.0, 0.3])
    first = segment_audio(audio, vad)
    segment_audio(babble(4.0), vad)  # leaves the model mid-speech if state leaked

    assert as_times(segment_audio(audio, vad)) == as_times(first)


@needs_espeak
def test_isolated_speech_shorter_than_min_speech_is_dropped(vad: VoiceActivityDetector) -> None:
    audio, _ = speech_with_gaps(SENTENCES[:2], [1.5, 0.5])

    assert len(segment_audio(audio, vad, SegmentationOptions(min_speech_ms=250))) == 2
    assert segment_audio(audio, vad, SegmentationOptions(min_speech_ms=5000)) == []


@needs_espeak
def test_wide_padding_never_overlaps_neighbours(vad: VoiceActivityDetector) -> None:
    options = SegmentationOptions(speech_pad_ms=1000, min_silence_ms=300, max_segment_s=10.0)
    audio, spans = speech_with_gaps(SENTENCES[:4], [0.5, 0.8, 0.6, 0.4], lead_s=0.3)

    segments = segment_audio(audio, vad, options)

    check_invariants(segments, audio, options)
    assert len(segments) == 4
    assert segments[0][0].start_s == 0.0  # padding stops at the start of the audio
    assert segments[-1][0].end_s == audio.size / SAMPLE_RATE  # and at its end
    for (segment, _), (speech_start, speech_end) in zip(segments, spans, strict=True):
        assert segment.start_s <= speech_start and speech_end <= segment.end_s


@pytest.mark.parametrize(
    "bad",
    [
        {"max_segment_s": 0.5},
        {"speech_pad_ms": -1},
        {"speech_pad_ms": 2000, "max_segment_s": 5.0},
        {"min_silence_ms": 0},
        {"min_speech_ms": -5},
        {"threshold": 1.0},
        {"threshold": 0.0},
    ],
)
def test_options_reject_impossible_values(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        SegmentationOptions(**bad)  # type: ignore[arg-type]


def test_multichannel_chunks_are_refused(vad: VoiceActivityDetector) -> None:
    with pytest.raises(ValueError, match="1-D"):
        list(segment_stream([np.zeros((2, 1600), np.float32)], vad))
