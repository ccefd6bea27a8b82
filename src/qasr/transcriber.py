"""The pipeline as one story: source -> decode -> segment -> engine -> text.

`Transcriber.stream` is the only path: it yields `Delta`s in order and ends with the `Transcript`;
`transcribe` just keeps the last item. A place in the model's queue is taken first (`admit`), so an
overloaded server refuses before fetching or decoding anything. Decoding and segmentation run in a
worker thread and hand segments over through a small bounded queue, so a multi-hour file is never in
memory at once; segments go to the scheduler as they come (a few in flight, each through a
`SegmentRunner`), and their text is released in order and collected by a `TranscriptBuilder`.
Segmentation (`qasr.audio.segment`) and the segment runner do not care where audio comes from: live
sessions push audio into the same parts.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from qasr.audio.decode import AudioStream
from qasr.audio.segment import SegmentationOptions, Segmenter, SpeechSegmenter, WindowSegmenter
from qasr.audio.sources import SourcePolicy, fetch_source
from qasr.audio.vad import VoiceActivityDetector
from qasr.engine.scheduler import Admission, Priority, Scheduler
from qasr.text import itn
from qasr.text.join import join_texts
from qasr.text.sentences import SentenceItn
from qasr.timestamps import word_times
from qasr.types import (
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

if TYPE_CHECKING:
    from qasr.timestamps import AlignScheduler

log = logging.getLogger(__name__)

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
    """Segments of one input submitted to the scheduler at once (bounds memory and keeps batches full)."""
    decode_chunk_s: float = 10.0
    """Size of the decoded blocks handed to the VAD."""
    max_queue_wait_s: float | None = None
    """Longest a segment of an interactive request may wait for the model (`QueueTimeout`, 429);
    None: no limit (the CLI, the library, background jobs)."""


AsrScheduler = Scheduler[EngineRequest, EngineResult]


class Transcriber:
    """Runs the pipeline for any API, the CLI and the library. Share one per process."""

    def __init__(
        self,
        scheduler: AsrScheduler,
        vad: VoiceActivityDetector | None = None,
        options: PipelineOptions | None = None,
        aligner: AlignScheduler | None = None,
    ) -> None:
        """`aligner`: the forced aligner's scheduler, for word timestamps; None: segment-level only."""
        self.scheduler = scheduler
        self.aligner = aligner
        self.options = options or PipelineOptions()
        if self.options.use_vad and vad is None:
            vad = VoiceActivityDetector()
        self.vad = vad

    def segmenter(self) -> Segmenter:
        """A fresh segmenter for one audio stream, as configured."""
        if self.vad is not None:
            return SpeechSegmenter(self.vad, self.options.segmentation)
        return WindowSegmenter(self.options.segmentation.max_segment_s)

    async def transcribe(
        self,
        source: str | bytes | Path,
        options: TranscribeOptions,
        limits: AudioLimits = _NO_LIMITS,
        policy: SourcePolicy = _SAFE_POLICY,
        progress: ProgressCallback | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        admission: Admission | None = None,
    ) -> Transcript:
        """Transcribe one input completely."""
        result: Transcript | None = None
        async for item in self.stream(
            source, options, limits, policy, progress, priority=priority, admission=admission
        ):
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
        *,
        priority: Priority = Priority.INTERACTIVE,
        admission: Admission | None = None,
    ) -> AsyncGenerator[Delta | Transcript, None]:
        """Yield text as it is recognised (in order), then the final `Transcript`.

        `admission`: a place in the model's queue the caller took already (it stays the caller's to
        release); without one, a place of class `priority` is taken here, before anything is fetched.
        Errors before the first yield are the caller's to map (overload, bad input, limits);
        cancelling the consumer cancels the model work of every segment in flight.
        """
        if options.enable_itn:
            itn.require()  # a clear error before any work where ITN is not installed
        place = admission if admission is not None else self.scheduler.admit(priority)
        try:
            data = await fetch_source(source, policy, limits)
            audio = await asyncio.to_thread(AudioStream, data, limits)
            try:
                segmenter = self.segmenter()
            except BaseException:
                audio.close()
                raise
            segments = _SegmentFeed(audio, segmenter, self.options)  # it closes the audio when done
            builder = TranscriptBuilder(options.language)
            try:
                segments.start()
                async for item in self._run_segments(segments, options, builder, progress, place):
                    yield item
                info = audio.info
            finally:
                # Synchronous on purpose: an await here would be skipped when the consumer was
                # cancelled (a client that hung up), leaking the input.
                segments.stop()
        finally:
            if admission is None:
                place.release()
        transcript = builder.transcript(info)
        log.debug("transcript of %.1f s of audio: %s", transcript.duration_s, transcript.text)
        yield transcript

    async def _run_segments(
        self,
        feed: _SegmentFeed,
        options: TranscribeOptions,
        builder: TranscriptBuilder,
        progress: ProgressCallback | None,
        admission: Admission,
    ) -> AsyncIterator[Delta]:
        """Submit segments as they arrive, a few at a time; release each one's deltas in order.

        Audio without a single segment ends the admission's wait at once (`arrived`)."""
        in_flight: list[SegmentRunner] = []
        exhausted = False
        try:
            while in_flight or not exhausted:
                while not exhausted and len(in_flight) < self.options.segments_in_flight:
                    if in_flight and not feed.ready():
                        break  # don't wait for decoding while there is text to release
                    item = await feed.next()
                    if item is None:
                        exhausted = True
                        admission.arrived()
                        break
                    segment, samples = item
                    request = EngineRequest(samples, options.context, options.language)
                    runner = SegmentRunner(segment, options.enable_itn)
                    if options.timestamps == "word" and self.aligner is not None:
                        runner.align_with(self.aligner, samples)
                    deadline = self._deadline(admission, first=not builder.segments and not in_flight)
                    runner.submit(self.scheduler, request, admission, deadline=deadline)
                    in_flight.append(runner)
                if not in_flight:
                    break
                head = in_flight[0]
                async for delta in head.deltas(builder):
                    yield delta
                in_flight.pop(0)  # only once its text is out: a cancellation meanwhile must reach it
                if progress is not None:
                    progress(len(builder.segments), head.segment.end_s)
        finally:
            # Cancelled (the client left) or failed: every segment not finished leaves the queue, the
            # one being read included, so none of them reaches the model (issue 13).
            for runner in in_flight:
                runner.cancel()
            for runner in in_flight:
                with contextlib.suppress(BaseException):
                    await runner.task  # type: ignore[misc]

    def _deadline(self, admission: Admission, first: bool) -> float | None:
        """When a segment must have reached the model. The first segment's clock starts when the
        request was admitted, so reading, decoding and segmenting count too; later segments of a long
        file get the same time from their own submission."""
        wait_s = self.options.max_queue_wait_s
        if wait_s is None or admission.priority is not Priority.INTERACTIVE:
            return None
        return (admission.created if first else time.monotonic()) + wait_s


class _SegmentFeed:
    """Decode + segmentation in a worker thread, handing (Segment, samples) over through a bounded queue.

    It owns the audio stream: `stop` closes it, or, while the thread still decodes or runs the VAD,
    the thread closes it as it ends (at its next segment). Never under the thread's feet, and the thread
    is not a daemon, so an exiting process (Ctrl-C) waits for it instead of aborting inside native code.
    """

    def __init__(self, audio: AudioStream, segmenter: Segmenter, options: PipelineOptions) -> None:
        self.audio = audio
        self.segmenter = segmenter
        self.options = options
        self.queue: asyncio.Queue[object] = asyncio.Queue(maxsize=2)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._holders = 1  # who still uses the audio: the consumer, and the thread while it runs
        self._holders_lock = threading.Lock()

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._produce, name="qasr-decode")
        with self._holders_lock:
            self._holders += 1
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        # Unblock a producer waiting on a full queue.
        while not self.queue.empty():
            self.queue.get_nowait()
        self._let_go()

    def _let_go(self) -> None:
        """One user is done with the audio; the last one closes it."""
        with self._holders_lock:
            self._holders -= 1
            last = self._holders == 0
        if last:
            self.audio.close()

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
        for chunk in self.audio.chunks(self.options.decode_chunk_s):
            yield from self.segmenter.push(chunk)
        yield from self.segmenter.finish()

    def _produce(self) -> None:
        try:
            for item in self._segments():
                if not self._put(item):
                    return
            self._put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            self._put(exc)
        finally:
            self._let_go()

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


class SegmentRunner:
    """One segment's trip through the model: submit it, then release its text in order as it is
    written, with ITN applied per sentence, and record the result in a `TranscriptBuilder`.

    Shared by file transcription and live sessions; it does not care where the audio came from."""

    def __init__(self, segment: Segment, enable_itn: bool) -> None:
        self.segment = segment
        self.pieces: asyncio.Queue[Delta] = asyncio.Queue()
        self.itn = SentenceItn(enable_itn)
        self.task: asyncio.Future[EngineResult] | None = None
        self._started = False
        self._aligner: AlignScheduler | None = None
        self._samples: np.ndarray | None = None
        self._priority = Priority.INTERACTIVE

    def align_with(self, aligner: AlignScheduler, samples: np.ndarray) -> None:
        """Place the segment's words in time once its text is final; `samples` are kept until then."""
        self._aligner, self._samples = aligner, samples

    def submit(
        self,
        scheduler: AsrScheduler,
        request: EngineRequest,
        admission: Admission | None = None,
        priority: Priority = Priority.INTERACTIVE,
        deadline: float | None = None,
    ) -> None:
        """Queue the segment's model request; its deltas arrive in `pieces`. `deadline`
        (time.monotonic): refused with `QueueTimeout` if the model has not started it by then."""
        self._priority = admission.priority if admission is not None else priority
        work = scheduler.submit(
            request, self._piece, priority=priority, admission=admission, deadline=deadline
        )
        self.task = asyncio.ensure_future(work)

    def _piece(self, delta: object) -> None:
        assert isinstance(delta, Delta)
        self.pieces.put_nowait(delta)

    def cancel(self) -> None:
        if self.task is not None:
            self.task.cancel()

    async def deltas(self, builder: TranscriptBuilder) -> AsyncIterator[Delta]:
        """This segment's text as it is written, then record the result in `builder`."""
        assert self.task is not None, "submit first"
        language: str | None = None
        tokens = 0
        while True:
            getter = asyncio.ensure_future(self.pieces.get())
            waiters: set[asyncio.Future[Any]] = {getter, self.task}
            try:
                done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            except asyncio.CancelledError:
                getter.cancel()  # a consumer that leaves must not leave the getter pending
                raise
            if getter not in done:
                getter.cancel()
                break
            piece = getter.result()
            language, tokens = piece.language or language, piece.output_tokens
            text = self.itn.push(piece.text, language)
            if text or piece.language:
                yield Delta(self._join(builder, text), language, builder.output_tokens + tokens)
        result = self.task.result()  # raises the engine's error, if any
        while not self.pieces.empty():  # deltas that landed together with the result
            piece = self.pieces.get_nowait()
            language, tokens = piece.language or language, piece.output_tokens
            text = self.itn.push(piece.text, language)
            if text:
                yield Delta(self._join(builder, text), language, builder.output_tokens + tokens)
        tail = self.itn.finish(result.language)
        if tail:
            yield Delta(
                self._join(builder, tail), result.language, builder.output_tokens + result.output_tokens
            )
        done = Segment(self.segment.start_s, self.segment.end_s, self.itn.text, result.language)
        samples, self._samples = self._samples, None  # bounded memory: audio lives until aligned
        done = await word_times(
            self._aligner, done, samples, spoken=result.text.strip(), priority=self._priority
        )
        builder.add(done, result)

    def _join(self, builder: TranscriptBuilder, text: str) -> str:
        """Only the first text of a segment may get a separator from the previous segment's text."""
        if not text:
            return ""
        delta = builder.append(text, new_segment=not self._started)
        self._started = True
        return delta


class TranscriptBuilder:
    """Builds the transcript from finished segments, and joins deltas across segment borders."""

    def __init__(self, forced_language: str | None = None) -> None:
        """`forced_language`: the code the caller forced; the transcript's language when no segment
        reached the model (silence), as the cloud reports it."""
        self.forced_language = forced_language
        self.segments: list[Segment] = []
        self.results: list[EngineResult] = []
        self.output_tokens = 0
        """Tokens the model generated for the finished segments."""
        self._text = ""

    def append(self, piece: str, new_segment: bool) -> str:
        """Add `piece` to the transcript; return the delta to emit (with a separator at a segment start)."""
        joined = join_texts(self._text, piece) if new_segment else self._text + piece
        delta = joined[len(self._text) :]
        self._text = joined
        return delta

    def add(self, segment: Segment, result: EngineResult) -> None:
        """Record a finished segment (its final text, language and any words) and its model result."""
        self.segments.append(segment)
        self.results.append(result)
        self.output_tokens += result.output_tokens

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
            language=languages[0] if languages else self.forced_language,
            duration_s=info.duration_s,
            segments=tuple(s for s in self.segments if s.text),
            usage=usage,
            languages=languages,
            finish_reason="length" if any(r.finish_reason == "length" for r in self.results) else "stop",
        )
