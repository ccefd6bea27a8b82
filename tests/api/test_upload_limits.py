"""The upload store's limits and life across restarts (issue 13, point 7): a quota per API key beside
the overall one, running totals that no request pays for by listing the store, a persistent default
location and signing key, and what a crashed process left half-written removed at start."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from qasr.audio.uploads import KEY_FILE, UploadStore
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.errors import InvalidUploadPolicy, Overloaded, UploadNotFound, UploadQuotaExceeded
from qasr.settings import Settings
from tests.api.inprocess import serve_in_thread
from tests.api.test_uploads import HOST, KEY, MODEL, Clock, all_files, form

OTHER = "sk-other-key"


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


def upload(store: UploadStore, api_key: str | None, name: str, data: bytes = b"data") -> str:
    return store.accept_upload(form(store.issue_policy(api_key, MODEL, HOST), name), name, data)


def object_paths(key: str, root: Path) -> tuple[Path, Path]:
    """Where the store keeps `key`: sidecar and data, named by the key's SHA-256."""
    name = hashlib.sha256(key.encode()).hexdigest()
    return root / "objects" / f"{name}.json", root / "objects" / f"{name}.data"


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- a quota per API key -------------------------------------------------------------------------


def test_one_key_full_of_files_leaves_room_for_another(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", max_objects_per_key=2, clock=clock) as store:
        upload(store, KEY, "a.wav")
        upload(store, KEY, "b.wav")
        with pytest.raises(UploadQuotaExceeded, match="quota of this API key") as full:
            upload(store, KEY, "c.wav")
        assert "it keeps 2 of 2 files and 8 bytes of 2048.0 MB" in full.value.message
        assert full.value.message.endswith("(they are kept 48 hours).")
        assert isinstance(full.value, Overloaded)  # answered as a 429, never as a server bug
        key = upload(store, OTHER, "c.wav")
        assert store.resolve(key, OTHER, MODEL).read_bytes() == b"data"
        # Without API keys every caller shares one bucket, apart from the keys' own.
        upload(store, None, "open-1.wav")
        upload(store, None, "open-2.wav")
        with pytest.raises(UploadQuotaExceeded, match="callers without an API key"):
            upload(store, None, "open-3.wav")


def test_one_key_full_of_bytes_leaves_room_for_another(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", max_bytes_per_key=1000, clock=clock) as store:
        upload(store, KEY, "a.wav", b"x" * 600)
        with pytest.raises(UploadQuotaExceeded, match="quota of this API key"):
            upload(store, KEY, "b.wav", b"x" * 401)
        upload(store, KEY, "b.wav", b"x" * 400)  # exactly up to the quota
        upload(store, OTHER, "a.wav", b"x" * 1000)


def test_the_overall_cap_still_holds(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", max_total_objects=3, max_total_bytes=10**6, clock=clock) as store:
        for index in range(3):
            upload(store, f"sk-key-{index}", "a.wav")
        with pytest.raises(UploadQuotaExceeded, match="The upload store is full"):
            upload(store, "sk-key-3", "a.wav")
    with UploadStore(root / "bytes", secret="s", max_total_bytes=1000, clock=clock) as store:
        upload(store, KEY, "a.wav", b"x" * 700)
        with pytest.raises(UploadQuotaExceeded, match="full"):
            upload(store, OTHER, "a.wav", b"x" * 301)


def test_a_full_key_is_refused_before_its_body_is_read(root: Path, clock: Clock) -> None:
    def body() -> Iterator[bytes]:
        raise AssertionError("the body was read")
        yield b""  # pragma: no cover

    with UploadStore(root, secret="s", max_objects_per_key=1, clock=clock) as store:
        upload(store, KEY, "a.wav")
        with pytest.raises(UploadQuotaExceeded):
            store.accept_upload(form(store.issue_policy(KEY, MODEL, HOST), "b.wav"), None, body())


def test_expiry_gives_the_quota_back_at_the_next_upload(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", file_ttl_s=60, max_objects_per_key=1, clock=clock) as store:
        first = upload(store, KEY, "a.wav")
        with pytest.raises(UploadQuotaExceeded):
            upload(store, KEY, "b.wav")
        clock.advance(60)
        second = upload(store, KEY, "b.wav")  # no cleanup in between: the upload itself frees the room
        assert not object_paths(first, root)[1].exists()
        assert store.resolve(second, KEY, MODEL).read_bytes() == b"data"


def test_concurrent_uploads_of_one_key_cannot_overshoot_its_quota(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", max_objects_per_key=3, clock=clock) as store:
        policy = store.issue_policy(KEY, MODEL, HOST)
        barrier, outcomes = threading.Barrier(8), []

        def one(index: int) -> None:
            barrier.wait()
            try:
                store.accept_upload(form(policy, f"{index}.wav"), None, b"x" * 100)
                outcomes.append("stored")
            except UploadQuotaExceeded:
                outcomes.append("refused")

        threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        assert sorted(outcomes) == ["refused"] * 5 + ["stored"] * 3
        assert len(list((root / "objects").glob("*.data"))) == 3


def test_a_failed_commit_gives_its_reservation_back(
    root: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    with UploadStore(root, secret="s", max_objects_per_key=1, clock=clock) as store:
        policy = store.issue_policy(KEY, MODEL, HOST)
        store.accept_upload(form(policy, "a.wav"), None, b"data")
        with pytest.raises(InvalidUploadPolicy, match="overwritten"):  # refused at commit
            store.accept_upload(form(policy, "a.wav"), None, b"data")
    with UploadStore(root / "b", secret="s", max_objects_per_key=1, clock=clock) as store:
        policy = store.issue_policy(KEY, MODEL, HOST)
        monkeypatch.setattr(os, "replace", _failing_replace)
        with pytest.raises(OSError, match="disk full"):
            store.accept_upload(form(policy, "a.wav"), None, b"data")
        monkeypatch.undo()
        store.accept_upload(form(policy, "b.wav"), None, b"data")  # the failed one holds no quota


def _failing_replace(*args: object) -> None:
    raise OSError("disk full")


def test_the_policy_tells_the_capacity_a_key_has(root: Path, clock: Clock) -> None:
    mib = 1024 * 1024
    with UploadStore(root, secret="s", max_bytes_per_key=5 * mib, max_total_bytes=9 * mib) as store:
        assert store.issue_policy(KEY, MODEL, HOST)["capacity_limit_mb"] == 5


# --- no request lists the store ------------------------------------------------------------------


def test_requests_never_list_the_stored_objects(
    root: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bookkeeping is running totals: with objects stored, issuing a policy, accepting an upload
    (expiring due objects on the way) and resolving one never list a directory."""
    with UploadStore(root, secret="s", file_ttl_s=100, clock=clock) as store:
        old = [upload(store, KEY, f"{index}.wav") for index in range(30)]
        clock.advance(50)
        kept = upload(store, KEY, "kept.wav")
        clock.advance(50)  # the first 30 are now due

        def no_listing(*args: object, **kwargs: object) -> None:
            raise AssertionError("a request listed a directory")

        for name in ("scandir", "listdir", "walk"):
            monkeypatch.setattr(os, name, no_listing)
        fresh = upload(store, OTHER, "fresh.wav")
        assert store.resolve(fresh, OTHER, MODEL).read_bytes() == b"data"
        assert store.resolve(kept, KEY, MODEL).read_bytes() == b"data"
        assert not any(object_paths(key, root)[1].exists() for key in old)
        monkeypatch.undo()
        assert len(all_files(root / "objects")) == 4  # kept and fresh, each data + sidecar


def test_the_store_is_listed_once_at_start(root: Path, clock: Clock, monkeypatch: pytest.MonkeyPatch) -> None:
    with UploadStore(root, secret="s", clock=clock) as store:
        for index in range(20):
            upload(store, KEY, f"{index}.wav")
    listed: list[str] = []
    scandir = os.scandir

    def counting(path: str | os.PathLike[str]) -> object:
        listed.append(Path(path).name)
        return scandir(path)

    monkeypatch.setattr(os, "scandir", counting)
    with UploadStore(root, secret="s", clock=clock) as store:
        for index in range(5):
            upload(store, KEY, f"more-{index}.wav")
    assert sorted(listed) == ["objects", "tmp"]


# --- a persistent location and signing key -------------------------------------------------------


def test_restart_keeps_files_and_unexpired_policies(root: Path, clock: Clock) -> None:
    with UploadStore(root, clock=clock) as first:
        stored = upload(first, KEY, "a.wav", b"kept")
        policy = first.issue_policy(KEY, MODEL, HOST)
    key_file = root / KEY_FILE
    assert mode(key_file) == 0o600
    secret = key_file.read_bytes()
    with UploadStore(root, clock=clock) as second:
        assert second.resolve(stored, KEY, MODEL).read_bytes() == b"kept"
        later = second.accept_upload(form(policy, "b.wav"), None, b"later")  # signed before the restart
        assert second.resolve(later, KEY, MODEL).read_bytes() == b"later"
    assert key_file.read_bytes() == secret
    with UploadStore(root / "elsewhere", clock=clock) as other, pytest.raises(InvalidUploadPolicy):
        other.accept_upload(form(policy, "c.wav"), None, b"data")  # another store's key


def test_restart_keeps_the_quota_counts(root: Path, clock: Clock) -> None:
    with UploadStore(root, max_objects_per_key=2, max_bytes_per_key=100, clock=clock) as first:
        upload(first, KEY, "a.wav", b"x" * 50)
    with UploadStore(root, max_objects_per_key=2, max_bytes_per_key=100, clock=clock) as second:
        with pytest.raises(UploadQuotaExceeded):
            upload(second, KEY, "b.wav", b"x" * 51)
        upload(second, KEY, "b.wav", b"x" * 50)
        with pytest.raises(UploadQuotaExceeded):
            upload(second, KEY, "c.wav", b"")


def test_the_default_location_is_under_the_data_dir(tmp_path: Path) -> None:
    settings = Settings(model="tiny", data_dir=tmp_path / "data")
    with UploadStore.from_settings(settings) as store:
        stored = upload(store, KEY, "a.wav")
        assert store.root == tmp_path / "data" / "uploads"
    with UploadStore.from_settings(settings) as store:
        assert store.resolve(stored, KEY, MODEL).read_bytes() == b"data"
    assert (tmp_path / "data" / "uploads" / KEY_FILE).is_file()  # close() left the directory
    explicit = Settings(model="tiny", data_dir=tmp_path / "data", upload_dir=tmp_path / "mine")
    with UploadStore.from_settings(explicit) as store:
        assert store.root == tmp_path / "mine"


def test_the_data_dir_follows_xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QASR_DATA_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert Settings().data_dir == tmp_path / "xdg" / "qasr"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/dir")  # ignored, as the XDG spec says
    assert Settings().data_dir == tmp_path / "home" / ".local" / "share" / "qasr"
    monkeypatch.setenv("QASR_DATA_DIR", str(tmp_path / "set"))
    assert Settings().data_dir == tmp_path / "set"


def test_a_readable_key_file_is_made_private(root: Path, clock: Clock) -> None:
    root.mkdir()
    (root / KEY_FILE).write_text("a-key-an-operator-wrote-by-hand\n")
    os.chmod(root / KEY_FILE, 0o644)
    with UploadStore(root, clock=clock) as store:
        policy = store.issue_policy(KEY, MODEL, HOST)
    assert mode(root / KEY_FILE) == 0o600
    with UploadStore(root, secret="a-key-an-operator-wrote-by-hand", clock=clock) as store:
        assert store.accept_upload(form(policy), None, b"data")  # the file's text is the key


def test_a_damaged_key_file_stops_the_start(root: Path, clock: Clock) -> None:
    root.mkdir()
    (root / KEY_FILE).write_bytes(b"\n")
    with pytest.raises(ValueError, match="damaged"):
        UploadStore(root, clock=clock)
    UploadStore(root, clock=clock, secret="configured").close()  # a configured key does not need it


# --- leftovers of a crash are removed at start -----------------------------------------------------


def test_partial_files_are_removed_at_start(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", max_objects_per_key=3, clock=clock) as first:
        good = upload(first, KEY, "good.wav", b"whole")
        cut = upload(first, KEY, "cut.wav", b"whole")
        expired = upload(first, KEY, "old.wav", b"whole")
    # What a crash leaves: a temporary file mid-write, data linked without its sidecar (mid-commit),
    # data cut short (no sync before a power loss), a sidecar made unreadable, and an expired object.
    (root / "tmp" / "upload-abc123").write_bytes(b"par")
    orphan = object_paths("dashscope-instant/x/2025-09-10/y/crash.wav", root)[1]
    orphan.write_bytes(b"partial")
    object_paths(cut, root)[1].write_bytes(b"who")
    corrupt = object_paths("dashscope-instant/x/2025-09-10/y/corrupt.wav", root)
    corrupt[0].write_text("{not json")
    corrupt[1].write_bytes(b"data")
    sidecar = object_paths(expired, root)[0]
    sidecar.write_text(json.dumps({**json.loads(sidecar.read_text()), "expires_at": clock.now}))
    with UploadStore(root, secret="s", max_objects_per_key=3, clock=clock) as second:
        assert not list((root / "tmp").iterdir())
        assert all_files(root / "objects") == set(object_paths(good, root))
        assert second.resolve(good, KEY, MODEL).read_bytes() == b"whole"
        for key in (cut, expired):
            with pytest.raises(UploadNotFound):
                second.resolve(key, KEY, MODEL)
        upload(second, KEY, "two.wav")  # only the good object counts against the quota
        upload(second, KEY, "three.wav")


def test_a_partial_file_is_never_served(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", clock=clock) as store:
        key = upload(store, KEY, "a.wav", b"whole file")
        object_paths(key, root)[1].write_bytes(b"whole")
        with pytest.raises(UploadNotFound, match="not found"):
            store.resolve(key, KEY, MODEL)
        object_paths(key, root)[1].unlink()
        with pytest.raises(UploadNotFound, match="not found"):
            store.resolve(key, KEY, MODEL)


@pytest.mark.skipif(sys.platform == "win32", reason="no flock: a store assumes it is alone")
def test_a_second_store_on_a_root_in_use_leaves_its_partial_files(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", clock=clock):
        in_flight = root / "tmp" / "upload-in-flight"
        in_flight.write_bytes(b"being written")
        with UploadStore(root, secret="s", clock=clock):
            assert in_flight.exists()
    with UploadStore(root, secret="s", clock=clock):  # alone again: it is a leftover now
        assert not in_flight.exists()


def test_cleanup_removes_only_long_abandoned_partial_files(root: Path, clock: Clock) -> None:
    with UploadStore(root, secret="s", clock=clock) as store:
        old, fresh = root / "tmp" / "upload-old", root / "tmp" / "upload-now"
        for path in (old, fresh):
            path.write_bytes(b"partial")
        os.utime(old, (0, 0))
        assert store.cleanup() == 0
        assert not old.exists() and fresh.exists()


# --- over HTTP -------------------------------------------------------------------------------------


def test_a_key_over_its_quota_gets_429(engine: Qwen3ASREngine, tmp_path: Path) -> None:
    settings = Settings(
        model="tiny",
        warmup=False,
        api_keys=[KEY, OTHER],
        upload_dir=tmp_path / "uploads",
        upload_max_objects_per_key=1,
    )
    with serve_in_thread(settings, engine) as url:

        def post(api_key: str, name: str) -> httpx.Response:
            grant = httpx.get(
                f"{url}/api/v1/uploads",
                params={"action": "getPolicy", "model": MODEL},
                headers={"Authorization": f"Bearer {api_key}"},
            ).json()["data"]
            fields = form(grant, name)
            return httpx.post(str(grant["upload_host"]), data=fields, files={"file": (name, b"RIFF")})

        assert post(KEY, "a.wav").status_code == 200
        refused = post(KEY, "b.wav")
        assert post(OTHER, "a.wav").status_code == 200
    assert refused.status_code == 429
    assert refused.json()["message"].startswith(
        "The upload quota of this API key is used up: it keeps 1 of 1 files"
    )
