"""The model scheduler on the tiny model: same results batched, overload, cancellation, worker death,
priorities, admission before any work, deadlines."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence

import pytest

from qasr.engine.base import Job
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.engine.scheduler import Priority, Scheduler, SchedulerPolicy
from qasr.errors import EngineUnavailable, Overloaded, QueueTimeout
from qasr.types import Delta, EngineRequest, EngineResult
from tests.helpers import EngineWrapper, noise


class _GatedEngine(EngineWrapper):
    """Wraps the real engine; each `run` waits for the test to open the gate (no sleeps, no timing)."""

    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.batches: list[int] = []
        self.fail_with: BaseException | None = None

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        self.entered.set()
        self.gate.wait(timeout=60)
        if self.fail_with is not None:
            raise self.fail_with
        self.batches.append(len(jobs))
        return self.inner.run(jobs)


async def _wait(event: threading.Event) -> None:
    await asyncio.to_thread(event.wait, 60)


def test_concurrent_requests_are_batched_with_identical_results(engine: Qwen3ASREngine) -> None:
    clips = [noise(s, seed=i) for i, s in enumerate((1.0, 1.5, 2.0, 3.0, 0.8, 2.5))]
    expected = engine.transcribe([EngineRequest(c) for c in clips])
    gated = _GatedEngine(engine)

    async def main() -> list[EngineResult]:
        scheduler = Scheduler(gated, SchedulerPolicy(max_batch_size=4, max_wait_ms=5, max_queue=16))  # type: ignore[arg-type]
        scheduler.start()
        try:
            first = asyncio.ensure_future(scheduler.submit(EngineRequest(clips[0])))
            await _wait(gated.entered)  # the worker holds request 0; the rest queue up behind it
            rest = [asyncio.ensure_future(scheduler.submit(EngineRequest(c))) for c in clips[1:]]
            while scheduler.queue_depth < len(rest):
                await asyncio.sleep(0.01)
            gated.gate.set()
            return [await first, *[await r for r in rest]]
        finally:
            scheduler.close()

    results = asyncio.run(main())
    assert results == expected
    assert gated.batches == [1, 4, 1]  # five waited: one full batch of 4, then the last one


def test_overload_refuses_then_recovers(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> None:
        scheduler = Scheduler(gated, SchedulerPolicy(max_batch_size=1, max_wait_ms=0, max_queue=2))  # type: ignore[arg-type]
        scheduler.start()
        try:
            running = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
            await _wait(gated.entered)
            queued = [asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0)))) for _ in range(2)]
            while scheduler.queue_depth < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(Overloaded, match="busy"):
                await scheduler.submit(EngineRequest(noise(1.0)))
            gated.gate.set()
            await asyncio.gather(running, *queued)
            assert (await scheduler.submit(EngineRequest(noise(1.0)))).audio_tokens == 13
        finally:
            scheduler.close()

    asyncio.run(main())


def test_cancelled_request_leaves_and_others_still_batch(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> None:
        scheduler = Scheduler(gated, SchedulerPolicy(max_batch_size=4, max_wait_ms=5, max_queue=8))  # type: ignore[arg-type]
        scheduler.start()
        try:
            first = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
            await _wait(gated.entered)
            doomed = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
            others = [
                asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0, seed=i)))) for i in range(2)
            ]
            while scheduler.queue_depth < 3:
                await asyncio.sleep(0.01)
            doomed.cancel()
            while scheduler.queue_depth != 2:
                await asyncio.sleep(0.01)
            gated.gate.set()
            await asyncio.gather(first, *others)
            assert doomed.cancelled()
            assert gated.batches == [1, 2]
        finally:
            scheduler.close()

    asyncio.run(main())


def test_lone_request_cancelled_while_the_batch_gathers_leaves_the_worker_running(
    engine: Qwen3ASREngine,
) -> None:
    """The only waiting request leaves while the worker waits for company (a live final cancels its
    utterance's queued partial this way): the worker starts over instead of dying."""

    async def main() -> None:
        scheduler = Scheduler(engine, SchedulerPolicy(max_batch_size=4, max_wait_ms=2000, max_queue=8))
        scheduler.start()
        try:
            doomed = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
            while scheduler.queue_depth < 1:
                await asyncio.sleep(0.01)
            doomed.cancel()
            while scheduler.queue_depth:
                await asyncio.sleep(0.01)
            result = await scheduler.submit(EngineRequest(noise(1.0, seed=3)))
            assert result.text == engine.transcribe([EngineRequest(noise(1.0, seed=3))])[0].text
            assert scheduler.healthy and scheduler.error is None
        finally:
            scheduler.close()

    asyncio.run(main())


def test_cancel_mid_generation_ends_the_row(engine: Qwen3ASREngine) -> None:
    """A request cancelled while its batch runs stops at the next token; its neighbour finishes. The
    engine's own results show it: the cancelled row ended as `cancelled`, long before its budget."""
    recording = _Recording(engine)
    recording.gate.set()
    results: list[EngineResult] = []
    inner_run = recording.run

    def run(jobs: Sequence[Job]) -> list[EngineResult]:
        out = inner_run(jobs)
        results.extend(out)
        return out

    recording.run = run  # type: ignore[method-assign]
    doomed_clip = noise(30.0, seed=3)

    async def main() -> None:
        scheduler = Scheduler(recording, SchedulerPolicy(max_batch_size=2, max_wait_ms=50))  # type: ignore[arg-type]
        scheduler.start()
        try:
            got_delta = asyncio.Event()
            doomed = asyncio.ensure_future(
                scheduler.submit(EngineRequest(doomed_clip), on_delta=lambda d: got_delta.set())
            )
            neighbour = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(2.0, seed=4))))
            await got_delta.wait()
            doomed.cancel()
            result = await neighbour
            assert result.finish_reason in {"stop", "length", "repetition"}
            with pytest.raises(asyncio.CancelledError):
                await doomed
            # the slot is free: the next request runs
            assert (await scheduler.submit(EngineRequest(noise(1.0)))).audio_tokens == 13
        finally:
            scheduler.close()

    asyncio.run(main())
    # The first batch held both rows: the doomed one (30 s of audio, the larger token budget) ended
    # as cancelled, after a few tokens only.
    first_batch = results[:2]
    cancelled = [r for r in first_batch if r.finish_reason == "cancelled"]
    assert len(cancelled) == 1
    assert cancelled[0].audio_tokens == engine.count_audio_tokens(len(doomed_clip))
    assert cancelled[0].output_tokens < engine.token_budget(len(doomed_clip))


def test_streaming_deltas_while_batched(engine: Qwen3ASREngine) -> None:
    async def main() -> tuple[list[Delta], EngineResult]:
        scheduler = Scheduler(engine, SchedulerPolicy(max_batch_size=4, max_wait_ms=50))
        scheduler.start()
        try:
            deltas: list[Delta] = []
            streamed = asyncio.ensure_future(
                scheduler.submit(EngineRequest(noise(3.0, seed=5)), deltas.append)
            )
            other = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(2.0, seed=6))))
            result, _ = await asyncio.gather(streamed, other)
            return deltas, result
        finally:
            scheduler.close()

    deltas, result = asyncio.run(main())
    assert len(deltas) >= 2 and "".join(d.text for d in deltas) == result.text


def test_dead_worker_fails_waiting_requests_at_once(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> Scheduler:
        scheduler = Scheduler(gated, SchedulerPolicy(max_batch_size=1, max_wait_ms=0, max_queue=8))  # type: ignore[arg-type]
        scheduler.start()
        running = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
        await _wait(gated.entered)
        waiting = [asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0)))) for _ in range(3)]
        while scheduler.queue_depth < 3:
            await asyncio.sleep(0.01)
        gated.fail_with = SystemExit("worker killed")  # not an Exception: it kills the worker thread
        gated.gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(running, *waiting, return_exceptions=True), 30)
        # the running request and the three waiting ones all fail with the same clear error
        assert [type(o) for o in outcomes] == [EngineUnavailable] * 4
        with pytest.raises(EngineUnavailable, match="restarted"):
            await scheduler.submit(EngineRequest(noise(1.0)))
        return scheduler

    scheduler = asyncio.run(main())
    assert not scheduler.healthy


def test_failed_batch_does_not_kill_the_worker(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)
    gated.gate.set()

    async def main() -> None:
        scheduler = Scheduler(gated, SchedulerPolicy(max_batch_size=1, max_wait_ms=0))  # type: ignore[arg-type]
        scheduler.start()
        try:
            gated.fail_with = RuntimeError("boom")
            with pytest.raises(RuntimeError, match="boom"):
                await scheduler.submit(EngineRequest(noise(1.0)))
            gated.fail_with = None
            assert (await scheduler.submit(EngineRequest(noise(1.0)))).audio_tokens == 13
            assert scheduler.healthy
        finally:
            scheduler.close()

    asyncio.run(main())


class _Recording(_GatedEngine):
    """Also records which thread prepared each request and what reached `run`."""

    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.prepared_in: list[str] = []
        self.run_in: list[str] = []
        self.received: list[object] = []

    def prepare(self, request: EngineRequest) -> object:
        self.prepared_in.append(threading.current_thread().name)
        return self.inner.prepare(request)

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        self.run_in.append(threading.current_thread().name)
        self.received.extend(job.prepared for job in jobs)
        return super().run(jobs)


def test_inputs_are_prepared_off_the_model_thread_and_the_loop(engine: Qwen3ASREngine) -> None:
    clips = [noise(s, seed=i) for i, s in enumerate((1.0, 2.5))]
    expected = engine.transcribe([EngineRequest(c) for c in clips])
    recording = _Recording(engine)
    recording.gate.set()

    async def main() -> list[EngineResult]:
        policy = SchedulerPolicy(max_batch_size=2, max_wait_ms=0, max_hold_ms=600_000)
        scheduler = Scheduler(recording, policy)  # type: ignore[arg-type]
        scheduler.start()
        try:
            with scheduler.admit() as second:
                first = asyncio.ensure_future(scheduler.submit(EngineRequest(clips[0])))
                await asyncio.sleep(0)
                return [await scheduler.submit(EngineRequest(clips[1]), admission=second), await first]
        finally:
            scheduler.close()

    second, first = asyncio.run(main())
    assert [first, second] == expected
    assert recording.prepared_in == ["qasr-prepare_0"] * 2
    assert recording.run_in == ["qasr-model-worker"]
    assert [type(p).__name__ for p in recording.received] == ["PreparedClip"] * 2


def test_a_partial_batch_waits_for_an_admitted_request(engine: Qwen3ASREngine) -> None:
    recording = _Recording(engine)
    recording.gate.set()

    async def main() -> Scheduler:
        # No wait for company at all, but a long hold for requests known to be coming.
        policy = SchedulerPolicy(max_batch_size=4, max_wait_ms=0, max_hold_ms=600_000)
        scheduler = Scheduler(recording, policy)  # type: ignore[arg-type]
        scheduler.start()
        try:
            coming = scheduler.admit()
            first = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
            while scheduler.queue_depth < 1:
                await asyncio.sleep(0.01)
            assert scheduler.arriving == 1  # only the admission: the first request is queued
            later = scheduler.submit(EngineRequest(noise(2.0)), admission=coming)
            await asyncio.wait_for(asyncio.gather(first, later), 60)
            # An admission that was never used, released: the partial batch goes at once (not after
            # the 10-minute hold).
            with scheduler.admit():
                alone = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
                while scheduler.queue_depth < 1:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(alone, 60)
            return scheduler
        finally:
            scheduler.close()

    scheduler = asyncio.run(main())
    assert recording.batches == [2, 1]  # the two met in one batch although max_wait_ms is 0
    assert scheduler.arriving == 0


def test_an_admission_counts_once(engine: Qwen3ASREngine) -> None:
    scheduler = Scheduler(_GatedEngine(engine))  # type: ignore[arg-type]
    admission = scheduler.admit()
    with scheduler.admit():
        assert scheduler.arriving == 2
    assert scheduler.arriving == 1
    admission.release()
    admission.release()  # a second release does nothing
    assert scheduler.arriving == 0


def test_requests_being_prepared_count_against_the_queue(engine: Qwen3ASREngine) -> None:
    held = _Recording(engine)
    held.gate.set()
    preparing = threading.Event()
    inner_prepare = held.prepare

    def slow_prepare(request: EngineRequest) -> object:
        preparing.wait(60)
        return inner_prepare(request)

    held.prepare = slow_prepare  # type: ignore[method-assign]

    async def main() -> list[EngineResult]:
        scheduler = Scheduler(held, SchedulerPolicy(max_batch_size=4, max_wait_ms=0, max_queue=2))  # type: ignore[arg-type]
        scheduler.start()
        try:
            pending = [asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0)))) for _ in range(2)]
            while scheduler.arriving < 2:
                await asyncio.sleep(0.01)
            assert scheduler.queue_depth == 0  # both still being prepared, neither queued yet
            with pytest.raises(Overloaded, match="busy"):
                await scheduler.submit(EngineRequest(noise(1.0)))
            preparing.set()
            return list(await asyncio.wait_for(asyncio.gather(*pending), 60))
        finally:
            scheduler.close()

    results = asyncio.run(main())
    assert [r.audio_tokens for r in results] == [13, 13]


def test_a_request_being_prepared_when_the_worker_dies_fails_too(engine: Qwen3ASREngine) -> None:
    recording = _Recording(engine)
    release = threading.Event()
    inner_prepare = recording.prepare

    def prepare(request: EngineRequest) -> object:
        if request.context == "late":
            release.wait(60)
        return inner_prepare(request)

    recording.prepare = prepare  # type: ignore[method-assign]

    async def main() -> None:
        scheduler = Scheduler(recording, SchedulerPolicy(max_batch_size=1, max_wait_ms=0))  # type: ignore[arg-type]
        scheduler.start()
        running = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0))))
        await _wait(recording.entered)
        late = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0), context="late")))
        while scheduler.arriving < 1:
            await asyncio.sleep(0.01)
        recording.fail_with = SystemExit("worker killed")
        recording.gate.set()
        with pytest.raises(EngineUnavailable):
            await asyncio.wait_for(running, 30)
        release.set()  # its inputs are ready only now, after the worker died
        with pytest.raises(EngineUnavailable, match="restarted"):
            await asyncio.wait_for(late, 30)

    asyncio.run(main())


def test_background_work_never_delays_interactive_beyond_the_running_batch(engine: Qwen3ASREngine) -> None:
    """While a background batch runs, more background work and then an interactive request queue
    up: the interactive one runs next, before every background request that was queued earlier."""
    recording = _Recording(engine)
    order: list[str] = []
    inner_run = recording.run

    def run(jobs: Sequence[Job]) -> list[EngineResult]:
        order.extend(job.request.context for job in jobs)
        return inner_run(jobs)

    recording.run = run  # type: ignore[method-assign]

    async def main() -> None:
        policy = SchedulerPolicy(max_batch_size=2, max_wait_ms=0, max_hold_ms=0)
        scheduler = Scheduler(recording, policy)  # type: ignore[arg-type]
        scheduler.start()
        try:
            background = Priority.BACKGROUND

            def submit(name: str, priority: Priority) -> asyncio.Future[EngineResult]:
                request = EngineRequest(noise(1.0, seed=len(name)), context=name)
                return asyncio.ensure_future(scheduler.submit(request, priority=priority))

            running = submit("bg-running", background)
            await _wait(recording.entered)  # the worker holds the first background batch
            queued = [submit(f"bg-{i}", background) for i in range(4)]
            while scheduler.depth(background) < 4:
                await asyncio.sleep(0.01)
            interactive = submit("interactive", Priority.INTERACTIVE)
            while scheduler.depth(Priority.INTERACTIVE) < 1:
                await asyncio.sleep(0.01)
            recording.gate.set()
            await asyncio.wait_for(asyncio.gather(running, interactive, *queued), 60)
        finally:
            scheduler.close()

    asyncio.run(main())
    assert order[0] == "bg-running"
    assert order[1] == "interactive"  # next, alone: background never rides along with it
    assert recording.batches[:2] == [1, 1]
    assert sorted(order[2:]) == [f"bg-{i}" for i in range(4)]


def test_background_load_never_pushes_interactive_callers_into_429(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> None:
        policy = SchedulerPolicy(max_batch_size=1, max_wait_ms=0, max_queue=2, max_background_queue=3)
        scheduler = Scheduler(gated, policy)  # type: ignore[arg-type]
        scheduler.start()
        try:
            bg = Priority.BACKGROUND
            jobs = [asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0)), priority=bg))]
            await _wait(gated.entered)
            jobs += [
                asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0)), priority=bg))
                for _ in range(3)
            ]
            while scheduler.depth(bg) < 3:
                await asyncio.sleep(0.01)
            with pytest.raises(Overloaded):  # the background class is full ...
                scheduler.admit(bg)
            # ... and interactive callers still get in, until their own bound
            with scheduler.admit(), scheduler.admit(), pytest.raises(Overloaded):
                scheduler.admit()
            gated.gate.set()
            await asyncio.wait_for(asyncio.gather(*jobs), 60)
        finally:
            scheduler.close()

    asyncio.run(main())


def test_starvation_is_bounded(engine: Qwen3ASREngine) -> None:
    """A background request that waited longer than `max_starvation_s` goes next, before interactive
    work that arrived later."""
    recording = _Recording(engine)
    order: list[str] = []
    inner_run = recording.run

    def run(jobs: Sequence[Job]) -> list[EngineResult]:
        order.extend(job.request.context for job in jobs)
        return inner_run(jobs)

    recording.run = run  # type: ignore[method-assign]

    async def main() -> None:
        policy = SchedulerPolicy(max_batch_size=1, max_wait_ms=0, max_hold_ms=0, max_starvation_s=0.0)
        scheduler = Scheduler(recording, policy)  # type: ignore[arg-type]
        scheduler.start()
        try:

            def submit(name: str, priority: Priority) -> asyncio.Future[EngineResult]:
                request = EngineRequest(noise(1.0), context=name)
                return asyncio.ensure_future(scheduler.submit(request, priority=priority))

            first = submit("first", Priority.INTERACTIVE)
            await _wait(recording.entered)
            starving = submit("background", Priority.BACKGROUND)
            while scheduler.depth(Priority.BACKGROUND) < 1:
                await asyncio.sleep(0.01)
            later = submit("interactive", Priority.INTERACTIVE)
            while scheduler.depth(Priority.INTERACTIVE) < 1:
                await asyncio.sleep(0.01)
            recording.gate.set()
            await asyncio.wait_for(asyncio.gather(first, starving, later), 60)
        finally:
            scheduler.close()

    asyncio.run(main())
    assert order == ["first", "background", "interactive"]


def test_a_request_past_its_deadline_never_reaches_the_model(engine: Qwen3ASREngine) -> None:
    recording = _Recording(engine)
    seen: list[str] = []
    inner_run = recording.run

    def run(jobs: Sequence[Job]) -> list[EngineResult]:
        seen.extend(job.request.context for job in jobs)
        return inner_run(jobs)

    recording.run = run  # type: ignore[method-assign]

    async def main() -> None:
        scheduler = Scheduler(recording, SchedulerPolicy(max_batch_size=1, max_wait_ms=0))  # type: ignore[arg-type]
        scheduler.start()
        try:
            running = asyncio.ensure_future(scheduler.submit(EngineRequest(noise(1.0), context="running")))
            await _wait(recording.entered)
            late = asyncio.ensure_future(
                scheduler.submit(EngineRequest(noise(1.0), context="late"), deadline=time.monotonic() + 0.2)
            )
            with pytest.raises(QueueTimeout, match="waited too long"):
                await asyncio.wait_for(late, 30)  # answered while the batch before it still runs
            recording.gate.set()
            await asyncio.wait_for(running, 60)
        finally:
            scheduler.close()

    asyncio.run(main())
    assert seen == ["running"]
    assert recording.prepared_in and len(recording.run_in) == 1
