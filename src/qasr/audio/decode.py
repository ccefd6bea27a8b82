"""Decode any audio FFmpeg reads into 16 kHz mono float32, within the configured limits.

One pipeline: `AudioStream` demuxes, decodes and resamples (PyAV's `AudioResampler`, i.e. FFmpeg's
libswresample) and yields the samples in chunks; `decode_audio` is that stream read to the end.
Everything here blocks: servers call it through `decode_audio_async` or in a worker thread.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, BinaryIO

import av
import av.container
import numpy as np

from qasr.errors import (
    AudioDecodeError,
    AudioError,
    AudioTooLarge,
    AudioTooLong,
    EmptyAudio,
    ForbiddenSource,
    NoAudioStream,
    SourceError,
    format_value,
)
from qasr.types import SAMPLE_RATE, Audio, AudioInfo, AudioLimits

NO_LIMITS = AudioLimits()
"""The default for library and CLI use: no byte or duration limit."""

DECLARED_DURATION_MARGIN = 1.1
"""Refuse before decoding only when the container declares more than this times the limit: declared
durations can be estimates (e.g. from the bitrate), and a wrong refusal is worse than a short decode."""

PADDING_GRACE_S = 0.5
"""Decoded audio may run this far past the duration limit: encoders pad the last frame and add priming
samples, so a clip cut at exactly the limit decodes a little longer."""

_RESAMPLER_OPTIONS = {"rematrix_maxval": "1.0"}
"""libswresample's default downmix adds channels at -3 dB (stereo -> mono peaks at 1.41x, 5.1 at ~3.4x);
a maximum of 1.0 normalises the matrix so mono is the average of the channels, as the cloud service does."""

_MAX_REASON_CHARS = 80

MAX_SAMPLE_RATE_HZ = 1_536_000
"""Highest sample rate decoded: twice the highest rate audio interfaces record (768 kHz). Only a forged
header claims more, and near 2**31 Hz FFmpeg's resampler asks for gigabytes (issue 13)."""


class _NestedOpenRefused(Exception):
    """Raised from PyAV's `io_open` hook when a demuxer tries to open another file or URL."""


def decode_audio(data: bytes | Path, limits: AudioLimits = NO_LIMITS) -> Audio:
    """Decode a whole input to 16 kHz mono float32 with what was learned about the original.

    Blocks for as long as decoding takes: never call it on an event loop (use `decode_audio_async`).
    Raises `AudioTooLarge`, `AudioTooLong`, `AudioDecodeError`, `NoAudioStream`, `EmptyAudio`,
    `SourceError` (a path that does not exist) or `ForbiddenSource` (a playlist naming other files).
    """
    _refuse_on_event_loop("decode_audio")
    with AudioStream(data, limits) as stream:
        samples = stream.read()
        return Audio(samples=samples, info=stream.info)


async def decode_audio_async(data: bytes | Path, limits: AudioLimits = NO_LIMITS) -> Audio:
    """`decode_audio` in a worker thread, so the event loop keeps serving while FFmpeg works."""
    return await asyncio.to_thread(decode_audio, data, limits)


class AudioStream:
    """One opened input, decoded lazily into 16 kHz mono float32 chunks with bounded memory.

    Opening checks the byte limit, finds the audio stream and refuses a declared duration clearly over
    the limit; `chunks()` then decodes and stops as soon as the decoded audio passes the limit. Use it as
    a context manager (or call `close`). Blocking, like `decode_audio`.
    """

    container: str
    """FFmpeg's demuxer name, e.g. `wav`, `mp3`, `mov,mp4,m4a,3gp,3g2,mj2`."""
    codec: str
    """FFmpeg's codec name of the audio stream, e.g. `mp3`, `aac`, `pcm_s16le`."""
    sample_rate: int
    """Sample rate of the original audio stream in Hz."""
    channels: int
    """Channel count of the original audio stream."""
    declared_duration_s: float | None
    """Duration the container declares (may be an estimate), or None when it declares none."""

    def __init__(
        self, data: bytes | Path, limits: AudioLimits = NO_LIMITS, *, channel: int | None = None
    ) -> None:
        """`channel`: decode only that channel (0-based) of a multi-channel input (the async file API's
        `channel_id`); None: the average of all channels. A channel the input lacks is `AudioError`."""
        _refuse_on_event_loop("AudioStream")
        if channel is not None and channel < 0:
            raise ValueError(f"channel must be 0 or more, got {channel}")
        self._limits = limits
        self._channel = channel
        self._decoded = 0
        self._started = False
        self._closed = False
        # Held while FFmpeg reads or decodes a packet, so that `close` from another thread (a cancelled
        # request) waits for it instead of freeing the demuxer under it.
        self._lock = threading.Lock()
        self._file = _open_input(data, limits)
        try:
            self._input = _open_container(self._file)
            self._stream = _audio_stream(self._input)
        except BaseException:
            self._file.close()
            raise
        try:
            self._describe()
            _check_declared_duration(self.declared_duration_s, limits)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> AudioStream:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Release the demuxer, the decoder and the input; safe to call from another thread while reading."""
        with self._lock:
            self._closed = True
            self._input.close()
            self._file.close()

    @property
    def decoded_s(self) -> float:
        """Seconds of 16 kHz audio decoded so far."""
        return self._decoded / SAMPLE_RATE

    @property
    def info(self) -> AudioInfo:
        """What is known about the original, with the duration decoded so far."""
        return AudioInfo(
            duration_s=self.decoded_s,
            container=self.container,
            codec=self.codec,
            sample_rate=self.sample_rate,
            channels=self.channels,
        )

    def chunks(self, chunk_s: float = 30.0) -> Iterator[np.ndarray]:
        """Yield the audio as float32 arrays of `chunk_s` seconds at 16 kHz (the last one shorter).

        Raises `AudioTooLong` as soon as the limit is passed, `EmptyAudio` or `AudioDecodeError` at the
        end when no audio came out. The stream can be read only once.
        """
        if chunk_s <= 0:
            raise ValueError(f"chunk_s must be positive, got {chunk_s}")
        size = max(1, round(chunk_s * SAMPLE_RATE))
        pending: list[np.ndarray] = []
        buffered = 0
        for block in self._samples():
            pending.append(block)
            buffered += len(block)
            while buffered >= size:
                merged = np.concatenate(pending)
                yield merged[:size]
                pending = [merged[size:]]
                buffered -= size
        if buffered:
            yield np.concatenate(pending)

    def read(self) -> np.ndarray:
        """Decode everything left and return it as one float32 array at 16 kHz."""
        blocks = list(self._samples())
        return np.concatenate(blocks) if blocks else np.zeros(0, dtype=np.float32)

    # --- the pipeline ----------------------------------------------------------------------------

    def _samples(self) -> Iterator[np.ndarray]:
        """Resampled blocks in order, checked against the duration limit; the one pipeline."""
        _refuse_on_event_loop("AudioStream")
        if self._started:
            raise RuntimeError("an AudioStream can be read only once")
        self._started = True
        resampler = _Resampler(self._channel)
        bad_packets = 0
        for frame in self._frames():
            if frame is None:
                bad_packets += 1
                continue
            if not self.sample_rate:  # the probe could not tell; the first decoded frame can
                self.sample_rate, self.channels = frame.sample_rate, frame.layout.nb_channels
            yield from map(self._count, resampler.push(frame))
        yield from map(self._count, resampler.flush())
        if self._decoded == 0:
            raise _nothing_decoded(bad_packets)

    def _frames(self) -> Iterator[av.AudioFrame | None]:
        """Decoded frames; None for a packet the decoder rejected (skipped, as the ffmpeg tool does)."""
        packets = self._input.demux(self._stream)
        while True:
            with self._lock:  # never held across a yield
                if self._closed:
                    raise RuntimeError("the AudioStream was closed while it was being read")
                frames = self._next_frames(packets)
            if frames is None:
                return
            yield from frames

    def _next_frames(self, packets: Iterator[av.Packet[Any]]) -> list[av.AudioFrame | None] | None:
        """The frames of the next packet (often none, as decoders buffer), [None] when the decoder
        rejects it, or None at the end of the input."""
        try:
            packet = next(packets, None)
        except _NestedOpenRefused as exc:
            raise _nested_open_error() from exc
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(_unreadable_message("the file is corrupt or truncated", exc)) from exc
        if packet is None:
            return None
        try:
            return list(self._stream.decode(packet))
        except av.error.FFmpegError:
            return [None]

    def _count(self, block: np.ndarray) -> np.ndarray:
        self._decoded += len(block)
        limit_s = self._limits.max_duration_s
        if limit_s is not None and self._decoded > (limit_s + PADDING_GRACE_S) * SAMPLE_RATE:
            raise AudioTooLong(
                f"Audio is longer than {format_duration(limit_s)}; qasr accepts at most "
                f"{format_duration(limit_s)}. Trim it or split it into shorter files."
            )
        return block

    def _describe(self) -> None:
        context = self._stream.codec_context
        self.container = self._input.format.name
        self.codec = context.codec.canonical_name
        self.sample_rate = int(context.sample_rate or 0)
        self.channels = int(context.layout.nb_channels or 0)
        self.declared_duration_s = _declared_duration(self._input, self._stream)


class _Resampler:
    """PyAV's `AudioResampler` to 16 kHz mono float32, rebuilt when the input format changes mid-stream
    (chained Ogg streams and some broadcasts switch sample rate or channels; one resampler cannot)."""

    def __init__(self, channel: int | None = None) -> None:
        self._channel = channel
        """Keep only this channel of every frame (before resampling); None: downmix them all."""
        self._resampler: av.AudioResampler | None = None
        self._source: tuple[str, str, int] | None = None
        self._averaging = False
        """The source's channels are averaged to mono here, before the resampler."""

    def push(self, frame: av.AudioFrame) -> Iterator[np.ndarray]:
        if not 0 < frame.sample_rate <= MAX_SAMPLE_RATE_HZ:
            raise AudioDecodeError(
                f"The audio's sample rate of {frame.sample_rate} Hz is not one qasr can read "
                f"(at most {MAX_SAMPLE_RATE_HZ} Hz); the file's header is damaged or forged."
            )
        if self._channel is not None:
            frame = _select(frame, self._channel)
        source = (frame.format.name, frame.layout.name, frame.sample_rate)
        resampler = self._resampler
        if resampler is None or source != self._source:
            yield from self.flush()
            resampler = self._resampler = _mono_resampler()
            self._source = source
            self._averaging = False
        # Timestamps restart in chained streams and may jump in damaged files; the samples are what count.
        frame.pts = None
        if not self._averaging:
            try:
                blocks = resampler.resample(frame)
            except av.error.FFmpegError:
                # libswresample has no downmix for some channel counts whose speaker order is unknown
                # (a plain WAV of 9, 11, 13, 17 or more channels) and fails on the first frame: such
                # channels are averaged here instead, the mix its normalised matrix gives (issue 13).
                resampler = self._resampler = _mono_resampler()
                self._averaging = True
            else:
                yield from _arrays(blocks)
                return
        try:
            blocks = resampler.resample(_average(frame))
        except av.error.FFmpegError as exc:
            raise AudioDecodeError(_unreadable_message("its samples cannot be converted", exc)) from exc
        yield from _arrays(blocks)

    def flush(self) -> Iterator[np.ndarray]:
        if self._resampler is not None:
            yield from _arrays(self._resampler.resample(None))
        self._resampler = None
        self._source = None


def _mono_resampler() -> av.AudioResampler:
    return av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE, options=_RESAMPLER_OPTIONS)


def _average(frame: av.AudioFrame) -> av.AudioFrame:
    """`frame` as one float32 channel, the mean of its channels."""
    samples = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        samples = samples.reshape(-1, frame.layout.nb_channels).T
    mono = _full_scale(samples).mean(axis=0, dtype=np.float32)
    averaged = av.AudioFrame.from_ndarray(np.ascontiguousarray(mono[None, :]), format="flt", layout="mono")
    averaged.sample_rate = frame.sample_rate
    return averaged


def _select(frame: av.AudioFrame, channel: int) -> av.AudioFrame:
    """One channel of `frame` as a float32 mono frame."""
    channels = frame.layout.nb_channels
    if channel >= channels:
        raise AudioError(
            f"The audio has {channels} channel{'s' if channels != 1 else ''}; there is no channel "
            f"{channel} (channel ids start at 0)."
        )
    samples = frame.to_ndarray()
    if not frame.format.is_planar:  # packed: one row of interleaved samples
        samples = samples.reshape(-1, channels).T
    picked = np.ascontiguousarray(_full_scale(samples[channel : channel + 1]))
    mono = av.AudioFrame.from_ndarray(picked, format="flt", layout="mono")
    mono.sample_rate = frame.sample_rate
    return mono


def _full_scale(samples: np.ndarray) -> np.ndarray:
    """PCM samples as float32 in [-1, 1]: 8-bit PCM is unsigned around 128, wider PCM signed."""
    if samples.dtype.kind == "f":
        return samples.astype(np.float32, copy=False)
    if samples.dtype.kind == "u":
        return (samples.astype(np.float32) - 128.0) / 128.0
    return samples.astype(np.float32) / float(1 << (8 * samples.dtype.itemsize - 1))


def _arrays(frames: list[av.AudioFrame]) -> Iterator[np.ndarray]:
    for frame in frames:
        samples = frame.to_ndarray().reshape(-1)
        if len(samples):
            # Float decoders and the resampling filter can overshoot full scale slightly.
            yield np.clip(samples, -1.0, 1.0).astype(np.float32, copy=False)


# --- opening ---------------------------------------------------------------------------------------


def _open_input(data: bytes | Path, limits: AudioLimits) -> BinaryIO:
    """A file object over the input, after the byte limit and emptiness checks."""
    if isinstance(data, Path):
        try:
            file: BinaryIO = data.open("rb")
            size = _file_size(file)
        except FileNotFoundError:
            raise SourceError(f"Audio file not found: {format_value(data)}.") from None
        except IsADirectoryError:
            raise SourceError(f"{format_value(data)} is a directory, not an audio file.") from None
        except OSError as exc:
            raise SourceError(f"Cannot read the audio file {format_value(data)}: {exc.strerror}.") from None
    else:
        file, size = io.BytesIO(data), len(data)
    try:
        if size == 0:
            raise EmptyAudio("The audio is empty (0 bytes); send a file that contains a recording.")
        check_size(size, limits)
    except BaseException:
        file.close()
        raise
    return file


def _file_size(file: BinaryIO) -> int:
    size = file.seek(0, io.SEEK_END)
    file.seek(0)
    return size


def _open_container(file: BinaryIO) -> av.container.InputContainer:
    # FFmpeg reads only the bytes given: the input is a file object (never a URL or path), every
    # protocol is off the whitelist ("none" names no protocol) and PyAV's `io_open` hook refuses, so an
    # HLS playlist, a concat script or a reference movie cannot reach other files or network hosts (SSRF).
    # Both are needed: the concat demuxer opens its entries without the hook, HLS through it.
    try:
        return av.open(
            file,
            mode="r",
            options={"protocol_whitelist": "none"},
            io_open=_refuse_nested_open,
            metadata_errors="replace",
        )
    except _NestedOpenRefused as exc:
        raise _nested_open_error() from exc
    except av.error.FFmpegError as exc:
        raise AudioDecodeError(
            _unreadable_message("it is corrupt, truncated, or another kind of file", exc)
        ) from exc


def _refuse_nested_open(url: str, flags: int, options: dict[str, str]) -> Any:
    raise _NestedOpenRefused(url)


def _nested_open_error() -> ForbiddenSource:
    return ForbiddenSource(
        "The file is a playlist or refers to other files or URLs, which qasr does not follow; "
        "send the audio file itself."
    )


def _audio_stream(container: av.container.InputContainer) -> av.AudioStream:
    # best() skips an audio stream whose parameters the probe could not read (a damaged file); decoding
    # it still tells "corrupt" apart from "no audio at all".
    stream = container.streams.best("audio") or next(iter(container.streams.audio), None)
    if not isinstance(stream, av.AudioStream):
        container.close()
        raise NoAudioStream(
            f"The file ({container.format.name}) has no audio track; send a recording or a video with sound."
        )
    if stream.codec_context is None:  # a WAV header with 0 bits per sample, or an unknown format tag
        container.close()
        raise AudioDecodeError(
            f"The data is not audio qasr can read: the audio track of the file ({container.format.name}) "
            "has no codec FFmpeg knows (its header is damaged, or it uses an unsupported codec)."
        )
    return stream


def _declared_duration(container: av.container.InputContainer, stream: av.AudioStream) -> float | None:
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / av.time_base
    return None


def _check_declared_duration(declared_s: float | None, limits: AudioLimits) -> None:
    limit_s = limits.max_duration_s
    if declared_s is None or limit_s is None:
        return
    if declared_s > limit_s * DECLARED_DURATION_MARGIN + PADDING_GRACE_S:
        raise AudioTooLong(
            f"Audio is {format_duration(declared_s)} long; qasr accepts at most "
            f"{format_duration(limit_s)}. Trim it or split it into shorter files."
        )


def _nothing_decoded(bad_packets: int) -> AudioDecodeError | EmptyAudio:
    if bad_packets:
        return AudioDecodeError(
            "The data is not audio qasr can read: the decoder rejected every packet "
            "(the file is corrupt or another kind of file)."
        )
    return EmptyAudio("The file contains no audio samples; send a recording that is not empty.")


def _unreadable_message(why: str, exc: av.error.FFmpegError) -> str:
    reason = (exc.strerror or type(exc).__name__)[:_MAX_REASON_CHARS]
    return f"The data is not audio qasr can read: {why} (FFmpeg: {reason})."


def _refuse_on_event_loop(what: str) -> None:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return
    raise RuntimeError(f"{what} blocks while decoding; run it in a worker thread (see decode_audio_async)")


# --- limits and user-facing numbers -----------------------------------------------------------------


def check_size(n_bytes: int, limits: AudioLimits) -> None:
    """Raise `AudioTooLarge` when `n_bytes` is over `limits.max_bytes`."""
    if limits.max_bytes is not None and n_bytes > limits.max_bytes:
        raise AudioTooLarge(
            f"Audio is {format_bytes(n_bytes)}; qasr accepts at most {format_bytes(limits.max_bytes)}."
        )


def format_duration(seconds: float) -> str:
    """`45 seconds`, `7.5 minutes`, `1 minute`, `2 hours`: a duration as a user reads it."""
    if seconds < 60:
        return _plural(seconds, "second")
    if seconds < 3600:
        return _plural(seconds / 60, "minute")
    return _plural(seconds / 3600, "hour")


def format_bytes(n_bytes: int) -> str:
    """`512 bytes`, `3.5 KB`, `10 MB` (binary units, as the size limits are configured)."""
    if n_bytes < 1024:
        return _plural(n_bytes, "byte")
    if n_bytes < 1024 * 1024:
        return f"{_number(n_bytes / 1024)} KB"
    return f"{_number(n_bytes / (1024 * 1024))} MB"


def _plural(value: float, unit: str) -> str:
    text = _number(value)
    return f"{text} {unit}" if text == "1" else f"{text} {unit}s"


def _number(value: float) -> str:
    return f"{value:.1f}".removesuffix(".0")
