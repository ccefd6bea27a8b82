"""What a running server owns for async file jobs, built from its `Runtime`: the task store, the result
files and their URL signer, and the runner (with its own `Transcriber` on the shared scheduler, at a
job's number of segments in flight)."""

from __future__ import annotations

import hashlib
import time
from dataclasses import dataclass, replace
from pathlib import Path

from qasr.audio.sources import SourcePolicy
from qasr.jobs.results import ResultFiles, UrlSigner
from qasr.jobs.runner import JobRunner, RunnerConfig
from qasr.jobs.store import SqliteTaskStore, Task, TaskStore
from qasr.runtime import Runtime
from qasr.settings import Settings
from qasr.transcriber import Transcriber
from qasr.types import AudioLimits

RESULT_PATH = "/api/v1/filetrans/results"
"""Where result documents are served (no API key: the URL's signature authorises it)."""


def jobs_root(settings: Settings) -> Path:
    return (settings.jobs_dir if settings.jobs_dir is not None else settings.data_dir / "jobs").expanduser()


def job_limits(settings: Settings) -> AudioLimits:
    return AudioLimits(max_bytes=settings.jobs_max_audio_bytes, max_duration_s=settings.jobs_max_audio_s)


def owner_of(api_key: str | None) -> str:
    """Who owns a task: a hash of the caller's key (never the key), "" on a server without keys."""
    if api_key is None:
        return ""
    return hashlib.sha256(b"qasr-job-api-key\0" + api_key.encode("utf-8", "surrogatepass")).hexdigest()


@dataclass
class Jobs:
    settings: Settings
    store: TaskStore
    results: ResultFiles
    signer: UrlSigner
    runner: JobRunner

    @classmethod
    def build(cls, runtime: Runtime) -> Jobs:
        """Open the store and the result directory (blocking: call it off the event loop)."""
        settings = runtime.settings
        root = jobs_root(settings)
        root.mkdir(mode=0o700, parents=True, exist_ok=True)
        store = SqliteTaskStore(root / "tasks.sqlite3")
        results = ResultFiles(root / "results")
        signer = UrlSigner.in_dir(root)
        base = runtime.transcriber
        options = replace(
            base.options, segments_in_flight=settings.jobs_segments_in_flight, max_queue_wait_s=None
        )
        transcriber = Transcriber(base.scheduler, base.vad, options, aligner=base.aligner)
        uploads = () if runtime.uploads is None else (runtime.uploads.root,)
        policy = SourcePolicy(
            allow_local_dirs=(*settings.allow_local_dirs, *uploads),
            allow_url_hosts=tuple(settings.allow_url_hosts),
            url_map=dict(settings.url_map),
            timeout_s=settings.jobs_download_timeout_s,
        )
        config = RunnerConfig(
            concurrency=settings.jobs_concurrency,
            retention_s=settings.jobs_retention_s,
            limits=job_limits(settings),
            policy=policy,
            work_root=root / "work",
        )
        runner = JobRunner(store, transcriber, results, config, runtime.metrics)
        return cls(settings, store, results, signer, runner)

    async def start(self) -> None:
        await self.runner.start()

    async def close(self) -> None:
        await self.runner.close()
        self.store.close()

    def result_url(self, base_url: str, task: Task, now: float) -> str:
        """The signed URL of a SUCCEEDED task's result; it lasts `jobs_result_url_ttl_s`, and never
        past the time the result itself is removed."""
        assert task.result_name is not None and task.end_time is not None
        expires = int(
            min(now + self.settings.jobs_result_url_ttl_s, task.end_time + self.settings.jobs_retention_s)
        )
        signature = self.signer.signature(task.task_id, expires)
        return f"{base_url}{RESULT_PATH}/{task.task_id}.json?Expires={expires}&Signature={signature}"

    def now(self) -> float:
        return time.time()
