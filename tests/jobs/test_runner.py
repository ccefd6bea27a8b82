"""The runner's bookkeeping that no end-to-end test can reach without waiting a day: expiry removes a
finished task and its result file together, and the `qasr_jobs` gauge follows the store."""

from __future__ import annotations

import asyncio
from pathlib import Path

from qasr.audio.sources import SourcePolicy
from qasr.jobs.results import ResultFiles
from qasr.jobs.runner import JobRunner, RunnerConfig
from qasr.jobs.store import SqliteTaskStore, Task, TaskStatus
from qasr.metrics import Metrics
from qasr.types import AudioLimits

TASK = "8fab76d0-1111-4222-8333-944455556666"


def test_expiry_removes_task_and_result(tmp_path: Path) -> None:
    store = SqliteTaskStore(tmp_path / "tasks.sqlite3")
    results = ResultFiles(tmp_path / "results")
    metrics = Metrics()
    config = RunnerConfig(1, 3600.0, AudioLimits(), SourcePolicy(), tmp_path / "work")
    runner = JobRunner(store, None, results, config, metrics)  # type: ignore[arg-type]  # never runs a job
    store.add(Task(TASK, "", "m", "u", "u", "{}", submit_time=1.0), max_tasks=10, max_tasks_per_owner=10)
    store.add(Task("other", "", "m", "u", "u", "{}", submit_time=2.0), max_tasks=10, max_tasks_per_owner=10)
    store.claim(now=1.0)
    results.write(f"{TASK}.json", {"transcripts": []})
    assert store.finish(TASK, TaskStatus.SUCCEEDED, 100.0, result_name=f"{TASK}.json", audio_s=1.0)

    assert asyncio.run(runner.expire(now=100.0 + 3599.0)) == 0  # not yet
    assert results.path(f"{TASK}.json").exists()
    assert asyncio.run(runner.expire(now=100.0 + 3601.0)) == 1
    assert store.get(TASK) is None and not results.path(f"{TASK}.json").exists()
    assert store.get("other") is not None  # a PENDING task never expires
    gauge = {s.labels["status"]: s.value for s in metrics.jobs.collect()[0].samples}
    assert gauge == {"pending": 1.0, "running": 0.0, "succeeded": 0.0, "failed": 0.0, "canceled": 0.0}
