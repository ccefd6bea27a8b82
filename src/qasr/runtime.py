"""The composition root: everything a running qasr owns, built from `Settings` in one place.

`qasr serve` (its lifespan), `qasr transcribe`, the benchmarks, the tests and library users all build a
`Runtime` the same way; nothing else wires components together. It owns the voice-activity detector,
the ITN grammars' warm-up, each model engine with its scheduler, the upload store and the metrics.

As a library::

    from qasr import Runtime

    with Runtime.open("Qwen/Qwen3-ASR-0.6B-hf") as asr:
        print(asr.transcribe("meeting.m4a").text)
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from qasr.audio.segment import SegmentationOptions
from qasr.audio.sources import SourcePolicy
from qasr.audio.uploads import UploadStore
from qasr.audio.vad import VoiceActivityDetector
from qasr.engine.base import Engine
from qasr.engine.scheduler import ModelWork, Priority, Scheduler, SchedulerPolicy
from qasr.engine.threads import in_passing_thread
from qasr.metrics import Metrics
from qasr.settings import Settings
from qasr.transcriber import AsrScheduler, PipelineOptions, ProgressCallback, Transcriber
from qasr.types import TranscribeOptions, Transcript

if TYPE_CHECKING:
    from qasr.engine.aligner import AlignRequest, AlignResult
    from qasr.live import LiveRecognizer
    from qasr.timestamps import AlignScheduler

log = logging.getLogger(__name__)


@dataclass
class Runtime:
    """A running qasr. Build it with `Runtime.build(settings)` (or `Runtime.open(model)`), use it, then
    `close()` it (or use it as a context manager)."""

    settings: Settings
    engine: Engine
    scheduler: AsrScheduler
    transcriber: Transcriber
    metrics: Metrics
    uploads: UploadStore | None = None
    """The temporary-upload store of the DashScope SDK's local-file flow (server only)."""
    aligner: AlignScheduler | None = None
    """The forced aligner's scheduler, for word timestamps; None when `settings.aligner` is `none`."""
    live: LiveRecognizer | None = None
    """Live (realtime WebSocket) recognition of utterances through `scheduler` (server only)."""
    _closed: bool = field(default=False, repr=False)

    # --- building --------------------------------------------------------------------------------------

    @classmethod
    def build(
        cls,
        settings: Settings,
        engine: Engine | None = None,
        *,
        server: bool = False,
        metrics: Metrics | None = None,
        aligner_engine: ModelWork[AlignRequest, AlignResult] | None = None,
    ) -> Runtime:
        """Load (or take) the model, warm it up as the settings say, and start its scheduler.

        Blocking (seconds to minutes with a real model): from async code, run it in a thread. `server`
        adds what only the HTTP server needs (the upload store, queue deadlines). `metrics`: where the
        counters go (the app creates them first, so its edge can count requests); new ones if None.
        `aligner_engine`: a forced aligner to use instead of loading `settings.aligner` (tests; `qasr serve`
        loads it before it listens)."""
        # The aligner first: the smaller load, so a bad --aligner is found before the model's minutes.
        if aligner_engine is None and settings.aligner != "none":
            aligner_engine = in_passing_thread(lambda: load_aligner_engine(settings))
        model = engine if engine is not None else in_passing_thread(lambda: load_engine(settings))
        if settings.warmup:
            warm_up_text(settings)
        metrics = metrics or Metrics()
        describe_model(metrics, model, settings)
        scheduler: AsrScheduler = Scheduler(model, scheduler_policy(settings), metrics, label="asr")
        scheduler.start()
        aligner: AlignScheduler | None = None
        try:
            if aligner_engine is not None:
                describe_aligner(metrics, aligner_engine)
                aligner = Scheduler(aligner_engine, aligner_policy(settings), metrics, label="aligner")
                aligner.start()
            vad = VoiceActivityDetector() if settings.vad else None
            options = pipeline_options(settings, server=server)
            transcriber = Transcriber(scheduler, vad, options, aligner=aligner)
            uploads = UploadStore.from_settings(settings) if server else None
            live = build_live(settings, scheduler, vad, model) if server else None
        except BaseException:
            scheduler.close()
            if aligner is not None:
                aligner.close()
            raise
        return cls(settings, model, scheduler, transcriber, metrics, uploads, aligner, live)

    @classmethod
    def open(cls, model: str | None = None, **settings: Any) -> Runtime:
        """The library's entry point: a runtime for `model` (a local directory, a Hugging Face id or
        `modelscope:<id>`; default: the settings' default), with any other `Settings` field as a
        keyword (`device="cpu"`, `dtype="float32"`, ...). The environment (`QASR_*`) applies too."""
        if model is not None:
            settings["model"] = model
        return cls.build(Settings(**settings))

    def close(self) -> None:
        """Stop the scheduler and remove what the runtime created; safe to call twice."""
        if self._closed:
            return
        self._closed = True
        self.scheduler.close()
        if self.aligner is not None:
            self.aligner.close()
        if self.uploads is not None:
            self.uploads.close()

    def __enter__(self) -> Runtime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- health ----------------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        """The model workers (the recognizer's and, when loaded, the aligner's) are running."""
        return self.scheduler.healthy and (self.aligner is None or self.aligner.healthy)

    # --- the library API -------------------------------------------------------------------------------

    async def atranscribe(
        self,
        source: str | bytes | Path,
        *,
        language: str | None = None,
        context: str = "",
        itn: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Transcript:
        """Transcribe a file, URL, `data:` URI or bytes. The caller is trusted: local files are read
        and no duration or size limit applies (as in `qasr transcribe`)."""
        from qasr.text.languages import normalize_code

        options = TranscribeOptions(language=normalize_code(language), context=context, enable_itn=itn)
        return await self.transcriber.transcribe(
            source, options, policy=self.local_policy(), progress=progress, priority=Priority.INTERACTIVE
        )

    def transcribe(
        self,
        source: str | bytes | Path,
        *,
        language: str | None = None,
        context: str = "",
        itn: bool = False,
        progress: ProgressCallback | None = None,
    ) -> Transcript:
        """`atranscribe` for code without an event loop."""
        return asyncio.run(
            self.atranscribe(source, language=language, context=context, itn=itn, progress=progress)
        )

    def local_policy(self) -> SourcePolicy:
        """What a local, trusted caller (the CLI, a library user) may read: any local file, any URL
        under the configured URL map and allowed hosts."""
        return SourcePolicy(
            allow_any_local=True,
            allow_url_hosts=tuple(self.settings.allow_url_hosts),
            url_map=dict(self.settings.url_map),
            timeout_s=self.settings.download_timeout_s,
        )


# --- the parts, from settings ----------------------------------------------------------------------------


def load_engine(settings: Settings) -> Engine:
    """The speech-recognition engine the settings name, loaded and (if asked) warmed up."""
    from qasr.engine.qwen3 import Qwen3ASREngine

    engine = Qwen3ASREngine.load(
        settings.model,
        settings.device,
        settings.dtype,
        settings.quantize,
        settings.threads,
        cpu_linear=settings.cpu_linear,
    )
    if settings.warmup:
        engine.warmup()
    return engine


def load_aligner_engine(settings: Settings) -> ModelWork[AlignRequest, AlignResult]:
    """The forced aligner the settings name (issue 14), loaded and (if asked) warmed up."""
    from qasr.engine.aligner import Qwen3AlignerEngine

    aligner = Qwen3AlignerEngine.load(
        settings.aligner, settings.device, settings.dtype, settings.threads, cpu_linear=settings.cpu_linear
    )
    if settings.warmup:
        aligner.warmup()
    return aligner


def build_live(
    settings: Settings, scheduler: AsrScheduler, vad: VoiceActivityDetector | None, engine: Engine
) -> LiveRecognizer:
    """The live recognizer (issue 16): its steps go through the recognizer's scheduler, with the
    engine's per-utterance encoder cache where it has one."""
    from qasr.live import LiveConfig, LiveRecognizer

    config = LiveConfig(max_utterance_s=settings.live_max_utterance_s, step_tokens=settings.live_step_tokens)
    return LiveRecognizer(scheduler, vad, config, encoder_cache=getattr(engine, "new_window_cache", None))


def describe_aligner(metrics: Metrics, aligner: object) -> None:
    """The aligner's load facts as the `qasr_model{role="aligner"}` info metric (never a server path)."""
    describe = getattr(aligner, "describe", None)
    facts: dict[str, str] = describe() if callable(describe) else {}
    metrics.model.labels("aligner").info(facts)


def describe_model(metrics: Metrics, engine: Engine, settings: Settings) -> None:
    """The model-load facts as the `qasr_model` info metric (never a server path)."""
    metrics.model.labels("asr").info({**engine.describe(), "quantize": settings.quantize})


def warm_up_text(settings: Settings) -> None:
    """Compile (first start) or load the cached ITN grammars before the first request."""
    from qasr.text import itn

    if itn.available():
        itn.warm_up()
    else:
        log.info("ITN is unavailable: %s", itn.UNAVAILABLE_HINT)


def scheduler_policy(settings: Settings) -> SchedulerPolicy:
    return SchedulerPolicy(
        max_batch_size=settings.max_batch_size,
        max_wait_ms=settings.max_wait_ms,
        max_hold_ms=settings.max_hold_ms,
        max_queue=settings.max_queue,
    )


def aligner_policy(settings: Settings) -> SchedulerPolicy:
    """The ASR scheduler's policy with the aligner's own batch size (one forward pass per batch)."""
    return replace(scheduler_policy(settings), max_batch_size=settings.aligner_max_batch_size)


def pipeline_options(settings: Settings, *, server: bool = False) -> PipelineOptions:
    """How the pipeline cuts and queues audio; a server also bounds how long a request may wait."""
    return PipelineOptions(
        segmentation=SegmentationOptions(max_segment_s=settings.segment_max_s),
        use_vad=settings.vad,
        max_queue_wait_s=settings.max_queue_wait_s if server else None,
    )
