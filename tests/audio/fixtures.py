"""Audio made during the test run with PyAV's own encoders, so no binary fixtures live in the repo."""

from __future__ import annotations

import io
import struct
from dataclasses import dataclass
from fractions import Fraction

import av
import av.container
import numpy as np

VIDEO_SIZE = 32
"""Width and height of the tiny video track in the container fixtures (cheap to encode)."""
VIDEO_FPS = 5
FADE_S = 0.01
"""Fade in and out, so lossy encoders do not overshoot on a hard edge at the ends."""


@dataclass(frozen=True)
class Clip:
    """One container/codec combination to encode."""

    container: str
    """Muxer name given to PyAV (`wav`, `ipod`, `matroska`, ...)."""
    codec: str
    """Audio encoder name (`pcm_s16le`, `libmp3lame`, ...)."""
    rate: int = 44_100
    channels: int = 1
    video: str | None = None
    """Video encoder for a video track beside the audio, or None for an audio-only file."""
    bit_rate: int | None = None
    """Audio bit rate in bits per second, for encoders that need one (wmav2) or to keep files small."""


def tone(freq_hz: float, seconds: float, rate: int, channels: int = 1, amplitude: float = 0.5) -> np.ndarray:
    """A sine tone, shape (channels, samples), float32. Channel k carries it at level 1 - k/2 (stereo:
    1.0 and 0.5), so a downmix by averaging has a known amplitude."""
    t = np.arange(round(seconds * rate)) / rate
    envelope = np.clip(np.minimum(t, t[-1] - t) / FADE_S, 0.0, 1.0)
    wave = amplitude * envelope * np.sin(2 * np.pi * freq_hz * t)
    levels = np.linspace(1.0, 0.5, channels)[:, None]
    return (levels * wave[None, :]).astype(np.float32)


def encode(samples: np.ndarray, rate: int, clip: Clip) -> bytes:
    """Encode float32 (channels, n) samples as `clip` into an in-memory file."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format=clip.container) as out:
        audio = out.add_stream(clip.codec, rate=rate, layout="mono" if clip.channels == 1 else "stereo")
        assert isinstance(audio, av.AudioStream)
        if clip.bit_rate is not None:
            audio.codec_context.bit_rate = clip.bit_rate
        if audio.codec_context.codec.experimental:
            audio.codec_context.options = {"strict": "experimental"}
        video = _add_video(out, clip.video) if clip.video else None
        _write_audio(out, audio, samples, rate)
        if video is not None:
            _write_video(out, video, samples.shape[1] / rate)
    return buffer.getvalue()


def encode_tone(clip: Clip, seconds: float = 1.0, freq_hz: float = 440.0) -> bytes:
    """A `seconds`-long tone encoded as `clip`."""
    return encode(tone(freq_hz, seconds, clip.rate, clip.channels), clip.rate, clip)


def encode_silence(clip: Clip, seconds: float) -> bytes:
    """`seconds` of digital silence encoded as `clip` (cheap for lossless codecs at a low rate)."""
    return encode(np.zeros((clip.channels, round(seconds * clip.rate)), dtype=np.float32), clip.rate, clip)


def _write_audio(
    out: av.container.OutputContainer, stream: av.AudioStream, samples: np.ndarray, rate: int
) -> None:
    layout = "mono" if samples.shape[0] == 1 else "stereo"
    step = 4096
    for start in range(0, samples.shape[1], step):
        block = np.ascontiguousarray(samples[:, start : start + step])
        frame = av.AudioFrame.from_ndarray(block, format="fltp", layout=layout)
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def _add_video(out: av.container.OutputContainer, codec: str) -> av.VideoStream:
    stream = out.add_stream(codec, rate=VIDEO_FPS)
    assert isinstance(stream, av.VideoStream)
    stream.width = VIDEO_SIZE
    stream.height = VIDEO_SIZE
    stream.pix_fmt = "yuvj420p" if codec == "mjpeg" else "yuv420p"
    return stream


def _write_video(out: av.container.OutputContainer, stream: av.VideoStream, seconds: float) -> None:
    for index in range(max(1, round(seconds * VIDEO_FPS))):
        pixels = np.full((VIDEO_SIZE, VIDEO_SIZE, 3), (index * 40) % 256, dtype=np.uint8)
        frame = av.VideoFrame.from_ndarray(pixels, format="rgb24").reformat(format=stream.pix_fmt)
        frame.pts = index
        out.mux(stream.encode(frame))
    out.mux(stream.encode(None))


def video_only_mp4(seconds: float = 1.0) -> bytes:
    """An mp4 with one video track and no audio."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as out:
        _write_video(out, _add_video(out, "mpeg4"), seconds)
    return buffer.getvalue()


def png_image() -> bytes:
    """A small PNG picture."""
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="image2pipe") as out:
        stream = out.add_stream("png", rate=1)
        assert isinstance(stream, av.VideoStream)
        stream.width = stream.height = VIDEO_SIZE
        stream.pix_fmt = "rgb24"
        pixels = np.zeros((VIDEO_SIZE, VIDEO_SIZE, 3), dtype=np.uint8)
        out.mux(stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def wav_header(rate: int, n_samples: int) -> bytes:
    """A 16-bit mono PCM WAV header declaring `n_samples` samples."""
    data_size = n_samples * 2
    fmt = struct.pack("<HHIIHH", 1, 1, rate, rate * 2, 2, 16)
    riff_size = 4 + 8 + len(fmt) + 8 + data_size
    return (
        b"RIFF"
        + struct.pack("<I", riff_size)
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + (b"data" + struct.pack("<I", data_size))
    )


def silent_wav(rate: int, seconds: float) -> bytes:
    """A silent 16-bit mono WAV built by hand: no encoder runs, so even an hour of it is instant."""
    n = round(rate * seconds)
    return wav_header(rate, n) + bytes(n * 2)


def scramble_adts(data: bytes, seed: int = 0) -> bytes:
    """ADTS AAC with every frame header kept and every payload replaced by noise: a damaged file that
    still demuxes, frame by frame, but that no packet of decodes."""
    out = bytearray(data)
    rng = np.random.default_rng(seed)
    start = 0
    while start + 7 <= len(out):
        length = ((out[start + 3] & 0x03) << 11) | (out[start + 4] << 3) | (out[start + 5] >> 5)
        out[start + 7 : start + length] = rng.bytes(length - 7)
        start += length
    return bytes(out)


def peak_hz(samples: np.ndarray, rate: int) -> float:
    """Frequency of the strongest component of a mono signal."""
    spectrum = np.abs(np.fft.rfft(samples * np.hanning(len(samples))))
    return float(np.argmax(spectrum)) * rate / len(samples)


def rms(samples: np.ndarray) -> float:
    """Root mean square level."""
    return float(np.sqrt(np.mean(np.square(samples, dtype=np.float64))))
