"""Live recognition of utterances as they are spoken (issue 16, the decoder half).

The realtime protocol layer (`qasr.api.realtime`) decides where utterances begin and end; for each one
it opens an `Utterance`, appends audio as it arrives, asks for `partial()` results now and then and
for one `final()` at the end. Everything here runs through the model's scheduler:

- a partial step is one small request at `Priority.LIVE`: the utterance's audio so far, the text
  settled by earlier steps forced as the start of the transcript, and a small cap on new tokens, so
  each step decodes only a few tokens (`qasr.live.settle` splits the result into `text` and `stash`);
- steps of all sessions go to the model in rounds (`Rounds`): a step asked for while a round is on
  the model waits for the next round, which starts when it ends, so the sessions' steps meet in the
  scheduler's queue at the same moment and run as one batch, instead of alternating on the model;
- a final is one ordinary decode of the whole utterance (offline quality, no prefix) at
  `Priority.LIVE_FINAL`, ahead of every partial step; the last partial's hypothesis goes with it as
  a draft the engine checks in one pass (`EngineRequest.draft`: same result, fewer decoding steps
  when the partial was right), and so does the utterance's window cache: the completed windows'
  encoder outputs and the keys and values of the prompt up to them are the same for the final as
  for the partial steps, so the final encodes and prefills only the rest;
- a session that falls behind never queues more than one step: callers share the step in flight, or
  the single follow-up step that will include the newest audio;
- nothing of one utterance (audio, text, language, prefix) is used for another one.

Silence gives no text: as in the file pipeline, audio in which the voice-activity detector finds no
speech never reaches the model (the model may invent words for noise).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from qasr.audio.vad import FRAME_SAMPLES, VadStream, VoiceActivityDetector
from qasr.engine.qwen3 import sanitize_context
from qasr.engine.scheduler import Priority, Scheduler
from qasr.live.settle import split_hypothesis
from qasr.text import itn
from qasr.text.languages import forceable_name
from qasr.text.sentences import SentenceItn
from qasr.types import SAMPLE_RATE, EngineRequest, EngineResult

log = logging.getLogger(__name__)

_HEADER_TOKENS = 4
"""Tokens of the `language X<asr_text>` header the model writes when the language is not forced."""


@dataclass(frozen=True)
class LiveOptions:
    """What a live session asks of its utterances."""

    language: str | None = None
    """Forced language code (normalized, e.g. `en`); None: detect."""
    context: str = ""
    """Context text (`corpus.text`) for the model's system turn."""
    enable_itn: bool = False
    """Inverse text normalization of the final transcript, as in the other APIs."""


@dataclass(frozen=True)
class Partial:
    """An interim result: display `text + stash`."""

    text: str
    """The settled prefix: later partials of the same utterance only extend it."""
    stash: str
    """The provisional tail."""
    language: str | None
    """The detected or forced language code; None while not known."""


@dataclass(frozen=True)
class Final:
    """The result of a whole utterance."""

    transcript: str
    """Offline-quality decode of the whole utterance (ITN applied when asked); '' for silence."""
    language: str | None


@dataclass(frozen=True)
class LiveConfig:
    """How live steps are run; defaults suit Qwen3-ASR 0.6B on CPU (bench/realtime.py)."""

    max_utterance_s: float = 30.0
    """The longest utterance; the protocol layer must close utterances at this length. It bounds the
    work of each step (the audio re-read per step) and the memory per session."""
    step_tokens: int = 8
    """Most transcript tokens a partial step may generate (plus the language header while it is not
    forced): new speech at a step every second is 3-5 tokens, plus the words held back before."""
    hold_words: int = 2
    """Words at the end of each step's continuation kept provisional (`stash`)."""
    min_settle_s: float = 2.0
    """No text is settled before the utterance has this much audio (the first words are unsure)."""
    speech_threshold: float = 0.5
    """Silero speech probability at which a 32 ms frame counts as speech."""
    min_speech_ms: int = 250
    """An utterance with less speech than this is silence: no model call, no text."""


class LiveRecognizer:
    """Opens utterances; one per server, shared by every session. Thread-safe to call from the loop."""

    def __init__(
        self,
        scheduler: Scheduler[EngineRequest, EngineResult],
        vad: VoiceActivityDetector | None = None,
        config: LiveConfig | None = None,
        encoder_cache: Callable[[], object] | None = None,
    ) -> None:
        """`vad`: gates silence (None: every utterance goes to the model, as with `--no-vad`).
        `encoder_cache`: makes the engine's per-utterance encoder cache (`EngineRequest.encoder_cache`,
        e.g. `Qwen3ASREngine.new_window_cache`); None: each step encodes all the utterance's audio."""
        self.scheduler = scheduler
        self.vad = vad
        self.config = config or LiveConfig()
        self.encoder_cache = encoder_cache
        self.rounds = Rounds()

    @property
    def max_utterance_s(self) -> float:
        """The cap the protocol layer must close utterances at."""
        return self.config.max_utterance_s

    def utterance(self, options: LiveOptions) -> Utterance:
        """A new, independent utterance. Raises `ItnUnavailable` when ITN is asked for but missing."""
        if options.enable_itn:
            itn.require()
        return Utterance(self, options)


class Utterance:
    """One utterance of one live session: append audio, ask for partials, then one final."""

    def __init__(self, recognizer: LiveRecognizer, options: LiveOptions) -> None:
        self._recognizer = recognizer
        self._config = recognizer.config
        self.options = options
        self._max_samples = int(self._config.max_utterance_s * SAMPLE_RATE)
        self._chunks: list[np.ndarray] = []
        self._samples = np.zeros(0, dtype=np.float32)
        self._count = 0
        self._dropped = 0
        self._settled = ""
        self._hypothesis = ""
        self._language: str | None = options.language
        self._last_step_samples = 0
        self._step: asyncio.Future[Partial | None] | None = None
        self._step_samples = 0
        self._follow: asyncio.Future[Partial | None] | None = None
        self._final: asyncio.Future[Final] | None = None
        self._closed = False
        self._finished = False
        self._speech = _SpeechGate(recognizer.vad, self._config)
        self._encoder_cache = recognizer.encoder_cache() if recognizer.encoder_cache is not None else None

    # --- audio -----------------------------------------------------------------------------------------

    @property
    def duration_s(self) -> float:
        """Audio appended so far, in seconds."""
        return self._count / SAMPLE_RATE

    def append(self, samples: np.ndarray) -> None:
        """Add the next 16 kHz mono float32 audio of this utterance. Cheap: it only stores a copy.

        Audio past `max_utterance_s` is dropped (with a warning): the protocol layer closes utterances
        at that length, and memory per session stays bounded whatever a caller does."""
        if self._closed or self._finished:
            return
        chunk = np.asarray(samples, dtype=np.float32).reshape(-1)
        room = self._max_samples - self._count
        if len(chunk) > room:
            if not self._dropped:
                log.warning("live utterance longer than %.0f s: audio past it is dropped", self.duration_s)
            self._dropped += len(chunk) - max(room, 0)
            chunk = chunk[: max(room, 0)]
        if len(chunk):
            self._chunks.append(chunk.copy())
            self._count += len(chunk)

    def _audio(self) -> np.ndarray:
        """All audio so far as one array (joined lazily, once per step)."""
        if self._chunks:
            self._samples = np.concatenate([self._samples, *self._chunks])
            self._chunks = []
        return self._samples

    # --- partial steps ---------------------------------------------------------------------------------

    async def partial(self) -> Partial | None:
        """One decode step on the audio so far, shared with any step already pending (see the module
        docstring); None when nothing was appended since the last step or the utterance is over.
        Raises `Overloaded` when the live queue is full."""
        if self._closed or self._finished:
            return None
        step = self._step
        if step is not None and not step.done():
            if self._count == self._step_samples:
                return await self._shared(step)  # the step in flight already has all the audio
            if self._follow is None or self._follow.done():
                self._follow = asyncio.ensure_future(self._after(step))
            return await self._shared(self._follow)
        if self._count == self._last_step_samples:
            return None
        self._step = asyncio.ensure_future(self._run_step(self._snapshot()))
        return await self._shared(self._step)

    async def _shared(self, step: asyncio.Future[Partial | None]) -> Partial | None:
        """Await a step that other callers may await too: a caller's cancellation leaves it running;
        a step cancelled by `close` or `final` answers None."""
        try:
            return await asyncio.shield(step)
        except asyncio.CancelledError:
            if step.cancelled() and (self._closed or self._finished):
                return None
            raise

    async def _after(self, previous: asyncio.Future[Partial | None]) -> Partial | None:
        """The follow-up step: starts once the step in flight is done, with the audio of that moment."""
        with contextlib.suppress(Exception, asyncio.CancelledError):
            await previous
        if self._closed or self._finished or self._count == self._last_step_samples:
            return None
        self._step = asyncio.current_task()
        self._follow = None
        return await self._run_step(self._snapshot())

    def _snapshot(self) -> np.ndarray:
        """The audio a step decodes, taken when the step is started (so that callers arriving before
        it runs know exactly what it covers)."""
        samples = self._audio()
        self._step_samples = self._last_step_samples = len(samples)
        return samples

    async def _run_step(self, samples: np.ndarray) -> Partial | None:
        if not await self._speech.heard(samples):
            return Partial("", "", self.options.language)
        language = self.options.language
        prefix = ""
        if self._settled and forceable_name(language or self._language) is not None:
            # Settled text is forced as the transcript's start; it needs the header forced too, so
            # a detected language is forced from then on (the model's own answer, this utterance's).
            language = language or self._language
            prefix = self._settled
        request = EngineRequest(
            samples,
            self.options.context,
            language,
            prefix,
            max_new_tokens=self._config.step_tokens + (0 if forceable_name(language) else _HEADER_TOKENS),
            encoder_cache=self._encoder_cache,
        )
        async with self._recognizer.rounds.turn():
            result = await self._recognizer.scheduler.submit(request, priority=Priority.LIVE)
        if self._closed or self._finished:
            return None
        if self._language is None:
            self._language = result.language
        hypothesis = result.text
        self._hypothesis = hypothesis
        if len(samples) < self._config.min_settle_s * SAMPLE_RATE or result.finish_reason == "repetition":
            return Partial(self._settled, _stash_after(self._settled, hypothesis), self._language)
        self._settled, stash = split_hypothesis(self._settled, hypothesis, self._config.hold_words)
        return Partial(self._settled, stash, self._language)

    # --- the end ---------------------------------------------------------------------------------------

    async def final(self) -> Final:
        """Offline-quality decode of the whole utterance, ahead of all partial steps; no partials
        after it. Silence gives an empty transcript. Calling it again gives the same result."""
        if self._closed:
            return Final("", self.options.language)
        if self._final is None:
            self._finished = True
            self._cancel_steps()
            cache, self._encoder_cache = self._encoder_cache, None  # the final's, then dropped
            self._final = asyncio.ensure_future(self._decode_final(cache))
        final = self._final
        try:
            return await asyncio.shield(final)
        except asyncio.CancelledError:
            if final.cancelled() and self._closed:
                return Final("", self.options.language)
            raise

    async def _decode_final(self, cache: object | None) -> Final:
        samples = self._audio()
        if not len(samples) or not await self._speech.heard(samples):
            return Final("", self.options.language)
        request = EngineRequest(
            samples, self.options.context, self.options.language, draft=self._draft(), encoder_cache=cache
        )
        result = await self._recognizer.scheduler.submit(request, priority=Priority.LIVE_FINAL)
        text = result.text
        if self.options.enable_itn and text:
            text = await asyncio.to_thread(_apply_itn, text, result.language)
        return Final(text, result.language)

    def _draft(self) -> str:
        """The last partial's whole hypothesis as the final's draft (`EngineRequest.draft`): the final
        decodes the whole utterance afresh, and where it writes what the partial said, it checks
        those tokens in one pass instead of writing them one by one. With the language not forced,
        the draft starts with the header the model writes (the language the partials detected)."""
        text = sanitize_context(self._hypothesis)
        if not text:
            return ""
        if forceable_name(self.options.language) is not None:
            return text
        name = forceable_name(self._language)
        return f"language {name}<asr_text>{text}" if name is not None else ""

    def close(self) -> None:
        """Free the audio and cancel any pending step; idempotent. Called on disconnects."""
        if self._closed:
            return
        self._closed = True
        self._cancel_steps()
        if self._final is not None and not self._final.done():
            self._final.cancel()
        self._chunks = []
        self._samples = np.zeros(0, dtype=np.float32)
        self._count = 0
        self._encoder_cache = None
        self._speech.close()

    def _cancel_steps(self) -> None:
        for step in (self._follow, self._step):
            if step is not None and not step.done():
                step.cancel()
        self._follow = None


class Rounds:
    """Partial steps of all utterances go to the model in rounds, so that they batch.

    A step asked for while a round is on the model waits for it to end; then all waiting steps start
    together as the next round, and the scheduler batches what arrives together. Steps asked for
    within `join_s` of a round's start join it: that is how an utterance's follow-up step, released
    by the end of its previous step (the same moment the round ends), stays in the same round as the
    other sessions. Without rounds, sessions whose steps take longer than their step interval take
    turns on the model one step at a time (measured: mean batch 1.0 at 2 sessions, bench/RESULTS.md),
    each waiting a whole step for the other's. Used on the event loop only."""

    join_s = 0.05

    def __init__(self) -> None:
        self._in_flight = 0
        self._started = 0.0
        self._next: asyncio.Future[None] | None = None

    @contextlib.asynccontextmanager
    async def turn(self) -> AsyncIterator[None]:
        """Wait for this step's round, then hold a place in it until the step ends."""
        loop = asyncio.get_running_loop()
        if self._in_flight and loop.time() - self._started > self.join_s:
            if self._next is None:
                self._next = loop.create_future()
            await asyncio.shield(self._next)
        if not self._in_flight:
            self._started = loop.time()
        self._in_flight += 1
        try:
            yield
        finally:
            self._in_flight -= 1
            if not self._in_flight and self._next is not None:
                self._next.set_result(None)
                self._next = None

    @property
    def waiting(self) -> bool:
        """Whether steps wait for the next round."""
        return self._next is not None


def _stash_after(settled: str, hypothesis: str) -> str:
    return hypothesis[len(settled) :] if hypothesis.startswith(settled) else ""


def _apply_itn(text: str, language: str | None) -> str:
    """ITN as the file APIs apply it: per sentence (`SentenceItn`)."""
    normalizer = SentenceItn(True)
    return normalizer.push(text, language) + normalizer.finish(language)


class _SpeechGate:
    """Whether an utterance holds speech, fed incrementally: the VAD stream reads each ~2 s block of
    audio once; only the incomplete last block is looked at again (on its own) at each step."""

    def __init__(self, vad: VoiceActivityDetector | None, config: LiveConfig) -> None:
        self._vad = vad
        self._stream: VadStream | None = vad.stream() if vad is not None else None
        self._threshold = config.speech_threshold
        self._needed = max(1, round(config.min_speech_ms * SAMPLE_RATE / 1000 / FRAME_SAMPLES))
        self._fed = 0
        self._frames = 0
        self._lock = threading.Lock()

    async def heard(self, samples: np.ndarray) -> bool:
        """True once `samples` (the utterance so far) hold enough speech frames."""
        if self._stream is None or self._frames >= self._needed:
            return True
        return await asyncio.to_thread(self._feed, samples)

    def _feed(self, samples: np.ndarray) -> bool:
        with self._lock:
            if self._stream is None or self._vad is None:
                return True
            new = samples[self._fed :]
            self._fed = len(samples)
            if len(new):
                self._frames += int((self._stream.feed(new) >= self._threshold).sum())
            if self._frames >= self._needed:
                return True
            tail = samples[self._stream.frames_done * FRAME_SAMPLES :]
            if not len(tail):
                return False
            tail_frames = int((self._vad.speech_probabilities(tail) >= self._threshold).sum())
            return self._frames + tail_frames >= self._needed

    def close(self) -> None:
        with self._lock:
            self._stream = None
