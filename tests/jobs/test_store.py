"""The SQLite task store: order, ownership, durability across reopening, limits and expiry."""

from __future__ import annotations

from pathlib import Path

import pytest

from qasr.jobs.store import CANCELED_CODE, SqliteTaskStore, StoreFull, Task, TaskQuery, TaskStatus

LIMITS = {"max_tasks": 100, "max_tasks_per_owner": 100}


def _task(n: int, owner: str = "a", submit: float = 1000.0) -> Task:
    return Task(
        f"task-{n}",
        owner,
        "qwen3-asr-flash-filetrans",
        f"https://x/{n}.wav",
        f"https://x/{n}.wav",
        "{}",
        submit_time=submit + n,
    )


@pytest.fixture
def store(tmp_path: Path) -> SqliteTaskStore:
    return SqliteTaskStore(tmp_path / "tasks.sqlite3")


def test_claims_in_submission_order_once(store: SqliteTaskStore) -> None:
    for n in (3, 1, 2):
        store.add(_task(n), **LIMITS)
    claimed = [store.claim(now=5000.0) for _ in range(4)]
    assert [t.task_id if t else None for t in claimed] == ["task-3", "task-1", "task-2", None]
    first = claimed[0]
    assert first is not None
    assert (first.status, first.scheduled_time, first.attempts) == (TaskStatus.RUNNING, 5000.0, 1)


def test_finish_only_a_running_task(store: SqliteTaskStore) -> None:
    store.add(_task(1), **LIMITS)
    assert not store.finish("task-1", TaskStatus.SUCCEEDED, 9.0, result_name="x.json")  # still PENDING
    store.claim(now=1.0)
    assert store.finish("task-1", TaskStatus.SUCCEEDED, 9.0, result_name="x.json", audio_s=3.5)
    done = store.get("task-1")
    assert done is not None
    assert (done.status, done.end_time, done.result_name, done.audio_s) == (
        TaskStatus.SUCCEEDED,
        9.0,
        "x.json",
        3.5,
    )
    assert not store.finish("task-1", TaskStatus.FAILED, 10.0, code="X")  # final stays final
    with pytest.raises(ValueError, match="cannot finish"):
        store.finish("task-1", TaskStatus.RUNNING, 10.0)


def test_cancel_wins_over_a_late_result(store: SqliteTaskStore) -> None:
    store.add(_task(1), **LIMITS)
    store.claim(now=1.0)
    cancelled = store.cancel("task-1", "a", now=2.0)
    assert (
        cancelled is not None and cancelled.status is TaskStatus.CANCELED and cancelled.code == CANCELED_CODE
    )
    assert not store.finish("task-1", TaskStatus.SUCCEEDED, 3.0, result_name="x.json")
    got = store.get("task-1")
    assert got is not None and got.status is TaskStatus.CANCELED and got.result_name is None


def test_owners_see_only_their_tasks(store: SqliteTaskStore) -> None:
    store.add(_task(1, owner="a"), **LIMITS)
    store.add(_task(2, owner="b"), **LIMITS)
    assert store.get("task-1", "b") is None and store.get("task-1", "a") is not None
    assert store.cancel("task-1", "b", now=1.0) is None
    assert store.get("task-1") is not None and store.get("task-1").status is TaskStatus.PENDING  # type: ignore[union-attr]
    tasks, total = store.page("b", TaskQuery())
    assert [t.task_id for t in tasks] == ["task-2"] and total == 1


def test_page_filters_and_pages(store: SqliteTaskStore) -> None:
    for n in range(1, 6):
        store.add(_task(n), **LIMITS)
    store.claim(now=1.0)
    tasks, total = store.page("a", TaskQuery(page_no=2, page_size=2))
    assert [t.task_id for t in tasks] == ["task-3", "task-2"] and total == 5  # newest first
    running, n_running = store.page("a", TaskQuery(status=TaskStatus.RUNNING))
    assert [t.task_id for t in running] == ["task-1"] and n_running == 1
    recent, n_recent = store.page("a", TaskQuery(start_time=1004.0))
    assert [t.task_id for t in recent] == ["task-5", "task-4"] and n_recent == 2


def test_limits_refuse_clearly(store: SqliteTaskStore) -> None:
    store.add(_task(1, owner="a"), max_tasks=2, max_tasks_per_owner=1)
    with pytest.raises(StoreFull, match="one API key may keep"):
        store.add(_task(2, owner="a"), max_tasks=2, max_tasks_per_owner=1)
    store.add(_task(3, owner="b"), max_tasks=2, max_tasks_per_owner=1)
    with pytest.raises(StoreFull, match="as many jobs as it may"):
        store.add(_task(4, owner="c"), max_tasks=2, max_tasks_per_owner=1)


def test_reopened_store_keeps_tasks_and_requeues_running(tmp_path: Path) -> None:
    path = tmp_path / "tasks.sqlite3"
    first = SqliteTaskStore(path)
    first.add(_task(1), **LIMITS)
    first.add(_task(2), **LIMITS)
    first.claim(now=1.0)
    # No close: as after kill -9, only what was committed counts.
    second = SqliteTaskStore(path)
    assert second.counts()[TaskStatus.RUNNING] == 1
    assert second.requeue_running() == 1
    again = second.claim(now=2.0)
    assert again is not None and (again.task_id, again.attempts) == ("task-1", 2)
    first.close()
    second.close()


def test_wal_and_full_sync(store: SqliteTaskStore) -> None:
    db = store._db
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL


def test_expire_removes_only_old_final_tasks(store: SqliteTaskStore) -> None:
    for n in (1, 2, 3):
        store.add(_task(n), **LIMITS)
    store.claim(now=1.0)
    store.finish("task-1", TaskStatus.SUCCEEDED, 100.0, result_name="a.json")
    store.claim(now=1.0)
    store.finish("task-2", TaskStatus.FAILED, 300.0, code="X", message="m")
    gone = store.expire(before=200.0)
    assert [t.task_id for t in gone] == ["task-1"] and gone[0].result_name == "a.json"
    assert store.counts() == {
        TaskStatus.PENDING: 1,
        TaskStatus.RUNNING: 0,
        TaskStatus.SUCCEEDED: 0,
        TaskStatus.FAILED: 1,
        TaskStatus.CANCELED: 0,
    }
