"""The audio side of a live session: PCM in, 16 kHz float32 out, and where utterances begin and end.

- `PcmDecoder`: base64 16-bit little-endian mono PCM at 16 or 8 kHz -> 16 kHz float32; 8 kHz is
  upsampled by a stateful polyphase filter, so chunked input gives exactly the whole-input result.
- `TurnDetector`: server VAD (the cloud's `turn_detection`) on Silero probabilities, 32 ms frames
  read 256 ms at a time (`LiveVadStream`), so the end of speech is known within ~0.3 s plus the
  configured silence.
- `Cutter`: keeps an utterance under the recognizer's length cap, cutting at the quietest point
  of the last few seconds (issue 16: "closed by VAD, commit, or a length cap").

Positions are in samples of 16 kHz audio counted from the start of the session.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass

import numpy as np

from qasr.api.realtime.protocol import EventError, TurnDetection
from qasr.audio.vad import FRAME_SAMPLES, VadStream, VoiceActivityDetector
from qasr.types import SAMPLE_RATE

_HALF_TAPS = 32
"""Taps per phase of the 2x upsampler (a 64-tap windowed sinc): flat to ~3.6 kHz, -60 dB past 4 kHz."""
LIVE_VAD_BLOCK_FRAMES = 8
"""Frames per Silero call in a live session (256 ms): the file pipeline's 2 s blocks would add up to
2 s to the moment the end of speech is seen."""
_NEGATIVE_MARGIN = 0.15
"""Speech ends below `threshold - margin` (Silero's own hysteresis), so a wavering frame does not."""
_QUIET_WINDOW_S = 0.1
_QUIET_HOP_S = 0.01


def _upsample_filter() -> tuple[np.ndarray, np.ndarray]:
    taps = 2 * _HALF_TAPS
    n = np.arange(taps) - (taps - 1) / 2
    h = 0.5 * np.sinc(0.5 * n) * np.kaiser(taps, 8.0)
    h *= 2.0 / h.sum()  # zero-stuffing halves the level: gain 2 keeps it
    return h[0::2].astype(np.float32), h[1::2].astype(np.float32)


_PHASES = _upsample_filter()


class PcmDecoder:
    """Base64 PCM appends -> 16 kHz float32 in [-1, 1]. An odd trailing byte waits for the next append."""

    def __init__(self, sample_rate: int) -> None:
        self.sample_rate = sample_rate
        self._odd = b""
        self._history = np.zeros(_HALF_TAPS - 1, np.float32)

    def decode_base64(self, audio: object) -> np.ndarray:
        if not isinstance(audio, str):
            raise EventError("`audio` must be a base64 string of 16-bit PCM.", param="audio")
        try:
            raw = base64.b64decode(audio, validate=True)
        except (binascii.Error, ValueError):
            raise EventError("`audio` is not valid base64.", param="audio") from None
        return self.decode(raw)

    def decode(self, raw: bytes) -> np.ndarray:
        data = self._odd + raw
        usable = len(data) - len(data) % 2
        self._odd = data[usable:]
        samples = np.frombuffer(data[:usable], dtype="<i2").astype(np.float32) / 32768.0
        return samples if self.sample_rate == SAMPLE_RATE else self._upsample(samples)

    def _upsample(self, x: np.ndarray) -> np.ndarray:
        """8 kHz -> 16 kHz: zero-stuffing and a low-pass, as two polyphase convolutions."""
        if not len(x):
            return x
        joined = np.concatenate([self._history, x])
        self._history = joined[-(_HALF_TAPS - 1) :].copy()
        out = np.empty(2 * len(x), np.float32)
        out[0::2] = np.convolve(joined, _PHASES[0], mode="valid")
        out[1::2] = np.convolve(joined, _PHASES[1], mode="valid")
        return out


class LiveVadStream(VadStream):
    """`VadStream` read in blocks of `LIVE_VAD_BLOCK_FRAMES` frames instead of ~2 s (same state and
    framing, so the same probabilities; just sooner)."""

    block_samples = LIVE_VAD_BLOCK_FRAMES * FRAME_SAMPLES

    def feed(self, samples: np.ndarray) -> np.ndarray:
        chunk = samples.astype(np.float32)
        if chunk.size:
            self._pending.append(chunk)
            self._pending_samples += chunk.size
        if self._pending_samples < self.block_samples:
            return np.zeros(0, np.float32)
        audio = np.concatenate(self._pending)
        usable = audio.size - audio.size % self.block_samples
        rest = audio[usable:].copy()
        self._pending = [rest] if rest.size else []
        self._pending_samples = rest.size
        return self._run_block(audio[:usable])

    @property
    def pending_samples(self) -> int:
        return self._pending_samples


@dataclass(frozen=True)
class Audio:
    """Audio for the open utterance, starting at `start` (session samples)."""

    samples: np.ndarray
    start: int


@dataclass(frozen=True)
class SpeechStarted:
    at: int
    """Where the utterance's audio starts (prefix padding included)."""
    speech_at: int
    """The first speech frame."""


@dataclass(frozen=True)
class SpeechStopped:
    at: int
    """The end of the last speech frame."""


Action = Audio | SpeechStarted | SpeechStopped


class TurnDetector:
    """Server VAD: audio in, `SpeechStarted` / `Audio` / `SpeechStopped` out, in order.

    Idle, only the last `prefix_padding_ms` of audio is kept. A frame at or above the threshold starts
    an utterance (with that padding); from then on every frame is the utterance's audio, until
    `silence_duration_ms` of frames below the lower threshold end it. Not thread-safe: one caller at
    a time (the session awaits each feed before the next)."""

    def __init__(self, detector: VoiceActivityDetector, config: TurnDetection, start: int = 0) -> None:
        """`start`: the session position of the first sample fed."""
        self._stream = LiveVadStream(detector)
        self._on = config.speech_probability
        self._off = max(0.01, self._on - _NEGATIVE_MARGIN)
        self._silence_frames = max(1, round(config.silence_duration_ms * SAMPLE_RATE / 1000 / FRAME_SAMPLES))
        self._padding = int(config.prefix_padding_ms * SAMPLE_RATE / 1000)
        self._unread = np.zeros(0, np.float32)  # fed but not yet classified
        self._read_end = start  # session position of the first sample not yet classified
        self._idle_tail = np.zeros(0, np.float32)  # the padding candidates while idle
        self.speaking = False
        self._quiet_run = 0

    def would_run_model(self, new_samples: int) -> bool:
        """Whether feeding `new_samples` more runs the VAD model (worth a thread)."""
        return self._stream.pending_samples + new_samples >= LiveVadStream.block_samples

    def feed(self, samples: np.ndarray) -> list[Action]:
        self._unread = np.concatenate([self._unread, samples])
        probs = self._stream.feed(samples)
        return self._classify(probs)

    def flush(self) -> list[Action]:
        """Classify what is left (the session ends): the last partial block, zero-padded."""
        return self._classify(self._stream.flush())

    def _classify(self, probs: np.ndarray) -> list[Action]:
        actions: list[Action] = []
        run_start = 0  # offset in _unread of the utterance audio not yet handed out
        for k, p in enumerate(probs):
            frame_start = k * FRAME_SAMPLES
            if not self.speaking:
                if p >= self._on:
                    self.speaking, self._quiet_run = True, 0
                    at = self._read_end + frame_start
                    pad = np.concatenate([self._idle_tail, self._unread[run_start:frame_start]])
                    pad = pad[len(pad) - min(len(pad), self._padding) :]
                    actions.append(SpeechStarted(at - len(pad), at))
                    if len(pad):
                        actions.append(Audio(pad, at - len(pad)))
                    run_start = frame_start
                continue
            self._quiet_run = self._quiet_run + 1 if p < self._off else 0
            if self._quiet_run >= self._silence_frames:
                end = frame_start + FRAME_SAMPLES
                actions.append(Audio(self._unread[run_start:end], self._read_end + run_start))
                speech_end = self._read_end + end - self._quiet_run * FRAME_SAMPLES
                actions.append(SpeechStopped(speech_end))
                self.speaking = False
                self._idle_tail = np.zeros(0, np.float32)
                run_start = end
        done = min(len(probs) * FRAME_SAMPLES, len(self._unread))  # (flush zero-pads the last frame)
        if self.speaking and done > run_start:
            actions.append(Audio(self._unread[run_start:done], self._read_end + run_start))
        elif not self.speaking and self._padding:
            tail_from = max(run_start, done - self._padding)
            self._idle_tail = np.concatenate([self._idle_tail, self._unread[tail_from:done]])[
                -self._padding :
            ]
        self._unread = self._unread[done:].copy()
        self._read_end += done
        return _merged(actions)


def _merged(actions: list[Action]) -> list[Action]:
    """Adjacent `Audio` actions joined (fewer, larger appends)."""
    out: list[Action] = []
    for action in actions:
        last = out[-1] if out else None
        if (
            isinstance(action, Audio)
            and isinstance(last, Audio)
            and last.start + len(last.samples) == action.start
        ):
            out[-1] = Audio(np.concatenate([last.samples, action.samples]), last.start)
        elif not isinstance(action, Audio) or len(action.samples):
            out.append(action)
    return out


@dataclass(frozen=True)
class Cut:
    """Close the open utterance here (the length cap) and go on with a new one."""

    at: int


class Cutter:
    """Keeps each utterance within `cap_samples`: audio passes straight through until the utterance is
    within `lookback_samples` of the cap; from there it is held, and once the cap is reached the
    utterance is cut at the quietest 100 ms of the held audio (not mid-word, where possible)."""

    def __init__(self, cap_samples: int, lookback_samples: int) -> None:
        self.cap = cap_samples
        self.lookback = min(lookback_samples, cap_samples // 2)
        self.length = 0  # samples handed to the open utterance
        self._held = np.zeros(0, np.float32)
        self._held_start = 0

    def push(self, audio: Audio) -> list[Audio | Cut]:
        out: list[Audio | Cut] = []
        samples, start = audio.samples, audio.start
        if not len(self._held):
            free = max(0, self.cap - self.lookback - self.length)
            if free:
                head = samples[:free]
                out.append(Audio(head, start))
                self.length += len(head)
                samples, start = samples[free:], start + len(head)
            self._held_start = start
        self._held = np.concatenate([self._held, samples])
        while self.length + len(self._held) >= self.cap:
            region = self._held[: self.cap - self.length]
            cut = quietest_point(region)
            out.append(Audio(self._held[:cut], self._held_start))
            out.append(Cut(self._held_start + cut))
            rest, rest_start = self._held[cut:], self._held_start + cut
            free = self.cap - self.lookback
            out.append(Audio(rest[:free], rest_start))
            self.length = len(rest[:free])
            self._held, self._held_start = rest[free:].copy(), rest_start + len(rest[:free])
        return [a for a in out if isinstance(a, Cut) or len(a.samples)]

    def flush(self) -> list[Audio | Cut]:
        """The held audio, when the utterance ends (commit, end of speech); then a fresh start."""
        held = Audio(self._held, self._held_start)
        self._held = np.zeros(0, np.float32)
        self.length = 0
        return [held] if len(held.samples) else []


def quietest_point(samples: np.ndarray) -> int:
    """The centre of the quietest 100 ms of `samples` (mean square, 10 ms steps); never 0, so a cut
    always moves forward."""
    window = int(_QUIET_WINDOW_S * SAMPLE_RATE)
    hop = int(_QUIET_HOP_S * SAMPLE_RATE)
    if len(samples) <= window:
        return max(1, len(samples))
    power = np.cumsum(np.concatenate([[0.0], samples.astype(np.float64) ** 2]))
    starts = np.arange(0, len(samples) - window + 1, hop)
    energy = power[starts + window] - power[starts]
    best = int(starts[int(np.argmin(energy))]) + window // 2
    return max(1, best)
