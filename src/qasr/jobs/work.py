"""One job, start to end: fetch the input to a local file, look at its channels, transcribe each asked
channel at background priority, and build the result document. Failures become the task's `code`."""

from __future__ import annotations

import asyncio
import json
import threading
import wave
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from qasr.audio.decode import AudioStream
from qasr.audio.sources import SourcePolicy
from qasr.engine.scheduler import Priority
from qasr.errors import (
    AudioError,
    AudioTooLarge,
    AudioTooLong,
    DownloadFailed,
    ForbiddenSource,
    InvalidRequest,
    Overloaded,
    QasrError,
    SourceError,
)
from qasr.jobs.fetch import fetch_to_file
from qasr.jobs.results import ChannelResult, result_document
from qasr.transcriber import Transcriber
from qasr.types import SAMPLE_RATE, AudioInfo, AudioLimits, TranscribeOptions, Transcript

_OVERLOAD_RETRY_S = 1.0


@dataclass(frozen=True)
class JobOptions:
    """What the caller asked of a job (the submit's `parameters`), stored with the task as JSON."""

    language: str | None = None
    enable_itn: bool = False
    enable_words: bool = False
    channel_ids: tuple[int, ...] = (0,)
    context: str = ""

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> JobOptions:
        values: dict[str, Any] = json.loads(text)
        values["channel_ids"] = tuple(values["channel_ids"])
        return cls(**values)

    def transcribe_options(self) -> TranscribeOptions:
        return TranscribeOptions(
            language=self.language,
            context=self.context,
            enable_itn=self.enable_itn,
            timestamps="word" if self.enable_words else "segment",
        )


def failure_code(exc: BaseException) -> str:
    """The task's `code` for a failure, in the cloud's vocabulary for recorded-file jobs."""
    if isinstance(exc, DownloadFailed):
        return {403: "FILE_403_FORBIDDEN", 404: "FILE_404_NOT_FOUND"}.get(
            exc.status or 0, "FILE_DOWNLOAD_FAILED"
        )
    if isinstance(exc, (ForbiddenSource, SourceError)):
        return "REQUEST_INVALID_FILE_URL_VALUE"
    if isinstance(exc, AudioTooLarge):
        return "FILE_TOO_LARGE"
    if isinstance(exc, AudioTooLong):
        return "AUDIO_DURATION_TOO_LONG"
    if isinstance(exc, AudioError):
        return "FILE_CHECK_FAILED"
    if isinstance(exc, InvalidRequest):
        return "InvalidParameter"
    return "InternalError"


Progress = Callable[[float, float], None]
"""Called with (fraction done in [0, 1], seconds of audio done)."""


@dataclass
class JobWork:
    """Everything one job needs; `run` returns the result document and the seconds transcribed."""

    transcriber: Transcriber
    policy: SourcePolicy
    limits: AudioLimits
    workdir: Path

    async def run(
        self, file_url: str, source: str, options: JobOptions, progress: Progress
    ) -> tuple[dict[str, Any], float]:
        self.workdir.mkdir(mode=0o700, parents=True, exist_ok=True)
        path = await fetch_to_file(source, self.policy, self.limits, self.workdir / "input")
        info, declared_s = await asyncio.to_thread(_probe, path, self.limits)
        channels = info.channels or 1
        for channel in options.channel_ids:
            if channel >= channels:
                raise InvalidRequest(
                    f"channel_id {channel} does not exist: the file has {channels} channel"
                    f"{'s' if channels != 1 else ''} (channel ids start at 0)."
                )
        results: list[ChannelResult] = []
        total_s = (declared_s or 0.0) * len(options.channel_ids)
        done_before = 0.0
        for channel in options.channel_ids:
            audio = path if channels == 1 else await self._extract(path, channel)

            def report(_segments: int, seconds: float, base: float = done_before) -> None:
                done = base + seconds
                progress(min(0.99, done / total_s) if total_s else 0.0, done)

            transcript = await self._transcribe(audio, options, report)
            done_before += transcript.duration_s
            results.append(ChannelResult(channel, transcript))
        duration_s = max((r.transcript.duration_s for r in results), default=0.0)
        shown = AudioInfo(duration_s, info.container, info.codec, info.sample_rate, info.channels)
        return result_document(file_url, shown, results, words=options.enable_words), duration_s

    async def _transcribe(
        self, audio: Path, options: JobOptions, report: Callable[[int, float], None]
    ) -> Transcript:
        local = SourcePolicy(allow_any_local=True)  # a file this job checked or wrote itself
        while True:
            try:
                return await self.transcriber.transcribe(
                    audio,
                    options.transcribe_options(),
                    self.limits,
                    local,
                    report,
                    priority=Priority.BACKGROUND,
                )
            except Overloaded:  # the background class's queue is full: wait for room, never fail
                await asyncio.sleep(_OVERLOAD_RETRY_S)

    async def _extract(self, path: Path, channel: int) -> Path:
        """One channel as a 16 kHz mono 16-bit WAV in the work directory, decoded as a stream."""
        out = self.workdir / f"channel-{channel}.wav"
        stop = threading.Event()
        try:
            await asyncio.to_thread(_write_channel, path, channel, self.limits, out, stop)
        finally:
            stop.set()  # a cancelled job stops the thread at its next chunk
        return out


def _probe(path: Path, limits: AudioLimits) -> tuple[AudioInfo, float | None]:
    """The input's format and channels without decoding it (bad input fails here, clearly)."""
    with AudioStream(path, limits) as stream:
        return stream.info, stream.declared_duration_s


def _write_channel(path: Path, channel: int, limits: AudioLimits, out: Path, stop: threading.Event) -> None:
    with AudioStream(path, limits, channel=channel) as stream, wave.open(str(out), "wb") as wav:
        wav.setnchannels(1)
        wav.setsampwidth(2)
        wav.setframerate(SAMPLE_RATE)
        for chunk in stream.chunks(10.0):
            if stop.is_set():
                return
            wav.writeframes((np.clip(chunk, -1.0, 1.0) * 32767.0).astype("<i2").tobytes())


def describe_failure(exc: BaseException) -> tuple[str, str]:
    """(code, message) of a failed job; a server bug gets a generic message (the log has the rest)."""
    if isinstance(exc, QasrError):
        return failure_code(exc), exc.message
    return "InternalError", "An internal error occurred; the server logged the details."
