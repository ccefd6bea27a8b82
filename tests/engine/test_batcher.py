"""Cross-request batching on the tiny model: same results, overload, cancellation, worker death."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence

import pytest

from qasr.engine.base import Job
from qasr.engine.batcher import Batcher, BatchPolicy
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.errors import EngineUnavailable, Overloaded
from qasr.types import Delta, EngineRequest, EngineResult
from tests.helpers import noise


class _GatedEngine:
    """Wraps the real engine; each `run` waits for the test to open the gate (no sleeps, no timing)."""

    def __init__(self, inner: Qwen3ASREngine) -> None:
        self.inner = inner
        self.name = inner.name
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
        batcher = Batcher(gated, BatchPolicy(max_batch_size=4, max_wait_ms=5, max_queue=16))  # type: ignore[arg-type]
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(EngineRequest(clips[0])))
            await _wait(gated.entered)  # the worker holds request 0; the rest queue up behind it
            rest = [asyncio.ensure_future(batcher.submit(EngineRequest(c))) for c in clips[1:]]
            while batcher.queue_depth < len(rest):
                await asyncio.sleep(0.01)
            gated.gate.set()
            return [await first, *[await r for r in rest]]
        finally:
            batcher.close()

    results = asyncio.run(main())
    assert results == expected
    assert gated.batches == [1, 4, 1]  # five waited: one full batch of 4, then the last one


def test_overload_refuses_then_recovers(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> None:
        batcher = Batcher(gated, BatchPolicy(max_batch_size=1, max_wait_ms=0, max_queue=2))  # type: ignore[arg-type]
        batcher.start()
        try:
            running = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
            await _wait(gated.entered)
            queued = [asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0)))) for _ in range(2)]
            while batcher.queue_depth < 2:
                await asyncio.sleep(0.01)
            with pytest.raises(Overloaded, match="busy"):
                await batcher.submit(EngineRequest(noise(1.0)))
            gated.gate.set()
            await asyncio.gather(running, *queued)
            assert (await batcher.submit(EngineRequest(noise(1.0)))).audio_tokens == 13
        finally:
            batcher.close()

    asyncio.run(main())


def test_cancelled_request_leaves_and_others_still_batch(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> None:
        batcher = Batcher(gated, BatchPolicy(max_batch_size=4, max_wait_ms=5, max_queue=8))  # type: ignore[arg-type]
        batcher.start()
        try:
            first = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
            await _wait(gated.entered)
            doomed = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
            others = [
                asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0, seed=i)))) for i in range(2)
            ]
            while batcher.queue_depth < 3:
                await asyncio.sleep(0.01)
            doomed.cancel()
            while batcher.queue_depth != 2:
                await asyncio.sleep(0.01)
            gated.gate.set()
            await asyncio.gather(first, *others)
            assert doomed.cancelled()
            assert gated.batches == [1, 2]
        finally:
            batcher.close()

    asyncio.run(main())


def test_cancel_mid_generation_ends_the_row(engine: Qwen3ASREngine) -> None:
    """A request cancelled while its batch runs stops at the next token; its neighbour finishes."""

    async def main() -> None:
        batcher = Batcher(engine, BatchPolicy(max_batch_size=2, max_wait_ms=50))
        batcher.start()
        try:
            got_delta = asyncio.Event()
            doomed = asyncio.ensure_future(
                batcher.submit(EngineRequest(noise(30.0, seed=3)), on_delta=lambda d: got_delta.set())
            )
            neighbour = asyncio.ensure_future(batcher.submit(EngineRequest(noise(2.0, seed=4))))
            await got_delta.wait()
            doomed.cancel()
            result = await neighbour
            assert result.finish_reason in {"stop", "length", "repetition"}
            with pytest.raises(asyncio.CancelledError):
                await doomed
            # the slot is free: the next request runs
            assert (await batcher.submit(EngineRequest(noise(1.0)))).audio_tokens == 13
        finally:
            batcher.close()

    asyncio.run(main())


def test_streaming_deltas_while_batched(engine: Qwen3ASREngine) -> None:
    async def main() -> tuple[list[Delta], EngineResult]:
        batcher = Batcher(engine, BatchPolicy(max_batch_size=4, max_wait_ms=50))
        batcher.start()
        try:
            deltas: list[Delta] = []
            streamed = asyncio.ensure_future(batcher.submit(EngineRequest(noise(3.0, seed=5)), deltas.append))
            other = asyncio.ensure_future(batcher.submit(EngineRequest(noise(2.0, seed=6))))
            result, _ = await asyncio.gather(streamed, other)
            return deltas, result
        finally:
            batcher.close()

    deltas, result = asyncio.run(main())
    assert len(deltas) >= 2 and "".join(d.text for d in deltas) == result.text


def test_dead_worker_fails_waiting_requests_at_once(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)

    async def main() -> Batcher:
        batcher = Batcher(gated, BatchPolicy(max_batch_size=1, max_wait_ms=0, max_queue=8))  # type: ignore[arg-type]
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
        await _wait(gated.entered)
        waiting = [asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0)))) for _ in range(3)]
        while batcher.queue_depth < 3:
            await asyncio.sleep(0.01)
        gated.fail_with = SystemExit("worker killed")  # not an Exception: it kills the worker thread
        gated.gate.set()
        outcomes = await asyncio.wait_for(asyncio.gather(running, *waiting, return_exceptions=True), 30)
        # the running request and the three waiting ones all fail with the same clear error
        assert [type(o) for o in outcomes] == [EngineUnavailable] * 4
        with pytest.raises(EngineUnavailable, match="restarted"):
            await batcher.submit(EngineRequest(noise(1.0)))
        return batcher

    batcher = asyncio.run(main())
    assert not batcher.healthy


def test_failed_batch_does_not_kill_the_worker(engine: Qwen3ASREngine) -> None:
    gated = _GatedEngine(engine)
    gated.gate.set()

    async def main() -> None:
        batcher = Batcher(gated, BatchPolicy(max_batch_size=1, max_wait_ms=0))  # type: ignore[arg-type]
        batcher.start()
        try:
            gated.fail_with = RuntimeError("boom")
            with pytest.raises(RuntimeError, match="boom"):
                await batcher.submit(EngineRequest(noise(1.0)))
            gated.fail_with = None
            assert (await batcher.submit(EngineRequest(noise(1.0)))).audio_tokens == 13
            assert batcher.healthy
        finally:
            batcher.close()

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
        policy = BatchPolicy(max_batch_size=2, max_wait_ms=0, max_hold_ms=600_000)
        batcher = Batcher(recording, policy)  # type: ignore[arg-type]
        batcher.start()
        try:
            with batcher.reserve() as second:
                first = asyncio.ensure_future(batcher.submit(EngineRequest(clips[0])))
                await asyncio.sleep(0)
                return [await batcher.submit(EngineRequest(clips[1]), reservation=second), await first]
        finally:
            batcher.close()

    second, first = asyncio.run(main())
    assert [first, second] == expected
    assert recording.prepared_in == ["qasr-prepare_0"] * 2
    assert recording.run_in == ["qasr-model-worker"]
    assert [type(p).__name__ for p in recording.received] == ["PreparedClip"] * 2


def test_a_partial_batch_waits_for_a_reserved_request(engine: Qwen3ASREngine) -> None:
    recording = _Recording(engine)
    recording.gate.set()

    async def main() -> Batcher:
        # No wait for company at all, but a long hold for requests known to be coming.
        policy = BatchPolicy(max_batch_size=4, max_wait_ms=0, max_hold_ms=600_000)
        batcher = Batcher(recording, policy)  # type: ignore[arg-type]
        batcher.start()
        try:
            coming = batcher.reserve()
            first = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
            while batcher.queue_depth < 1:
                await asyncio.sleep(0.01)
            assert batcher.arriving == 1  # only the reservation: the first request is queued
            later = batcher.submit(EngineRequest(noise(2.0)), reservation=coming)
            await asyncio.wait_for(asyncio.gather(first, later), 60)
            # A reservation that was never used, released: the partial batch goes at once (not after
            # the 10-minute hold).
            with batcher.reserve():
                alone = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
                while batcher.queue_depth < 1:
                    await asyncio.sleep(0.01)
            await asyncio.wait_for(alone, 60)
            return batcher
        finally:
            batcher.close()

    batcher = asyncio.run(main())
    assert recording.batches == [2, 1]  # the two met in one batch although max_wait_ms is 0
    assert batcher.arriving == 0


def test_a_reservation_counts_once() -> None:
    batcher = Batcher(_GatedEngine.__new__(_GatedEngine))  # type: ignore[arg-type]
    reservation = batcher.reserve()
    with batcher.reserve():
        assert batcher.arriving == 2
    assert batcher.arriving == 1
    reservation.release()
    reservation.release()  # a second release (a later submit given the same one) does nothing
    assert batcher.arriving == 0


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
        batcher = Batcher(held, BatchPolicy(max_batch_size=4, max_wait_ms=0, max_queue=2))  # type: ignore[arg-type]
        batcher.start()
        try:
            pending = [asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0)))) for _ in range(2)]
            while batcher.arriving < 2:
                await asyncio.sleep(0.01)
            assert batcher.queue_depth == 0  # both still being prepared, neither queued yet
            with pytest.raises(Overloaded, match="busy"):
                await batcher.submit(EngineRequest(noise(1.0)))
            preparing.set()
            return list(await asyncio.wait_for(asyncio.gather(*pending), 60))
        finally:
            batcher.close()

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
        batcher = Batcher(recording, BatchPolicy(max_batch_size=1, max_wait_ms=0))  # type: ignore[arg-type]
        batcher.start()
        running = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0))))
        await _wait(recording.entered)
        late = asyncio.ensure_future(batcher.submit(EngineRequest(noise(1.0), context="late")))
        while batcher.arriving < 1:
            await asyncio.sleep(0.01)
        recording.fail_with = SystemExit("worker killed")
        recording.gate.set()
        with pytest.raises(EngineUnavailable):
            await asyncio.wait_for(running, 30)
        release.set()  # its inputs are ready only now, after the worker died
        with pytest.raises(EngineUnavailable, match="restarted"):
            await asyncio.wait_for(late, 30)

    asyncio.run(main())
