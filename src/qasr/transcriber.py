"""The pipeline as one story: source -> decode -> segment -> engine -> text.

`Transcriber.stream` is the only path: it yields `Delta`s in order and ends with the `Transcript`;
`transcribe` just keeps the last item. Decoding and voice-activity detection run in a worker thread
and hand segments over through a small bounded queue, so a multi-hour file is never in memory at
once; segments go to the batcher as they come (a few in flight), and their text is released in
order.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from qasr.audio.decode import AudioStream
from qasr.audio.segment import SegmentationOptions, segment_stream
from qasr.audio.sources import SourcePolicy, fetch_source
from qasr.audio.vad import VoiceActivityDetector
from qasr.engine.batcher import Batcher, Reservation
from qasr.text import itn
from qasr.text.join import join_texts
from qasr.text.sentences import SentenceItn
from qasr.types import (
    SAMPLE_RATE,
    AudioInfo,
    AudioLimits,
    Delta,
    EngineRequest,
    EngineResult,
    Segment,
    TranscribeOptions,
    Transcript,
    Usage,
)

ProgressCallback = Callable[[int, float], None]
"""Called with (segments done, seconds of audio done) as the transcription advances."""

_DONE = object()
_NO_LIMITS = AudioLimits()
_SAFE_POLICY = SourcePolicy()


@dataclass(frozen=True)
class PipelineOptions:
    """How audio is cut before it reaches the model."""

    segmentation: SegmentationOptions = field(default_factory=SegmentationOptions)
    use_vad: bool = True
    """False: no voice-activity detection; audio is cut into fixed windows and silence is not gated."""
    segments_in_flight: int = 8
    """Segments of one input submitted to the batcher at once (bounds memory and keeps batches full)."""
    decode_chunk_s: float = 10.0
    """Size of the decoded blocks handed to the VAD."""


class Transcriber:
    """Runs the pipeline for any API, the CLI and the library. Share one per process."""

    def __init__(
        self,
        batcher: Batcher,
        vad: VoiceActivityDetector | None = None,
        options: PipelineOptions | None = None,
    ) -> None:
        self.batcher = batcher
        self.options = options or PipelineOptions()
        if self.options.use_vad and vad is None:
            vad = VoiceActivityDetector()
        self.vad = vad

    async def transcribe(
        self,
        source: str | bytes | Path,
        options: TranscribeOptions,
        limits: AudioLimits = _NO_LIMITS,
        policy: SourcePolicy = _SAFE_POLICY,
        progress: ProgressCallback | None = None,
    ) -> Transcript:
        """Transcribe one input completely."""
        result: Transcript | None = None
        async for item in self.stream(source, options, limits, policy, progress):
            if isinstance(item, Transcript):
                result = item
        assert result is not None  # stream always ends with the transcript
        return result

    async def stream(
        self,
        source: str | bytes | Path,
        options: TranscribeOptions,
        limits: AudioLimits = _NO_LIMITS,
        policy: SourcePolicy = _SAFE_POLICY,
        progress: ProgressCallback | None = None,
    ) -> AsyncIterator[Delta | Transcript]:
        """Yield text as it is recognised (in order), then the final `Transcript`.

        Errors before the first yield are the caller's to map (bad input, limits); cancelling the
        consumer cancels the model work of every segment in flight.
        """
        if options.enable_itn:
            itn.require()  # a clear error before any work where ITN is not installed
        data = await fetch_source(source, policy, limits)
        # From here a segment is on its way: a partial batch may wait a moment for it (Batcher).
        with self.batcher.reserve() as coming:
            audio = await asyncio.to_thread(AudioStream, data, limits)
            segments = _SegmentFeed(audio, self.vad, self.options)
            collector = _Collector()
            try:
                segments.start()
                async for item in self._run_segments(segments, options, collector, progress, coming):
                    yield item
                info = audio.info
            finally:
                segments.stop()
                # Synchronous on purpose: it is quick and thread-safe, and an await here would be
                # skipped when the consumer was cancelled (a client that hung up), leaking the input.
                audio.close()
        yield collector.transcript(info)

    async def _run_segments(
        self,
        feed: _SegmentFeed,
        options: TranscribeOptions,
        collector: _Collector,
        progress: ProgressCallback | None,
        coming: Reservation,
    ) -> AsyncIterator[Delta]:
        """Submit segments as they arrive, a few at a time; release each one's deltas in order.

        The first segment's submit uses the `coming` reservation; the feed's end releases it."""
        in_flight: list[_SegmentJob] = []
        exhausted = False
        try:
            while in_flight or not exhausted:
                while not exhausted and len(in_flight) < self.options.segments_in_flight:
                    if in_flight and not feed.ready():
                        break  # don't wait for decoding while there is text to release
                    item = await feed.next()
                    if item is None:
                        exhausted = True
                        coming.release()
                        break
                    in_flight.append(_SegmentJob.start(self.batcher, item, options, coming))
                if not in_flight:
                    break
                head = in_flight.pop(0)
                async for delta in head.deltas(collector):
                    yield delta
                if progress is not None:
                    progress(len(collector.segments), head.segment.end_s)
        finally:
            for job in in_flight:
                job.task.cancel()
            for job in in_flight:
                with contextlib.suppress(BaseException):
                    await job.task


class _SegmentFeed:
    """Decode + VAD in a worker thread, handing (Segment, samples) over through a bounded queue."""

    def __init__(
        self, audio: AudioStream, vad: VoiceActivityDetector | None, options: PipelineOptions
    ) -> None:
        self.audio = audio
        self.vad = vad
        self.options = options
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._produce, name="qasr-decode", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # Unblock a producer waiting on a full queue.
        while not self.queue.empty():
            self.queue.get_nowait()

    def ready(self) -> bool:
        return not self.queue.empty()

    async def next(self) -> tuple[Segment, np.ndarray] | None:
        item = await self.queue.get()
        if item is _DONE:
            return None
        if isinstance(item, BaseException):
            raise item
        return item  # type: ignore[return-value]

    def _segments(self) -> Iterator[tuple[Segment, np.ndarray]]:
        chunks = self.audio.chunks(self.options.decode_chunk_s)
        if self.vad is not None:
            yield from segment_stream(chunks, self.vad, self.options.segmentation)
            return
        # Without VAD: fixed windows, nothing gated.
        window = int(self.options.segmentation.max_segment_s * SAMPLE_RATE)
        start = 0
        buffer = np.zeros(0, dtype=np.float32)
        for chunk in chunks:
            buffer = np.concatenate([buffer, chunk])
            while len(buffer) >= window:
                yield Segment(start / SAMPLE_RATE, (start + window) / SAMPLE_RATE), buffer[:window]
                buffer, start = buffer[window:], start + window
        if len(buffer):
            yield Segment(start / SAMPLE_RATE, (start + len(buffer)) / SAMPLE_RATE), buffer

    def _produce(self) -> None:
        try:
            for item in self._segments():
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)

    def _put(self, item: object) -> bool:
        """Block until the consumer takes the item (bounded memory); False once stopped."""
        assert self._loop is not None
        while not self._stop.is_set():
            future = asyncio.run_coroutine_threadsafe(self.queue.put(item), self._loop)
            try:
                future.result(timeout=0.5)
                return True
            except TimeoutError:
                future.cancel()
            except RuntimeError:  # the loop is gone
                return False
        return False


@dataclass
class _SegmentJob:
    segment: Segment
    task: asyncio.Task[EngineResult]
    pieces: asyncio.Queue[Delta]
    itn: SentenceItn
    started: bool = False

    @classmethod
    def start(
        cls,
        batcher: Batcher,
        item: tuple[Segment, np.ndarray],
        options: TranscribeOptions,
        reservation: Reservation | None = None,
    ) -> _SegmentJob:
        segment, samples = item
        pieces: asyncio.Queue[Delta] = asyncio.Queue()
        request = EngineRequest(samples=samples, context=options.context, language=options.language)
        task = asyncio.ensure_future(batcher.submit(request, pieces.put_nowait, reservation))
        return cls(segment, task, pieces, SentenceItn(options.enable_itn))

    async def deltas(self, collector: _Collector) -> AsyncIterator[Delta]:
        """This segment's text as it is written, with ITN applied per sentence; then record it."""
        language: str | None = None
        while True:
            getter = asyncio.ensure_future(self.pieces.get())
            done, _ = await asyncio.wait({getter, self.task}, return_when=asyncio.FIRST_COMPLETED)
            if getter not in done:
                getter.cancel()
                break
            piece = getter.result()
            language = piece.language or language
            text = self.itn.push(piece.text, language)
            if text or piece.language:
                yield Delta(self._join(collector, text), language)
        result = self.task.result()  # raises the engine's error, if any
        while not self.pieces.empty():  # deltas that landed together with the result
            piece = self.pieces.get_nowait()
            language = piece.language or language
            text = self.itn.push(piece.text, language)
            if text:
                yield Delta(self._join(collector, text), language)
        tail = self.itn.finish(result.language)
        if tail:
            yield Delta(self._join(collector, tail), result.language)
        collector.add(self.segment, result, self.itn.text)

    def _join(self, collector: _Collector, text: str) -> str:
        """Only the first text of a segment may get a separator from the previous segment's text."""
        if not text:
            return ""
        delta = collector.append(text, new_segment=not self.started)
        self.started = True
        return delta


class _Collector:
    """Builds the transcript from finished segments, and joins deltas across segment borders."""

    def __init__(self) -> None:
        self.segments: list[Segment] = []
        self.results: list[EngineResult] = []
        self._text = ""

    def append(self, piece: str, new_segment: bool) -> str:
        """Add `piece` to the transcript; return the delta to emit (with a separator at a segment start)."""
        joined = join_texts(self._text, piece) if new_segment else self._text + piece
        delta = joined[len(self._text) :]
        self._text = joined
        return delta

    def add(self, segment: Segment, result: EngineResult, text: str) -> None:
        self.segments.append(Segment(segment.start_s, segment.end_s, text, result.language))
        self.results.append(result)

    def transcript(self, info: AudioInfo) -> Transcript:
        # The whole file's language is the one spoken longest; mixed audio lists every one, longest first.
        seconds: dict[str, float] = {}
        for seg in self.segments:
            if seg.language and seg.text:
                seconds[seg.language] = seconds.get(seg.language, 0.0) + seg.end_s - seg.start_s
        languages = tuple(sorted(seconds, key=lambda code: -seconds[code]))
        if not languages:  # segments without text may still carry a (forced or detected) language
            languages = tuple(dict.fromkeys(s.language for s in self.segments if s.language))
        usage = Usage(
            audio_s=info.duration_s,
            audio_tokens=sum(r.audio_tokens for r in self.results),
            context_tokens=max((r.context_tokens for r in self.results), default=0),
            output_tokens=sum(r.output_tokens for r in self.results),
        )
        return Transcript(
            text=self._text,
            language=languages[0] if languages else None,
            duration_s=info.duration_s,
            segments=tuple(s for s in self.segments if s.text),
            usage=usage,
            languages=languages,
            finish_reason="length" if any(r.finish_reason == "length" for r in self.results) else "stop",
        )
