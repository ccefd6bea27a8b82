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


def test_result_url_from_public_base_and_bounded_by_retention(tmp_path: Path) -> None:
    from qasr.jobs.results import UrlSigner
    from qasr.jobs.service import Jobs
    from qasr.settings import Settings

    settings = Settings(jobs_result_url_ttl_s=100.0, jobs_retention_s=50.0, data_dir=tmp_path)
    signer = UrlSigner.in_dir(tmp_path)
    jobs = Jobs(settings, None, None, signer, None)  # type: ignore[arg-type]  # only builds URLs
    task = Task(TASK, "", "m", "u", "u", "{}", end_time=1000.0, result_name=f"{TASK}.json")
    url = jobs.result_url("https://asr.example.com/qasr", task, now=1010.0)
    path, _, query = url.partition("?")
    assert path == f"https://asr.example.com/qasr/api/v1/filetrans/results/{TASK}.json"
    expires, signature = (part.split("=", 1)[1] for part in query.split("&"))
    assert expires == "1050"  # the result is removed at 1050: the URL does not outlive it
    assert signer.check(TASK, expires, signature, now=1049.0)
    early = jobs.result_url("https://x", task, now=900.0)
    assert "Expires=1000&" in early  # 100 s after the poll, sooner than the retention
