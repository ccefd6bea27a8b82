"""The audio side of a live session (`qasr.api.realtime.audio`): PCM decoding and 8 kHz upsampling,
the live VAD stream, server-VAD turns and the utterance length cap. Real speech from espeak-ng."""

from __future__ import annotations

import base64
from pathlib import Path

import numpy as np
import pytest

from qasr.api.realtime.audio import (
    Audio,
    Cut,
    Cutter,
    LiveVadStream,
    PcmDecoder,
    SpeechStarted,
    SpeechStopped,
    TurnDetector,
    quietest_point,
)
from qasr.api.realtime.protocol import EventError, TurnDetection
from qasr.audio.vad import VoiceActivityDetector
from qasr.types import SAMPLE_RATE
from tests.api.realtime_support import silence, speech


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@pytest.fixture(scope="module")
def words(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    return speech("Hello, this is a test of live recognition.", tmp_path_factory.mktemp("rt-audio"))


def _pcm(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


def test_pcm_16k_is_exact_and_chunking_free() -> None:
    raw = np.arange(-500, 500, dtype="<i2").tobytes()
    decoder = PcmDecoder(16000)
    # odd-sized appends: the odd byte waits for the next one
    pieces = [decoder.decode(raw[i : i + 333]) for i in range(0, len(raw), 333)]
    assert np.array_equal(np.concatenate(pieces), np.arange(-500, 500) / 32768.0)


def test_pcm_refuses_bad_base64() -> None:
    with pytest.raises(EventError) as caught:
        PcmDecoder(16000).decode_base64("not base64!!")
    assert caught.value.param == "audio"
    with pytest.raises(EventError):
        PcmDecoder(16000).decode_base64(123)


def test_8k_upsampling_keeps_the_tone_and_is_chunking_free() -> None:
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    raw = _pcm(tone)
    whole = PcmDecoder(8000).decode(raw)
    decoder = PcmDecoder(8000)
    chunked = np.concatenate([decoder.decode(raw[i : i + 321]) for i in range(0, len(raw), 321)])
    assert len(whole) == 2 * len(tone)
    assert np.allclose(whole, chunked, atol=1e-6)
    spectrum = np.abs(np.fft.rfft(whole[2000:]))
    peak_hz = np.argmax(spectrum) * SAMPLE_RATE / len(whole[2000:])
    assert abs(peak_hz - 440) < 5
    assert 0.45 < np.abs(whole[2000:]).max() < 0.55  # level kept
    assert spectrum[np.fft.rfftfreq(len(whole[2000:]), 1 / SAMPLE_RATE) > 4500].max() < 0.01 * spectrum.max()


def test_live_vad_stream_matches_the_file_pipeline(vad: VoiceActivityDetector, words: np.ndarray) -> None:
    audio = np.concatenate([silence(0.5), words, silence(1.0)])
    reference = vad.speech_probabilities(audio)
    stream = LiveVadStream(vad)
    probs = [stream.feed(audio[i : i + 1600]) for i in range(0, len(audio), 1600)]
    probs.append(stream.flush())
    assert np.allclose(np.concatenate(probs), reference, atol=1e-4)


def test_turns_of_two_utterances(vad: VoiceActivityDetector, words: np.ndarray) -> None:
    audio = np.concatenate([silence(0.5), words, silence(2.0), words, silence(1.5)])
    detector = TurnDetector(vad, TurnDetection(silence_duration_ms=800, prefix_padding_ms=300), start=1000)
    actions = []
    for i in range(0, len(audio), 1600):
        actions += detector.feed(audio[i : i + 1600])
    actions += detector.flush()
    kinds = [type(a).__name__ for a in actions if not isinstance(a, Audio)]
    assert kinds == ["SpeechStarted", "SpeechStopped", "SpeechStarted", "SpeechStopped"]
    starts = [a for a in actions if isinstance(a, SpeechStarted)]
    stops = [a for a in actions if isinstance(a, SpeechStopped)]
    # positions count from `start`; the first speech begins after the 0.5 s of silence
    assert 1000 + 0.3 * SAMPLE_RATE <= starts[0].speech_at <= 1000 + 0.9 * SAMPLE_RATE
    assert starts[0].at == starts[0].speech_at - int(0.3 * SAMPLE_RATE)  # 300 ms of padding
    assert stops[0].at < starts[1].at
    # each utterance's audio is contiguous, starts at its padding and is the input itself
    utterance: list[Audio] = []
    for action in actions:
        if isinstance(action, SpeechStarted):
            utterance, begin = [], action.at
        elif isinstance(action, Audio):
            assert action.start == begin + sum(len(a.samples) for a in utterance)
            utterance.append(action)
            assert np.array_equal(
                action.samples, audio[action.start - 1000 : action.start - 1000 + len(action.samples)]
            )


def test_silence_makes_no_turns(vad: VoiceActivityDetector) -> None:
    detector = TurnDetector(vad, TurnDetection())
    actions = detector.feed(silence(3.0)) + detector.flush()
    assert actions == []


def test_flush_in_speech_hands_out_the_rest(vad: VoiceActivityDetector, words: np.ndarray) -> None:
    detector = TurnDetector(vad, TurnDetection())
    actions = detector.feed(words[:30000]) + detector.flush()
    assert isinstance(actions[0], SpeechStarted) and detector.speaking
    handed = sum(len(a.samples) for a in actions if isinstance(a, Audio))
    assert handed == 30000 - actions[0].at


def test_cutter_keeps_utterances_under_the_cap_and_cuts_in_a_pause(words: np.ndarray) -> None:
    cap, lookback = 5 * SAMPLE_RATE, 2 * SAMPLE_RATE
    gap_at = 4 * SAMPLE_RATE  # a pause inside the look-back window of the first utterance
    loud = np.random.default_rng(0).standard_normal(12 * SAMPLE_RATE).astype(np.float32) * 0.3
    loud[gap_at : gap_at + SAMPLE_RATE // 5] = 0.0
    cutter = Cutter(cap, lookback)
    pieces: list[Audio | Cut] = []
    for i in range(0, len(loud), 1600):
        pieces += cutter.push(Audio(loud[i : i + 1600], i))
    pieces += cutter.flush()
    cuts = [p.at for p in pieces if isinstance(p, Cut)]
    assert gap_at <= cuts[0] <= gap_at + SAMPLE_RATE // 5  # in the pause
    audio = [p for p in pieces if isinstance(p, Audio)]
    assert np.array_equal(np.concatenate([a.samples for a in audio]), loud)  # nothing lost or repeated
    lengths, length = [], 0
    for p in pieces:
        if isinstance(p, Cut):
            lengths.append(length)
            length = 0
        else:
            length += len(p.samples)
    lengths.append(length)
    assert max(lengths) <= cap and sum(lengths) == len(loud)


def test_quietest_point() -> None:
    x = np.ones(SAMPLE_RATE, np.float32)
    x[8000:10000] = 0
    assert 8000 <= quietest_point(x) <= 10000
    assert quietest_point(np.ones(10, np.float32)) == 10


def test_append_of_base64(tmp_path: Path) -> None:
    decoder = PcmDecoder(16000)
    samples = decoder.decode_base64(base64.b64encode(_pcm(np.full(100, 0.5))).decode())
    assert np.allclose(samples, 0.5, atol=1e-4)
