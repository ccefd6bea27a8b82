"""The task store: where accepted jobs live until they are finished and expired.

`TaskStore` is the small interface the runner and the routes use; `SqliteTaskStore` is the embedded
default, one file under the data directory. A shared database (several qasr replicas on one queue) can
later implement the same Protocol: claiming must then be atomic across processes (as `claim` is here,
in one IMMEDIATE transaction), and `requeue_running` must only take back tasks whose replica is gone
(a lease with a heartbeat), not every RUNNING task as a single process may at its start.

Durability (issue 15): SQLite in WAL mode with `synchronous=FULL`, so a transaction that returned is on
disk even after `kill -9` or a power cut (NORMAL would only protect against a process crash, and a
submit that answered 200 must never be lost). Every method is one short transaction and blocks: call
them off the event loop.
"""

from __future__ import annotations

import enum
import sqlite3
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Protocol


class TaskStatus(str, enum.Enum):
    """The cloud's statuses (spec section 2); SUCCEEDED, FAILED and CANCELED are final."""

    PENDING = "PENDING"
    RUNNING = "RUNNING"
    SUCCEEDED = "SUCCEEDED"
    FAILED = "FAILED"
    CANCELED = "CANCELED"


FINAL = frozenset({TaskStatus.SUCCEEDED, TaskStatus.FAILED, TaskStatus.CANCELED})


@dataclass(frozen=True)
class Task:
    """One job as stored. Times are seconds since the epoch; None until they happen."""

    task_id: str
    owner: str
    """A hash of the caller's API key ("" on a server without keys): a caller sees only its own tasks."""
    model: str
    file_url: str
    """The reference as the caller sent it (shown in the result document)."""
    source: str
    """What the runner reads: the same reference, or the local file an `oss://` key resolved to."""
    params: str
    """The job's options as JSON (`qasr.jobs.runner.JobOptions`)."""
    status: TaskStatus = TaskStatus.PENDING
    submit_time: float = 0.0
    scheduled_time: float | None = None
    end_time: float | None = None
    code: str | None = None
    message: str | None = None
    result_name: str | None = None
    """The result document's file name in the results directory, once SUCCEEDED."""
    audio_s: float | None = None
    """Seconds of audio transcribed (`usage.seconds`), once SUCCEEDED."""
    attempts: int = 0
    """How many times the task was started (a restart that found it RUNNING starts it again)."""


@dataclass(frozen=True)
class TaskQuery:
    """The cloud's list filters (`GET /tasks`); times in seconds since the epoch."""

    status: TaskStatus | None = None
    model: str | None = None
    start_time: float | None = None
    end_time: float | None = None
    page_no: int = 1
    page_size: int = 10


class StoreFull(Exception):
    """The store holds as many tasks as it may (all callers, or this caller)."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class TaskStore(Protocol):
    """What the job API and the runner need from a task store. Every method blocks."""

    def add(self, task: Task, *, max_tasks: int, max_tasks_per_owner: int) -> None:
        """Store a new PENDING task durably, or raise `StoreFull`."""

    def get(self, task_id: str, owner: str | None = None) -> Task | None:
        """The task, if it exists (and belongs to `owner` when one is given)."""

    def page(self, owner: str, query: TaskQuery) -> tuple[list[Task], int]:
        """One page of the owner's tasks, newest first, and how many match in all."""

    def claim(self, now: float) -> Task | None:
        """Atomically move the oldest PENDING task to RUNNING and return it; None when none waits."""

    def finish(self, task_id: str, status: TaskStatus, now: float, **outcome: Any) -> bool:
        """Record a RUNNING task's end (`result_name`, `audio_s`, `code`, `message`); False when it is
        no longer RUNNING (cancelled meanwhile), in which case nothing changes."""

    def cancel(self, task_id: str, owner: str, now: float) -> Task | None:
        """Cancel a PENDING or RUNNING task of `owner`; the task as it now is (None: not found)."""

    def requeue_running(self) -> int:
        """At start: tasks left RUNNING by a stopped process go back to PENDING; how many."""

    def expire(self, before: float) -> list[Task]:
        """Remove final tasks that ended before `before`; the removed tasks (to delete results)."""

    def counts(self) -> dict[TaskStatus, int]:
        """Tasks by status (the `qasr_jobs` gauge)."""

    def close(self) -> None: ...


_COLUMNS = tuple(f.name for f in fields(Task))
_SCHEMA = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    owner TEXT NOT NULL,
    model TEXT NOT NULL,
    file_url TEXT NOT NULL,
    source TEXT NOT NULL,
    params TEXT NOT NULL,
    status TEXT NOT NULL,
    submit_time REAL NOT NULL,
    scheduled_time REAL,
    end_time REAL,
    code TEXT,
    message TEXT,
    result_name TEXT,
    audio_s REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    seq INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS tasks_queue ON tasks (status, seq);
CREATE INDEX IF NOT EXISTS tasks_owner ON tasks (owner, submit_time);
"""
_OUTCOME = frozenset({"result_name", "audio_s", "code", "message"})


class SqliteTaskStore:
    """`TaskStore` in one SQLite file (WAL, synchronous=FULL). Thread-safe: one connection, one lock."""

    def __init__(self, path: Path, clock: Any = time.time) -> None:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.executescript(_SCHEMA)
        self._clock = clock

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def _tx(self, statements: Sequence[tuple[str, Sequence[Any]]]) -> list[sqlite3.Cursor]:
        """Run statements in one IMMEDIATE transaction (a writer lock from the start)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                out = [self._db.execute(sql, args) for sql, args in statements]
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
            return out

    def add(self, task: Task, *, max_tasks: int, max_tasks_per_owner: int) -> None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                total = self._db.execute("SELECT count(*) FROM tasks").fetchone()[0]
                if total >= max_tasks:
                    raise StoreFull(
                        f"The server holds as many jobs as it may ({max_tasks}); retry once older "
                        "jobs have expired."
                    )
                mine = self._db.execute("SELECT count(*) FROM tasks WHERE owner=?", (task.owner,))
                if mine.fetchone()[0] >= max_tasks_per_owner:
                    raise StoreFull(
                        f"You have as many jobs as one API key may keep ({max_tasks_per_owner}); retry "
                        "once older ones have expired."
                    )
                seq = self._db.execute("SELECT coalesce(max(seq), 0) + 1 FROM tasks").fetchone()[0]
                values = [_column(getattr(task, name)) for name in _COLUMNS]
                marks = ",".join("?" * (len(_COLUMNS) + 1))
                self._db.execute(
                    f"INSERT INTO tasks ({','.join(_COLUMNS)}, seq) VALUES ({marks})", [*values, seq]
                )
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def get(self, task_id: str, owner: str | None = None) -> Task | None:
        with self._lock:
            row = self._db.execute("SELECT * FROM tasks WHERE task_id=?", (task_id,)).fetchone()
        task = _task(row) if row is not None else None
        if task is None or (owner is not None and task.owner != owner):
            return None
        return task

    def page(self, owner: str, query: TaskQuery) -> tuple[list[Task], int]:
        where, args = ["owner=?"], [owner]
        if query.status is not None:
            where.append("status=?")
            args.append(query.status.value)
        if query.model is not None:
            where.append("model=?")
            args.append(query.model)
        if query.start_time is not None:
            where.append("submit_time>=?")
            args.append(query.start_time)  # type: ignore[arg-type]
        if query.end_time is not None:
            where.append("submit_time<=?")
            args.append(query.end_time)  # type: ignore[arg-type]
        clause = " AND ".join(where)
        offset = (query.page_no - 1) * query.page_size
        with self._lock:
            total = self._db.execute(f"SELECT count(*) FROM tasks WHERE {clause}", args).fetchone()[0]
            rows = self._db.execute(
                f"SELECT * FROM tasks WHERE {clause} ORDER BY seq DESC LIMIT ? OFFSET ?",
                [*args, query.page_size, offset],
            ).fetchall()
        return [_task(row) for row in rows], int(total)

    def claim(self, now: float) -> Task | None:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                row = self._db.execute(
                    "SELECT task_id FROM tasks WHERE status='PENDING' ORDER BY seq LIMIT 1"
                ).fetchone()
                if row is not None:
                    self._db.execute(
                        "UPDATE tasks SET status='RUNNING', scheduled_time=?, attempts=attempts+1 "
                        "WHERE task_id=?",
                        (now, row[0]),
                    )
                    row = self._db.execute("SELECT * FROM tasks WHERE task_id=?", (row[0],)).fetchone()
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return _task(row) if row is not None else None

    def finish(self, task_id: str, status: TaskStatus, now: float, **outcome: Any) -> bool:
        if status not in FINAL or not set(outcome) <= _OUTCOME:
            raise ValueError(f"cannot finish a task as {status} with {sorted(outcome)}")
        sets = ", ".join(f"{name}=?" for name in outcome)
        sql = f"UPDATE tasks SET status=?, end_time=?{', ' + sets if sets else ''} "
        sql += "WHERE task_id=? AND status='RUNNING'"
        (cursor,) = self._tx([(sql, [status.value, now, *outcome.values(), task_id])])
        return cursor.rowcount == 1

    def cancel(self, task_id: str, owner: str, now: float) -> Task | None:
        self._tx(
            [
                (
                    "UPDATE tasks SET status='CANCELED', end_time=?, code=?, message=? "
                    "WHERE task_id=? AND owner=? AND status IN ('PENDING', 'RUNNING')",
                    (now, CANCELED_CODE, "The task was cancelled.", task_id, owner),
                )
            ]
        )
        return self.get(task_id, owner)

    def requeue_running(self) -> int:
        (cursor,) = self._tx([("UPDATE tasks SET status='PENDING' WHERE status='RUNNING'", ())])
        return cursor.rowcount

    def expire(self, before: float) -> list[Task]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                rows = self._db.execute(
                    "SELECT * FROM tasks WHERE status IN ('SUCCEEDED','FAILED','CANCELED') AND end_time<?",
                    (before,),
                ).fetchall()
                self._db.executemany("DELETE FROM tasks WHERE task_id=?", [(r["task_id"],) for r in rows])
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        return [_task(row) for row in rows]

    def counts(self) -> dict[TaskStatus, int]:
        with self._lock:
            rows = self._db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
        found = {TaskStatus(status): int(n) for status, n in rows}
        return {status: found.get(status, 0) for status in TaskStatus}


CANCELED_CODE = "TASK_CANCELED"
"""The `code` a cancelled task carries."""


def _column(value: object) -> object:
    return value.value if isinstance(value, TaskStatus) else value


def _task(row: sqlite3.Row) -> Task:
    values = {name: row[name] for name in _COLUMNS}
    values["status"] = TaskStatus(values["status"])
    return Task(**values)
