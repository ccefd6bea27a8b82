"""The job runner: takes PENDING tasks from the store in submission order and runs up to
`jobs_concurrency` of them at once, in this process, at the scheduler's background priority.

A task is claimed (RUNNING) in one transaction, transcribed, its result written atomically
(`ResultFiles`), and only then marked SUCCEEDED, in one more transaction: a crash at any point leaves
it RUNNING, and the next start puts it back to PENDING (`requeue_running`) and runs it again. Stopping
the server does the same on purpose (a drain must not wait hours for a long job). A cancel marks the
task CANCELED in the store first, then cancels its work here: the segments in flight leave the model's
queue, and the batch being decoded drops them at its next token.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from qasr.audio.sources import SourcePolicy
from qasr.errors import EngineUnavailable
from qasr.jobs.results import ResultFiles
from qasr.jobs.store import Task, TaskStatus, TaskStore
from qasr.jobs.work import JobOptions, JobWork, describe_failure
from qasr.metrics import Metrics
from qasr.transcriber import Transcriber
from qasr.types import AudioLimits

log = logging.getLogger(__name__)
_IDLE_POLL_S = 5.0
"""An idle worker looks at the store this often even without a wake-up (a shared store's other writers)."""
_EXPIRE_EVERY_S = 60.0


@dataclass
class Live:
    """A task running in this process: its progress, and its work to cancel."""

    progress: float = 0.0
    audio_s: float = 0.0
    cancelled: bool = False
    work: asyncio.Future[Any] | None = field(default=None, repr=False)


@dataclass(frozen=True)
class RunnerConfig:
    concurrency: int
    retention_s: float
    limits: AudioLimits
    policy: SourcePolicy
    """What a job may read: the remote caller's rules, plus the upload directory (`oss://` keys are
    resolved, and their owner checked, when the job is submitted)."""
    work_root: Path


class JobRunner:
    """Runs the store's tasks in the background. `start` on the event loop, `close` to stop."""

    def __init__(
        self,
        store: TaskStore,
        transcriber: Transcriber,
        results: ResultFiles,
        config: RunnerConfig,
        metrics: Metrics | None = None,
    ) -> None:
        self.store = store
        self.transcriber = transcriber
        self.results = results
        self.config = config
        self.metrics = metrics
        self.live: dict[str, Live] = {}
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        """Put back tasks a stopped process left RUNNING, then start the workers and the expiry loop."""
        requeued = await asyncio.to_thread(self.store.requeue_running)
        if requeued:
            log.info("jobs: %d task(s) left running by the last process will run again", requeued)
        shutil.rmtree(self.config.work_root, ignore_errors=True)  # inputs of runs that did not finish
        self.config.work_root.mkdir(mode=0o700, parents=True, exist_ok=True)
        await self.refresh_metrics()
        self._tasks = [asyncio.ensure_future(self._worker(k)) for k in range(max(1, self.config.concurrency))]
        self._tasks.append(asyncio.ensure_future(self._expire_loop()))

    async def close(self) -> None:
        """Stop the workers; tasks they were running stay RUNNING and run again at the next start."""
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        self._tasks = []

    def wake(self) -> None:
        """A task was submitted: an idle worker claims it now."""
        self._wake.set()

    def stop(self, task_id: str) -> None:
        """The task was cancelled in the store: stop its work if it runs here."""
        live = self.live.get(task_id)
        if live is not None:
            live.cancelled = True
            if live.work is not None:
                live.work.cancel()

    async def refresh_metrics(self) -> None:
        if self.metrics is None:
            return
        counts = await asyncio.to_thread(self.store.counts)
        for status, n in counts.items():
            self.metrics.jobs.labels(status.value.lower()).set(n)

    # --- the loops ---------------------------------------------------------------------------------

    async def _worker(self, index: int) -> None:
        while True:
            self._wake.clear()  # before looking, so a submit meanwhile is not missed
            task = await asyncio.to_thread(self.store.claim, time.time())
            if task is None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), _IDLE_POLL_S)
                continue
            self._wake.set()  # another idle worker may find more waiting
            try:
                await self._run(task)
            except asyncio.CancelledError:
                raise
            except Exception:  # a store failure: the task stays RUNNING and is retried at restart
                log.exception("jobs: task %s could not be recorded", task.task_id)

    async def _run(self, task: Task) -> None:
        log.info("jobs: task %s started (attempt %d)", task.task_id, task.attempts)
        live = self.live[task.task_id] = Live()
        workdir = self.config.work_root / task.task_id
        await self.refresh_metrics()

        def progress(fraction: float, audio_s: float) -> None:
            live.progress, live.audio_s = fraction, audio_s

        try:
            work = JobWork(self.transcriber, self.config.policy, self.config.limits, workdir)
            options = JobOptions.from_json(task.params)
            live.work = asyncio.ensure_future(work.run(task.file_url, task.source, options, progress))
            try:
                document, audio_s = await live.work
            except EngineUnavailable:  # the model worker died or is stopping: run it again at restart
                log.warning("jobs: task %s interrupted: the model is unavailable", task.task_id)
                return
            except asyncio.CancelledError:
                if not live.cancelled:
                    raise  # the server is stopping: the task stays RUNNING, and runs at the next start
                log.info("jobs: task %s cancelled", task.task_id)
                return
            except Exception as exc:
                code, message = describe_failure(exc)
                if code == "InternalError":
                    log.error("jobs: task %s failed", task.task_id, exc_info=exc)
                else:
                    log.info("jobs: task %s failed: %s", task.task_id, code)
                await asyncio.to_thread(
                    self.store.finish,
                    task.task_id,
                    TaskStatus.FAILED,
                    time.time(),
                    code=code,
                    message=message,
                )
                return
            name = f"{task.task_id}.json"
            await asyncio.to_thread(self.results.write, name, document)
            done = await asyncio.to_thread(
                self.store.finish,
                task.task_id,
                TaskStatus.SUCCEEDED,
                time.time(),
                result_name=name,
                audio_s=audio_s,
            )
            if not done:  # cancelled while the result was being written
                await asyncio.to_thread(self.results.remove, name)
            log.info(
                "jobs: task %s %s (%.1f s of audio)", task.task_id, "done" if done else "dropped", audio_s
            )
        finally:
            self.live.pop(task.task_id, None)
            await asyncio.to_thread(shutil.rmtree, workdir, True)
            await self.refresh_metrics()

    async def _expire_loop(self) -> None:
        while True:
            try:
                await self.expire(time.time())
            except Exception:
                log.exception("jobs: expiry failed")
            await asyncio.sleep(_EXPIRE_EVERY_S)

    async def expire(self, now: float) -> int:
        """Remove tasks (and their results) that ended more than `retention_s` ago."""
        gone = await asyncio.to_thread(self.store.expire, now - self.config.retention_s)
        for task in gone:
            if task.result_name:
                await asyncio.to_thread(self.results.remove, task.result_name)
        if gone:
            await self.refresh_metrics()
        return len(gone)
