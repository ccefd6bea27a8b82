"""Cut a stream of 16 kHz audio into speech segments the ASR model can take one at a time.

The rules, frame by frame (a frame is 512 samples, 32 ms):

- A frame is speech when its Silero probability reaches `threshold`; once in speech, frames stay speech
  until the probability drops below `threshold - 0.15` (hysteresis, as Silero does), so a word is not
  chopped up by one uncertain frame. Every run of non-speech frames is a *pause*.
- A segment opens at the first speech frame and closes after a pause of `min_silence_ms`. Shorter
  pauses stay inside the segment, so the model hears whole sentences. Silence is therefore never sent
  to the model beyond the padding and those short pauses; audio without speech yields no segment.
- A segment never exceeds `max_segment_s` (padding included). When speech would make it longer, it is
  cut inside the longest pause it holds (the latest one on ties), so no word is cut in half. Only a
  speech run with no pause at all is cut hard, at the least speech-like frame of its second half.
- Each segment is padded by up to `speech_pad_ms` on both sides, never into its neighbours: at a cut
  inside a pause each side gets at most half of the pause; at a hard cut neither side is padded.
- A segment with less than `min_speech_ms` from its first to its last speech frame is dropped (clicks
  and coughs), unless it is a piece of a longer cut-up run.

Memory stays bounded whatever the input length: only the open segment (at most `max_segment_s`), the
trailing pause (at most `min_silence_ms`), one VAD block (~2 s) and the latest chunk are held.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np

from qasr.audio.vad import FRAME_SAMPLES, VoiceActivityDetector
from qasr.types import SAMPLE_RATE, Segment

_NEG_THRESHOLD_GAP = 0.15
"""How far below `threshold` the probability must fall to end speech (Silero's default hysteresis)."""
_FEED_SAMPLES = 1 << 16
"""Slice size `segment_audio` feeds, so a whole file is never copied at once (~4 s)."""


@dataclass(frozen=True)
class SegmentationOptions:
    """How audio is cut into segments. Defaults suit Qwen3-ASR on ordinary speech."""

    max_segment_s: float = 20.0
    """Longest segment in seconds, padding included (at least 1 s)."""
    min_silence_ms: int = 1000
    """A pause at least this long ends a segment; shorter pauses stay inside it."""
    speech_pad_ms: int = 200
    """Audio kept before the first and after the last speech frame of a segment, at most."""
    threshold: float = 0.5
    """Speech probability (0-1) at which a frame counts as speech."""
    min_speech_ms: int = 250
    """Isolated speech shorter than this is dropped as noise."""

    def __post_init__(self) -> None:
        if self.max_segment_s < 1.0:
            raise ValueError(f"max_segment_s must be at least 1 s, got {self.max_segment_s}")
        if not 0 <= self.speech_pad_ms <= self.max_segment_s * 250:
            raise ValueError(
                f"speech_pad_ms must be 0 to a quarter of max_segment_s, got {self.speech_pad_ms}"
            )
        if self.min_silence_ms <= 0 or self.min_speech_ms < 0:
            raise ValueError("min_silence_ms must be positive and min_speech_ms not negative")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be between 0 and 1, got {self.threshold}")


class SpeechSegmenter:
    """Push-based segmentation: `push(samples)` as audio arrives (a file being decoded, a live
    microphone), `finish()` at its end; each returns the `(Segment, samples)` that became final.

    Times are on the timeline of everything pushed so far; `samples` is a float32 copy of that
    stretch. Memory stays bounded (see the module docstring). One segmenter per audio stream: the VAD
    state is its own.
    """

    def __init__(self, vad: VoiceActivityDetector, options: SegmentationOptions | None = None) -> None:
        self._planner = _Planner(options or SegmentationOptions())
        self._vad = vad.stream()
        self._audio = _AudioBuffer()

    @property
    def received_s(self) -> float:
        """Seconds of audio pushed so far."""
        return self._audio.end / SAMPLE_RATE

    def push(self, chunk: np.ndarray) -> list[tuple[Segment, np.ndarray]]:
        """Add 16 kHz mono float samples in [-1, 1] (any size; copied on arrival)."""
        if chunk.ndim != 1 or not np.issubdtype(chunk.dtype, np.floating):
            raise ValueError(f"expected 1-D float mono chunks, got {chunk.dtype} of shape {chunk.shape}")
        # A copy: the caller may reuse its buffer, and a view would pin a caller's whole array.
        samples = chunk.astype(np.float32, copy=True)
        self._audio.append(samples)
        out = [_cut(self._audio, a, b) for a, b in self._planner.push(self._vad.feed(samples))]
        self._audio.drop_before(self._planner.keep_from)
        return out

    def finish(self) -> list[tuple[Segment, np.ndarray]]:
        """End of audio: the segments still open."""
        spans = [*self._planner.push(self._vad.flush()), *self._planner.finish(self._audio.end)]
        return [_cut(self._audio, a, b) for a, b in spans]


class WindowSegmenter:
    """The same interface without voice-activity detection: fixed windows of `max_segment_s`, and
    nothing gated (silence goes to the model too)."""

    def __init__(self, max_segment_s: float) -> None:
        self._window = int(max_segment_s * SAMPLE_RATE)
        self._start = 0
        self._buffer = np.zeros(0, dtype=np.float32)

    def push(self, chunk: np.ndarray) -> list[tuple[Segment, np.ndarray]]:
        self._buffer = np.concatenate([self._buffer, chunk.astype(np.float32, copy=False)])
        out = []
        while len(self._buffer) >= self._window:
            out.append(self._take(self._window))
        return out

    def finish(self) -> list[tuple[Segment, np.ndarray]]:
        return [self._take(len(self._buffer))] if len(self._buffer) else []

    def _take(self, n: int) -> tuple[Segment, np.ndarray]:
        piece, self._buffer = self._buffer[:n], self._buffer[n:]
        segment = Segment(self._start / SAMPLE_RATE, (self._start + n) / SAMPLE_RATE)
        self._start += n
        return segment, piece


Segmenter = SpeechSegmenter | WindowSegmenter
"""Either way of cutting audio: both take `push(samples)` and `finish()`."""


def segment_stream(
    chunks: Iterable[np.ndarray],
    vad: VoiceActivityDetector,
    options: SegmentationOptions | None = None,
) -> Iterator[tuple[Segment, np.ndarray]]:
    """Yield `(Segment(start_s, end_s), samples)` for each speech segment of `chunks`, as soon as it is
    final (a `SpeechSegmenter` fed from an iterable)."""
    segmenter = SpeechSegmenter(vad, options)
    for chunk in chunks:
        yield from segmenter.push(chunk)
    yield from segmenter.finish()


def segment_audio(
    samples: np.ndarray, vad: VoiceActivityDetector, options: SegmentationOptions | None = None
) -> list[tuple[Segment, np.ndarray]]:
    """All segments of in-memory 16 kHz mono float32 audio (the same pipeline as `segment_stream`)."""
    views = (samples[i : i + _FEED_SAMPLES] for i in range(0, len(samples), _FEED_SAMPLES))
    return list(segment_stream(views, vad, options))


def _cut(audio: _AudioBuffer, start: int, end: int) -> tuple[Segment, np.ndarray]:
    # The last VAD frame is zero-padded past the end of the audio; never report time beyond it.
    end = min(end, audio.end)
    return Segment(start / SAMPLE_RATE, end / SAMPLE_RATE), audio.slice(start, end)


class _Planner:
    """Turns per-frame speech probabilities into segment spans `(start, end)` in samples."""

    def __init__(self, options: SegmentationOptions) -> None:
        ms = SAMPLE_RATE // 1000
        self._threshold = options.threshold
        self._neg_threshold = max(options.threshold - _NEG_THRESHOLD_GAP, 0.01)
        self._pad = options.speech_pad_ms * ms
        self._max = int(options.max_segment_s * SAMPLE_RATE)
        self._min_silence_frames = math.ceil(options.min_silence_ms * ms / FRAME_SAMPLES)
        self._min_speech = options.min_speech_ms * ms
        self._frame = 0
        self._in_speech = False
        self._prev_end = 0
        """End sample of the last segment emitted; later segments never start before it."""
        # The open segment, if `_start` is not None: frames [_start, _speech_end) from its first to its
        # last speech frame, the pauses between them, and its probabilities (for a hard cut).
        self._start: int | None = None
        self._start_sample = 0
        self._speech_end = 0
        self._pauses: list[tuple[int, int]] = []
        self._probs: list[float] = []
        self._from_cut = False

    @property
    def keep_from(self) -> int:
        """The earliest sample a segment still to come can start at."""
        if self._start is not None:
            return self._start_sample
        return max(self._prev_end, self._frame * FRAME_SAMPLES - self._pad)

    def push(self, probs: np.ndarray) -> list[tuple[int, int]]:
        """Consume the next frames' probabilities; return the segments they complete."""
        spans: list[tuple[int, int]] = []
        for prob in probs.tolist():
            i = self._frame
            self._frame += 1
            speech = prob >= self._threshold or (self._in_speech and prob >= self._neg_threshold)
            self._in_speech = speech
            if speech and self._start is None:
                self._open(i, max(self._prev_end, i * FRAME_SAMPLES - self._pad), from_cut=False)
            if self._start is None:
                continue
            self._probs.append(prob)
            if speech:
                spans += self._on_speech(i)
            elif self._frame - self._speech_end >= self._min_silence_frames:
                spans += self._close(
                    min(self._speech_end * FRAME_SAMPLES + self._pad, self._frame * FRAME_SAMPLES)
                )
        return spans

    def finish(self, total_samples: int) -> list[tuple[int, int]]:
        """End of audio: close the open segment, if any."""
        if self._start is None:
            return []
        return self._close(min(self._speech_end * FRAME_SAMPLES + self._pad, total_samples))

    def _on_speech(self, i: int) -> list[tuple[int, int]]:
        """Frame `i` is speech in the open segment: extend it, and cut it if it grew too long."""
        assert self._start is not None
        if self._start < i and self._speech_end < i:
            self._pauses.append((self._speech_end, i))
        self._speech_end = i + 1
        if (self._speech_end - self._start) * FRAME_SAMPLES + 2 * self._pad <= self._max:
            return []
        return [self._cut_at_pause() if self._pauses else self._cut_hard(i)]

    def _open(self, frame: int, start_sample: int, *, from_cut: bool) -> None:
        self._start = frame
        self._start_sample = start_sample
        self._from_cut = from_cut

    def _cut_at_pause(self) -> tuple[int, int]:
        """Split the open segment inside its longest pause; the part after it stays open."""
        assert self._start is not None
        a, b = max(self._pauses, key=lambda p: (p[1] - p[0], p[0]))
        end = min(a * FRAME_SAMPLES + self._pad, (a + b) * FRAME_SAMPLES // 2)
        span = (self._start_sample, end)
        self._probs = self._probs[b - self._start :]
        self._pauses = [p for p in self._pauses if p[0] >= b]
        self._prev_end = end
        self._open(b, max(end, b * FRAME_SAMPLES - self._pad), from_cut=True)
        return span

    def _cut_hard(self, i: int) -> tuple[int, int]:
        """Split a pause-free run at its least speech-like frame in the second half, unpadded."""
        assert self._start is not None
        first = self._start + max(1, (i - self._start) // 2)
        window = self._probs[first - self._start : i - self._start + 1]
        cut = first + min(range(len(window)), key=lambda k: (window[k], -k))
        end = cut * FRAME_SAMPLES
        span = (self._start_sample, end)
        self._probs = self._probs[cut - self._start :]
        self._prev_end = end
        self._open(cut, end, from_cut=True)
        return span

    def _close(self, end: int) -> list[tuple[int, int]]:
        assert self._start is not None
        speech_samples = (self._speech_end - self._start) * FRAME_SAMPLES
        span = (self._start_sample, end)
        keep = self._from_cut or speech_samples >= self._min_speech
        self._start = None
        self._pauses = []
        self._probs = []
        if not keep:
            return []
        self._prev_end = end
        return [span]


class _AudioBuffer:
    """The tail of a stream, as the chunks it came in (appending never copies what is held)."""

    def __init__(self) -> None:
        self._chunks: deque[np.ndarray] = deque()
        self._start = 0
        self.end = 0
        """Samples received so far (the end of the timeline)."""

    def append(self, chunk: np.ndarray) -> None:
        if chunk.size:
            self._chunks.append(chunk)
            self.end += chunk.size

    def drop_before(self, sample: int) -> None:
        """Forget whole chunks that end at or before `sample`."""
        while self._chunks and self._start + self._chunks[0].size <= sample:
            self._start += self._chunks.popleft().size

    def slice(self, start: int, end: int) -> np.ndarray:
        """A copy of samples `[start, end)`; they must not have been dropped."""
        if start < self._start:
            raise RuntimeError(f"sample {start} was already dropped (buffer starts at {self._start})")
        out = np.empty(max(0, end - start), np.float32)
        offset = self._start
        for chunk in self._chunks:
            lo, hi = max(start, offset), min(end, offset + chunk.size)
            if lo < hi:
                out[lo - start : hi - start] = chunk[lo - offset : hi - offset]
            offset += chunk.size
            if offset >= end:
                break
        return out
