"""Channel selection in the decoder (`AudioStream(channel=...)`): the async file API's `channel_id`."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from qasr.audio.decode import AudioStream, decode_audio
from qasr.errors import AudioError


@pytest.fixture
def stereo(tmp_path: Path) -> Path:
    """1 s at 16 kHz: a 440 Hz tone at half scale on the left, silence on the right."""
    t = np.arange(16_000) / 16_000
    left = (0.5 * np.sin(2 * np.pi * 440 * t) * 32767).astype("<i2")
    path = tmp_path / "stereo.wav"
    with wave.open(str(path), "wb") as out:
        out.setnchannels(2)
        out.setsampwidth(2)
        out.setframerate(16_000)
        out.writeframes(np.stack([left, np.zeros_like(left)], axis=1).tobytes())
    return path


def _rms(samples: np.ndarray) -> float:
    return float(np.sqrt(np.mean(samples.astype(np.float64) ** 2)))


def test_each_channel_alone(stereo: Path) -> None:
    with AudioStream(stereo, channel=0) as stream:
        left = stream.read()
    with AudioStream(stereo, channel=1) as stream:
        right = stream.read()
    mixed = decode_audio(stereo).samples
    assert len(left) == len(right) == len(mixed) == 16_000
    assert _rms(left) == pytest.approx(0.5 / np.sqrt(2), rel=0.01)
    assert _rms(right) == 0.0
    assert _rms(mixed) == pytest.approx(_rms(left) / 2, rel=0.01)  # the default averages channels


def test_missing_channel_is_an_audio_error(stereo: Path) -> None:
    with (
        AudioStream(stereo, channel=2) as stream,
        pytest.raises(AudioError, match="2 channels; there is no channel 2"),
    ):
        stream.read()
    with pytest.raises(ValueError):
        AudioStream(stereo, channel=-1)


def test_chunks_stay_bounded(stereo: Path) -> None:
    with AudioStream(stereo, channel=0) as stream:
        sizes = [len(c) for c in stream.chunks(0.25)]
    assert sizes == [4000] * 4
