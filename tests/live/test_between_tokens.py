"""More urgent work runs between the tokens of a long batch of a less urgent class (issue 16: live
sessions keep their latency while files are transcribed; issue 15: sync requests do not wait behind a
file job's segments), and the long batch's output is unchanged by it."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from typing import Any

import pytest

from qasr.engine.base import Job
from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine
from qasr.engine.scheduler import Priority, Scheduler, SchedulerPolicy
from qasr.types import EngineRequest, EngineResult
from tests.helpers import EngineWrapper, noise


class _Holding(EngineWrapper):
    """At the first token of the long (background) batch, waits until `urgent` work is queued (so the
    test does not race the model), then lets the scheduler's callback run it."""

    def __init__(self, inner: Qwen3ASREngine, urgent: Priority) -> None:
        super().__init__(inner)
        self.urgent = urgent
        self.scheduler: Scheduler[EngineRequest, EngineResult] | None = None
        self.long_started = threading.Event()
        self.order: list[str] = []

    def run(self, jobs: Sequence[Job[Any]]) -> Any:
        hook = jobs[0].between_tokens
        long = len(jobs[0].request.samples) > 3 * 16000
        if hook is not None and long:
            waited = False

            def between() -> None:
                nonlocal waited
                if not waited:
                    waited = True
                    self.long_started.set()
                    assert self.scheduler is not None
                    while self.scheduler.depth(self.urgent) < 1:
                        threading.Event().wait(0.01)
                hook()

            for job in jobs:
                job.between_tokens = between
        results = self.inner.run(jobs)
        self.order.append("long" if long else "urgent")
        return results


@pytest.mark.parametrize("urgent", [Priority.LIVE, Priority.INTERACTIVE])
def test_urgent_work_runs_between_the_tokens_of_a_long_batch(
    engine: Qwen3ASREngine, urgent: Priority
) -> None:
    fixed = Qwen3ASREngine(
        engine.loaded,
        engine.name,
        GenerationOptions(min_new_tokens=60, max_new_tokens_cap=60, guard_repetition=False),
    )
    holding = _Holding(fixed, urgent)
    long_request = EngineRequest(noise(6.0, seed=1))
    live_request = EngineRequest(noise(2.0, seed=2), language="en", max_new_tokens=4)
    alone = fixed.transcribe([long_request])[0]

    async def main() -> tuple[EngineResult, EngineResult]:
        scheduler: Scheduler[EngineRequest, EngineResult] = Scheduler(holding, SchedulerPolicy())
        holding.scheduler = scheduler
        scheduler.start()
        try:
            long = asyncio.ensure_future(scheduler.submit(long_request, priority=Priority.BACKGROUND))
            await asyncio.to_thread(holding.long_started.wait, 30)
            live = await scheduler.submit(live_request, priority=urgent)
            assert not long.done()  # the urgent work finished while the long batch was still decoding
            assert scheduler.batches_between_tokens == 1
            return await long, live
        finally:
            scheduler.close()

    long_result, live_result = asyncio.run(main())
    assert holding.order == ["urgent", "long"]
    assert long_result == alone  # the interruption changed nothing in the long batch's output
    assert live_result.output_tokens == 4
