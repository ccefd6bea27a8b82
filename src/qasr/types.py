"""Frozen domain types shared by the pipeline, the engine and the API dialects.

Times are in seconds (`_s`), sizes in bytes, audio is 16 kHz mono float32 in [-1, 1].
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np

SAMPLE_RATE = 16_000
"""The model's sample rate; every decoded `Audio` is at this rate."""


@dataclass(frozen=True)
class AudioInfo:
    """What the decoder learned about the input before resampling."""

    duration_s: float
    """Duration of the decoded audio (after any trimming by limits)."""
    container: str
    """FFmpeg's container (demuxer) name, e.g. `mp3`, `mov,mp4,m4a,3gp,3g2,mj2`, `wav`."""
    codec: str
    """FFmpeg's codec name of the audio stream, e.g. `mp3`, `aac`, `pcm_s16le`, `opus`."""
    sample_rate: int
    """Sample rate of the original audio stream in Hz."""
    channels: int
    """Channel count of the original audio stream."""


@dataclass(frozen=True, eq=False)
class Audio:
    """Decoded audio: 16 kHz mono float32 samples plus what we know about the original."""

    samples: np.ndarray
    info: AudioInfo

    @property
    def duration_s(self) -> float:
        return len(self.samples) / SAMPLE_RATE


@dataclass(frozen=True)
class AudioLimits:
    """Limits enforced while reading and decoding. `None` means no limit (library and CLI use)."""

    max_bytes: int | None = None
    """Largest accepted encoded input (upload, download, file or data URI) in bytes."""
    max_duration_s: float | None = None
    """Longest accepted audio; decoding stops as soon as this is passed."""


@dataclass(frozen=True)
class TranscribeOptions:
    """What a caller asks of one transcription, whatever API it came through."""

    language: str | None = None
    """DashScope language code to force (`zh`, `en`, ...), or None to detect."""
    context: str = ""
    """Context text (hotwords, domain text) placed in the model's system turn."""
    enable_itn: bool = False
    """Apply inverse text normalization (spoken numbers to digits) for Chinese and English."""
    timestamps: Literal["none", "segment", "word"] = "none"
    """`word`: place each word in time with the forced aligner (when one is loaded and covers the
    segment's language; else segments keep segment-level times, marked as such). `segment` and `none`
    cost nothing extra: segments always carry their times."""


@dataclass(frozen=True)
class EngineRequest:
    """One model call: one clip (usually one segment of a file)."""

    samples: np.ndarray
    """16 kHz mono float32."""
    context: str = ""
    language: str | None = None
    """DashScope code to force, or None to let the model detect it."""
    prefix: str = ""
    """Transcript text the assistant turn is forced to start with; the model continues it (live
    decoding reuses the text it has settled, docs/spec/realtime.md). Needs `language`: the header
    `language X<asr_text>` is written before it. The result's text includes it; deltas do not."""
    max_new_tokens: int | None = None
    """A tighter cap on the tokens generated for this request than the engine's length-based budget
    (live partial steps decode only a few tokens past their prefix); None: the engine's budget."""
    encoder_cache: object | None = None
    """A live utterance's engine-specific cache (`Qwen3ASREngine.new_window_cache`): the encoder outputs
    of its completed windows and the decoder's keys/values of the prompt up to them. The engine
    encodes and prefills only what follows, and adds what became stable to it. Its partial steps and
    its final pass the same one; it is freed with the utterance."""
    draft: str = ""
    """The likely output (the assistant's text after the prompt, header included when the language is
    not forced), e.g. a live utterance's last partial result for its final: the engine checks all of
    it in one pass and decodes token by token only from the first token it would not have written.
    The result is what greedy decoding gives without it (up to summation order); a wrong draft costs
    its length in prefill, a right one saves a decoding step per token."""


@dataclass(frozen=True)
class EngineResult:
    """What the engine made of one `EngineRequest`."""

    text: str
    """Transcript text with the `language X<asr_text>` header removed."""
    language: str | None
    """Detected (or forced) language as a DashScope code; None when the model heard no speech."""
    audio_tokens: int
    """Audio placeholder tokens fed to the model (13 per second)."""
    context_tokens: int
    """Tokens of the context text in the system turn."""
    output_tokens: int
    """Tokens the model generated, the header included."""
    finish_reason: str = "stop"
    """`stop` (end token), `length` (max_new_tokens reached) or `repetition` (a loop was cut)."""


@dataclass(frozen=True)
class Delta:
    """A piece of streamed text for one request. `language` is set once it is known."""

    text: str
    language: str | None = None
    output_tokens: int = 0
    """Tokens the model has generated so far for the request (or transcription) this delta belongs
    to, counted where the model runs: the APIs report usage from it without re-tokenizing text."""


@dataclass(frozen=True)
class Word:
    """A displayable word with its time on the original timeline (issue 14)."""

    text: str
    """The original text of the word with the punctuation that follows it (`Hello,`, `3.5%`)."""
    start_s: float
    end_s: float
    repaired: bool = False
    """The aligner gave it no time of its own (zero-length or overlapping): its span was derived from
    its neighbours'."""


WordTiming = Literal["word", "segment"]


@dataclass(frozen=True)
class Segment:
    """A stretch of the original timeline and its transcript."""

    start_s: float
    end_s: float
    text: str = ""
    language: str | None = None
    words: tuple[Word, ...] = ()
    """The text's words with their times, when the forced aligner placed them; else empty."""
    word_timing: WordTiming = "segment"
    """`word`: `words` hold aligned times. `segment`: only the segment's own times are known (no
    aligner, a language it does not cover, or word timestamps not asked for); never invented."""


@dataclass(frozen=True)
class Usage:
    """Token and audio accounting for one transcription."""

    audio_s: float = 0.0
    audio_tokens: int = 0
    context_tokens: int = 0
    output_tokens: int = 0


@dataclass(frozen=True)
class Transcript:
    """The result of transcribing one input."""

    text: str
    language: str | None
    duration_s: float
    segments: tuple[Segment, ...] = ()
    usage: Usage = field(default_factory=Usage)
    languages: tuple[str, ...] = ()
    """Every language detected, most frequent first (mixed-language audio lists several)."""
    finish_reason: str = "stop"
    """`length` when a segment reached its token budget (text may be cut), else `stop`."""
