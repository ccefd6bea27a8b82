"""The live recognizer on the tiny random model, through the real scheduler and engine: silence,
coalescing, settled text, independence of utterances, finals before partials, close."""

from __future__ import annotations

import asyncio
import itertools
import threading
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from qasr.audio.decode import decode_audio
from qasr.audio.vad import VoiceActivityDetector
from qasr.engine.base import Job
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.engine.scheduler import Scheduler
from qasr.live import LiveConfig, LiveOptions, LiveRecognizer, Partial
from qasr.types import SAMPLE_RATE, EngineRequest, EngineResult
from tests.helpers import EngineWrapper, synthesize


class _Watching(EngineWrapper):
    """The real engine; records each request and can hold batches until released."""

    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.requests: list[EngineRequest] = []
        self.batches: list[list[EngineRequest]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def run(self, jobs: Sequence[Job[Any]]) -> Any:
        self.entered.set()
        self.gate.wait(30)
        batch = [job.request for job in jobs]
        self.batches.append(batch)
        self.requests.extend(batch)
        return self.inner.run(jobs)


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


@pytest.fixture(scope="module")
def speech(tmp_path_factory: pytest.TempPathFactory) -> np.ndarray:
    """About 3 s of espeak-ng speech at 16 kHz."""
    path = synthesize(
        "the quick brown fox jumps over the lazy dog near the river bank",
        tmp_path_factory.mktemp("live") / "speech.wav",
    )
    return decode_audio(Path(path)).samples


Live = tuple[LiveRecognizer, _Watching]


@pytest.fixture
def live(engine: Qwen3ASREngine, vad: VoiceActivityDetector) -> Live:
    """A recognizer over a scheduler that is started inside each test's event loop (`_run`)."""
    watching = _Watching(engine)
    scheduler: Scheduler[EngineRequest, EngineResult] = Scheduler(watching)  # type: ignore[arg-type]
    config = LiveConfig(min_settle_s=0.5, step_tokens=8)
    return LiveRecognizer(scheduler, vad, config, encoder_cache=engine.new_window_cache), watching


def _run(live: Live, body: Callable[[LiveRecognizer, _Watching], Awaitable[None]]) -> None:
    recognizer, watching = live

    async def main() -> None:
        recognizer.scheduler.start()
        try:
            await body(recognizer, watching)
        finally:
            recognizer.scheduler.close()

    asyncio.run(main())


def _chunks(samples: np.ndarray, seconds: float) -> list[np.ndarray]:
    step = int(seconds * SAMPLE_RATE)
    return [samples[i : i + step] for i in range(0, len(samples), step)]


def test_silence_gives_no_text_and_never_reaches_the_model(live: Live) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions())
        utterance.append(np.zeros(SAMPLE_RATE * 3, dtype=np.float32))
        assert await utterance.partial() == Partial("", "", None)
        final = await utterance.final()
        assert final.transcript == ""
        assert watching.requests == []

    _run(live, body)


def test_partial_steps_decode_only_a_few_tokens_and_settled_text_only_grows(
    live: Live, speech: np.ndarray
) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions(language="en"))
        texts: list[str] = []
        for chunk in _chunks(speech, 0.5):
            utterance.append(chunk)
            partial = await utterance.partial()
            assert partial is not None
            assert partial.language == "en"
            texts.append(partial.text)
        assert await utterance.partial() is None  # nothing new since the last step
        for before, after in itertools.pairwise(texts):
            assert after.startswith(before)
        assert texts[-1], "random weights write text up to the cap, so something must have settled"
        assert all(r.max_new_tokens == 8 for r in watching.requests)
        # Each step forces what was settled before it (steps before any speech never reach the model).
        before = ["", *texts[:-1]]
        assert [r.prefix for r in watching.requests] == before[-len(watching.requests) :]

    _run(live, body)


def test_final_is_one_full_decode_without_prefix(
    live: Live, speech: np.ndarray, engine: Qwen3ASREngine
) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions(language="en", context="fox"))
        for chunk in _chunks(speech, 1.0):
            utterance.append(chunk)
            await utterance.partial()
        final = await utterance.final()
        last = watching.requests[-1]
        assert last.prefix == "" and last.max_new_tokens is None
        assert len(last.samples) == len(speech)
        offline = engine.transcribe([EngineRequest(speech.astype(np.float32), "fox", "en")])[0]
        assert final.transcript == offline.text
        assert final.language == "en"
        assert await utterance.partial() is None  # no partials after the final
        assert await utterance.final() == final  # the same result, not a second decode
        assert sum(r.max_new_tokens is None for r in watching.requests) == 1

    _run(live, body)


def test_utterances_share_nothing(live: Live, speech: np.ndarray) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        first = recognizer.utterance(LiveOptions(language="en"))
        for chunk in _chunks(speech, 1.0):
            first.append(chunk)
            await first.partial()
        await first.final()
        watching.requests.clear()
        second = recognizer.utterance(LiveOptions(language="en"))
        second.append(speech[:SAMPLE_RATE])
        partial = await second.partial()
        assert partial is not None
        assert watching.requests[0].prefix == ""  # nothing of the first utterance is forced
        assert len(watching.requests[0].samples) == SAMPLE_RATE

    _run(live, body)


def test_steps_coalesce_while_one_is_in_flight(live: Live, speech: np.ndarray) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions(language="en"))
        utterance.append(speech[:SAMPLE_RATE])
        watching.gate.clear()
        watching.entered.clear()
        first = asyncio.ensure_future(utterance.partial())
        await asyncio.to_thread(watching.entered.wait, 30)  # the first step is on the model
        same = asyncio.ensure_future(utterance.partial())  # no new audio: shares the step in flight
        await asyncio.sleep(0)  # let it ask before more audio arrives
        utterance.append(speech[SAMPLE_RATE : 2 * SAMPLE_RATE])
        later = [asyncio.ensure_future(utterance.partial()) for _ in range(5)]  # one follow-up for all
        await asyncio.sleep(0)
        watching.gate.set()
        results = await asyncio.gather(first, same, *later)
        assert results[0] == results[1]
        assert all(r == results[2] for r in results[2:])
        assert [len(r.samples) for r in watching.requests] == [SAMPLE_RATE, 2 * SAMPLE_RATE]
        utterance.append(speech[2 * SAMPLE_RATE : 3 * SAMPLE_RATE])
        both = await asyncio.gather(utterance.partial(), utterance.partial())  # asked in the same tick
        assert both[0] == both[1] and both[0] is not None
        assert len(watching.requests) == 3

    _run(live, body)


def test_close_cancels_the_pending_step_and_frees_audio(live: Live, speech: np.ndarray) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions(language="en"))
        utterance.append(speech[:SAMPLE_RATE])
        watching.gate.clear()
        watching.entered.clear()
        blocker = recognizer.utterance(LiveOptions(language="en"))
        blocker.append(speech[:SAMPLE_RATE])
        running = asyncio.ensure_future(blocker.partial())
        await asyncio.to_thread(watching.entered.wait, 30)
        queued = asyncio.ensure_future(utterance.partial())
        while recognizer.scheduler.queue_depth < 1:
            await asyncio.sleep(0.01)
        utterance.close()
        utterance.close()  # idempotent
        assert await queued is None
        assert recognizer.scheduler.queue_depth == 0  # the queued step left the queue
        assert utterance.duration_s == 0.0
        watching.gate.set()
        assert await running is not None
        assert await utterance.partial() is None
        assert (await utterance.final()).transcript == ""
        assert len(watching.requests) == 1

    _run(live, body)


def test_cached_windows_give_the_full_encode(engine: Qwen3ASREngine, speech: np.ndarray) -> None:
    """Encoding only the open window after the cached ones gives the embeddings of one encode of the
    whole clip. Tolerance 1e-5 (float32): the only difference allowed is the log-mel floor (the
    clip's maximum minus 8), which moves if louder audio arrives after a window was cached; this
    repeated clip reaches its maximum in the first second, so here they agree to rounding."""
    audio = np.tile(speech, 6)[: 21 * SAMPLE_RATE].astype(np.float32)
    cache = engine.new_window_cache()
    with torch.inference_mode():
        for seconds in (3.0, 8.5, 12.0, 17.0, 21.0):
            clip = engine.prepare(EngineRequest(audio[: int(seconds * SAMPLE_RATE)]))
            cached = engine.audio_embeddings([clip], [cache])[0]
        whole = engine.prepare(EngineRequest(audio))
        full = engine.model.get_audio_features(
            torch.from_numpy(whole.features[None]), torch.from_numpy(whole.features_mask[None])
        ).pooler_output
    assert cache.windows == 2
    assert cached.shape == full.shape
    assert torch.allclose(cached, full, atol=1e-5, rtol=0)


def test_each_step_encodes_only_the_open_window(
    live: Live, engine: Qwen3ASREngine, speech: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 20 s utterance stepped every second: no step encodes more than one window of mel frames plus
    the second appended since the last step (a window is cached at the first step after it is
    complete), and a step's output equals decoding the same request without the cache. The final
    encodes only what follows the cached windows and equals the offline decode."""
    encoded: list[int] = []
    original = engine.model.get_audio_features

    def spy(features: torch.Tensor, mask: torch.Tensor, **kw: Any) -> Any:
        encoded.extend(int(n) for n in mask.sum(dim=1))
        return original(features, mask, **kw)

    monkeypatch.setattr(engine.model, "get_audio_features", spy)
    audio = np.tile(speech, 6)[: 20 * SAMPLE_RATE]

    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions(language="en"))
        partial = None
        for chunk in _chunks(audio, 1.0):
            utterance.append(chunk)
            partial = await utterance.partial()
        assert partial is not None
        steps = [r for r in watching.requests if r.encoder_cache is not None]
        assert len(steps) == 20
        assert max(encoded) <= 800 + 100
        assert steps[-1].encoder_cache.windows == 2  # type: ignore[attr-defined]
        last = steps[-1]
        uncached = engine.transcribe(
            [EngineRequest(last.samples, last.context, last.language, last.prefix, last.max_new_tokens)]
        )[0]
        encoded.clear()
        final = await utterance.final()
        assert watching.requests[-1].encoder_cache is last.encoder_cache  # the final reuses the windows
        assert 0 < sum(encoded) <= 2000 - 2 * 800 + 2  # mel frames after the two cached windows
        assert final.transcript == engine.transcribe([EngineRequest(audio, "", "en")])[0].text
        assert partial.text + partial.stash == uncached.text

    _run(live, body)


def test_finals_go_before_partial_steps(live: Live, speech: np.ndarray) -> None:
    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        blocker, stepping, ending = (recognizer.utterance(LiveOptions(language="en")) for _ in range(3))
        for utterance in (blocker, stepping, ending):
            utterance.append(speech[: 2 * SAMPLE_RATE])
        watching.gate.clear()
        watching.entered.clear()
        running = asyncio.ensure_future(blocker.partial())
        await asyncio.to_thread(watching.entered.wait, 30)
        partial = asyncio.ensure_future(stepping.partial())
        while recognizer.scheduler.queue_depth < 1:
            await asyncio.sleep(0.01)
        final = asyncio.ensure_future(ending.final())
        while recognizer.scheduler.queue_depth < 2:
            await asyncio.sleep(0.01)
        watching.gate.set()
        await asyncio.gather(running, partial, final)
        order = [[r.max_new_tokens for r in batch] for batch in watching.batches]
        assert order == [[8], [None], [8]]  # the blocker, then the final, then the partial step

    _run(live, body)


def test_a_full_live_queue_refuses_steps(engine: Qwen3ASREngine, speech: np.ndarray) -> None:
    from qasr.engine.scheduler import SchedulerPolicy
    from qasr.errors import Overloaded

    async def main() -> None:
        watching = _Watching(engine)
        scheduler: Scheduler[EngineRequest, EngineResult] = Scheduler(watching, SchedulerPolicy(max_queue=1))  # type: ignore[arg-type]
        scheduler.start()
        try:
            recognizer = LiveRecognizer(scheduler, None)
            utterances = [recognizer.utterance(LiveOptions(language="en")) for _ in range(3)]
            for utterance in utterances:
                utterance.append(speech[:SAMPLE_RATE])
            watching.gate.clear()
            watching.entered.clear()
            running = asyncio.ensure_future(utterances[0].partial())
            await asyncio.to_thread(watching.entered.wait, 30)
            queued = asyncio.ensure_future(utterances[1].partial())
            while scheduler.queue_depth < 1:
                await asyncio.sleep(0.01)
            with pytest.raises(Overloaded):
                await utterances[2].partial()
            watching.gate.set()
            await asyncio.gather(running, queued)
        finally:
            scheduler.close()

    asyncio.run(main())


def test_steps_asked_during_a_round_run_together_in_the_next(live: Live, speech: np.ndarray) -> None:
    """A session's step asked for while another session's step is on the model waits outside the
    queue; when that step ends, it starts together with the other session's follow-up step, and the
    two run as one batch (instead of taking turns on the model)."""

    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        first, second = (recognizer.utterance(LiveOptions(language="en")) for _ in range(2))
        for utterance in (first, second):
            utterance.append(speech[: 2 * SAMPLE_RATE])
        watching.gate.clear()
        watching.entered.clear()
        running = asyncio.ensure_future(first.partial())
        await asyncio.to_thread(watching.entered.wait, 30)
        await asyncio.sleep(0.1)  # later than the round's join window
        waiting = asyncio.ensure_future(second.partial())
        while not recognizer.rounds.waiting:
            await asyncio.sleep(0.01)
        assert recognizer.scheduler.queue_depth == 0  # it waits for the round, not in the queue
        first.append(speech[2 * SAMPLE_RATE : 3 * SAMPLE_RATE])
        follow = asyncio.ensure_future(first.partial())
        await asyncio.sleep(0.1)
        assert recognizer.scheduler.queue_depth == 0
        watching.gate.set()
        await asyncio.gather(running, waiting, follow)
        sizes = [[len(r.samples) // SAMPLE_RATE for r in batch] for batch in watching.batches]
        assert sizes == [[2], [2, 3]] or sizes == [[2], [3, 2]]

    _run(live, body)


def test_the_final_carries_the_last_partial_as_its_draft(live: Live, speech: np.ndarray) -> None:
    """The final decodes the whole utterance afresh, with the last partial's whole hypothesis as the
    draft the engine checks (`EngineRequest.draft`); its transcript is the plain decode's."""

    async def body(recognizer: LiveRecognizer, watching: _Watching) -> None:
        utterance = recognizer.utterance(LiveOptions(language="en"))
        utterance.append(speech)
        partial = await utterance.partial()
        assert partial is not None and partial.text + partial.stash
        final = await utterance.final()
        request = watching.requests[-1]
        assert request.prefix == "" and request.max_new_tokens is None
        assert request.encoder_cache is watching.requests[0].encoder_cache is not None
        assert request.draft == partial.text + partial.stash
        plain = watching.inner.transcribe([EngineRequest(speech, "", "en")])[0]
        assert final.transcript == plain.text

    _run(live, body)
