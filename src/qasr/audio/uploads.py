"""The temporary-upload store behind the SDK's local-file flow (spec §3).

For a `file://` input the dashscope SDK asks for an upload policy (§3.2), POSTs the file as multipart to
the policy's `upload_host` with no Authorization header (§3.3), then names the object as
`oss://<upload_dir>/<basename>` in the generation call (§3.4). This module is that store, free of any
web framework: routes call `issue_policy`, `accept_upload` and `resolve`, and run `cleanup` now and then.

What it guarantees: the upload POST is authenticated only by a policy this store signed (HMAC-SHA256,
compared in constant time) that names its expiry, its `upload_dir`, the model and a hash of the API key;
an object key must be `<upload_dir>/<one safe file name>`; objects are stored under the SHA-256 of their
key, never under caller text, so nothing lands outside the root; each key is written once, atomically;
reading an object back needs the same API key and model (§12.5) before it expires.

What it keeps (issue 13): each API key (or, without keys, all callers together) has its own quota of
bytes and files besides the store's overall one, so one key cannot fill the store for everyone. Usage
is kept as running totals, counted once at start and updated on every upload and expiry, so no request
lists the stored objects. The signing key is kept in the store (mode 0600) and the directory is
persistent, so a restart keeps files and unexpired policies; at start, what a crashed process left
half-written is removed, and an object whose data is not the size its sidecar records is never served.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import heapq
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable

from qasr.audio.private_files import age_s, claim, listing, private_dir, share, size_of, sync, unlink
from qasr.audio.upload_policy import Policy, checked_key, decode_policy, hash_api_key, is_safe_name
from qasr.errors import AudioTooLarge, InvalidUploadPolicy, UploadNotFound, UploadQuotaExceeded

if TYPE_CHECKING:
    from qasr.settings import Settings

log = logging.getLogger(__name__)

ACCESS_KEY_ID = "qasr-local"
"""The `oss_access_key_id` we hand out; the SDK echoes it back as `OSSAccessKeyId` (§3.3)."""
KEY_FILE = "policy-signing.key"
"""The file in the store's root that holds the policy-signing key when none is configured."""

_MIB = 1024 * 1024
_MIN_SECRET_BYTES = 16
_CHUNK_BYTES = _MIB
_STALE_S = 3600.0  # the SDK's upload timeout (§3.3): an older partial file is abandoned
_CONTENT_TYPE = re.compile(r"[A-Za-z0-9!#$&^_.+-]{1,63}/[A-Za-z0-9!#$&^_.+-]{1,63}")


@runtime_checkable
class _Readable(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


UploadData = bytes | bytearray | _Readable | Iterable[bytes]
"""The file part: bytes, a binary file object (read in chunks), or an iterator of byte chunks."""


@dataclass(frozen=True)
class StoredUpload:
    """The metadata kept beside each object, as a JSON sidecar."""

    key: str
    api_key_hash: str | None
    model: str
    created_at: float
    expires_at: float
    size_bytes: int
    content_type: str
    filename: str | None


@dataclass
class _Usage:
    """Running totals of unexpired objects: for one API key, or for the whole store."""

    size_bytes: int = 0
    objects: int = 0


class UploadStore:
    """Objects uploaded through signed policies, kept on disk until they expire.

    `root=None` makes a private temporary directory (mode 0700) that `close()` removes; a given `root`
    persists, and with no `secret` the store signs with a key it makes once and keeps there, so files
    and unexpired policies outlive a restart. Give each running store its own root: a second store on
    a root in use counts only its own uploads against the limits. Times come from `clock` (seconds
    since the epoch) so tests can move time without sleeping. Thread-safe; routes should call
    `issue_policy`, `accept_upload` and `cleanup` off the event loop, since they do file I/O.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        secret: bytes | str | None = None,
        policy_ttl_s: float = 300.0,
        file_ttl_s: float = 48 * 3600.0,
        max_bytes: int = 100 * _MIB,
        max_bytes_per_key: int = 2 * 1024 * _MIB,
        max_objects_per_key: int = 2_000,
        max_total_bytes: int = 10 * 1024 * _MIB,
        max_total_objects: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        limits = (max_bytes, max_bytes_per_key, max_objects_per_key, max_total_bytes, max_total_objects)
        if min(policy_ttl_s, file_ttl_s) <= 0 or min(limits) <= 0:
            raise ValueError("upload TTLs, sizes and capacity must be positive")
        self.policy_ttl_s, self.file_ttl_s, self.max_bytes = policy_ttl_s, file_ttl_s, max_bytes
        self.max_bytes_per_key, self.max_objects_per_key = max_bytes_per_key, max_objects_per_key
        self.max_total_bytes, self.max_total_objects = max_total_bytes, max_total_objects
        self._clock = clock
        self._lock = threading.Lock()
        self._usage: dict[str | None, _Usage] = {}  # by API-key hash; None: callers without a key
        self._total = _Usage()
        self._expiry: list[tuple[float, str, str | None, int]] = []  # heap: (expires_at, name, owner, size)
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="qasr-uploads-")) if root is None else Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._objects = private_dir(self.root / "objects")
        self._tmp = private_dir(self.root / "tmp")
        self._root_fd, alone = claim(self.root)
        try:
            if not alone:
                log.warning(
                    "another qasr is using the upload directory %s: each counts only its own uploads "
                    "against the limits; give each server its own upload_dir",
                    self.root,
                )
            self._scan(alone)
            text = secret.encode() if isinstance(secret, str) else secret
            self._secret = text if text else self._signing_key()
        except BaseException:
            self.close()
            raise
        share(self._root_fd)

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadStore:
        """The store the `upload_*` settings describe, in `upload_dir` or else `<data_dir>/uploads`."""
        root = settings.upload_dir if settings.upload_dir is not None else settings.data_dir / "uploads"
        return cls(
            root.expanduser(),
            secret=settings.upload_secret,
            policy_ttl_s=settings.upload_policy_ttl_s,
            file_ttl_s=settings.upload_ttl_s,
            max_bytes=settings.upload_max_bytes,
            max_bytes_per_key=settings.upload_max_bytes_per_key,
            max_objects_per_key=settings.upload_max_objects_per_key,
            max_total_bytes=settings.upload_max_total_bytes,
            max_total_objects=settings.upload_max_total_objects,
        )

    def close(self) -> None:
        """Release the root, and remove it if this store created it; a given directory stays."""
        fd, self._root_fd = self._root_fd, None
        if fd is not None:
            os.close(fd)
        if self._owns_root:
            shutil.rmtree(self.root, ignore_errors=True)

    def __enter__(self) -> UploadStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- step 1: the policy (§3.2) -----------------------------------------------------------------

    def issue_policy(self, api_key: str | None, model: str, upload_host: str) -> dict[str, str | int]:
        """The `data` object of the getPolicy answer: a fresh `upload_dir` the caller may write into.

        `api_key` is the caller's key, or None when the server runs without keys; pass the same value
        to `resolve`. `upload_host` is where the SDK will POST the file (this server's upload route).
        """
        now = self._clock()
        # Unique per policy: the SDK reuses one policy for every file of a call (§3.3).
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        upload_dir = f"dashscope-instant/{secrets.token_hex(16)}/{day}/{secrets.token_hex(8)}"
        document = {
            "upload_dir": upload_dir,
            "model": model,
            "api_key_sha256": hash_api_key(api_key),
            "expires_at": now + self.policy_ttl_s,
            "max_bytes": self.max_bytes,
        }
        policy = base64.b64encode(json.dumps(document, sort_keys=True).encode()).decode("ascii")
        return {
            "policy": policy,
            "signature": self._sign(policy),
            "upload_dir": upload_dir,
            "upload_host": upload_host,
            "expire_in_seconds": int(self.policy_ttl_s),
            "max_file_size_mb": max(1, self.max_bytes // _MIB),
            "capacity_limit_mb": min(self.max_bytes_per_key, self.max_total_bytes) // _MIB,
            "oss_access_key_id": ACCESS_KEY_ID,
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
        }

    # --- step 2: the multipart POST (§3.3) ---------------------------------------------------------

    def accept_upload(self, fields: Mapping[str, str], filename: str | None, data: UploadData) -> str:
        """Check the form fields the SDK sends, store the file part, and return its key.

        Raises `InvalidUploadPolicy` (bad, forged or expired policy, a key outside the policy's
        `upload_dir`, an unsafe file name, a key already written), `AudioTooLarge`, or
        `UploadQuotaExceeded` when the caller's API key, or the whole store, is at its limit even after
        expired files are removed. Costs the same however many objects are stored.
        """
        lowered = {name.lower(): value for name, value in fields.items()}
        policy = self._verify(lowered)
        key = checked_key(lowered.get("key"), policy.upload_dir)
        self._expire_due()
        if self._paths(key)[1].exists():
            raise _exists(key)
        owner = policy.api_key_hash
        with self._lock:
            self._check_room(owner, 0)  # refuse before reading the body when already full
        tmp_data, size = self._write_temp(_chunks(data), min(self.max_bytes, policy.max_bytes))
        try:
            now = self._clock()
            meta = StoredUpload(
                key=key,
                api_key_hash=owner,
                model=policy.model,
                created_at=now,
                expires_at=now + self.file_ttl_s,
                size_bytes=size,
                content_type=_content_type(lowered.get("x-oss-content-type")),
                filename=filename if filename is not None and is_safe_name(filename) else None,
            )
            with self._lock:  # reserve the room, so concurrent uploads cannot overshoot the limits
                self._check_room(owner, size)
                self._count(owner, size, 1)
            try:
                self._commit(key, tmp_data, meta)
            except BaseException:
                with self._lock:
                    self._count(owner, -size, -1)
                raise
            with self._lock:
                heapq.heappush(self._expiry, (meta.expires_at, self._paths(key)[1].stem, owner, size))
        finally:
            tmp_data.unlink(missing_ok=True)
        return key

    def _verify(self, fields: Mapping[str, str]) -> Policy:
        policy, signature = fields.get("policy"), fields.get("signature")
        if not policy or not signature or fields.get("ossaccesskeyid") != ACCESS_KEY_ID:
            raise InvalidUploadPolicy(
                "The upload form needs the OSSAccessKeyId, policy and Signature from "
                "GET /api/v1/uploads?action=getPolicy."
            )
        expected = self._sign(policy).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            raise InvalidUploadPolicy("The upload policy signature is not valid; get a new policy.")
        document = decode_policy(policy)
        if self._clock() >= document.expires_at:
            raise InvalidUploadPolicy("The upload policy has expired; get a new policy.")
        return document

    def _sign(self, policy: str) -> str:
        digest = hmac.new(self._secret, policy.encode("utf-8", "replace"), hashlib.sha256).digest()
        return base64.b64encode(digest).decode("ascii")

    def _write_temp(self, chunks: Iterator[bytes], limit: int) -> tuple[Path, int]:
        """Stream the body into a private temporary file, stopping as soon as it passes `limit`."""
        fd, name = tempfile.mkstemp(dir=self._tmp, prefix="upload-")  # mode 0600
        path, size = Path(name), 0
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    size += len(chunk)
                    if size > limit:
                        raise AudioTooLarge(f"The file is larger than the upload limit of {limit} bytes.")
                    out.write(chunk)
                sync(out)
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, size

    def _commit(self, key: str, tmp_data: Path, meta: StoredUpload) -> None:
        """Publish the object: claim the data path with a hard link, then rename the sidecar in place.

        `os.link` fails if the target exists, which gives `x-oss-forbid-overwrite: true` atomically even
        against a concurrent upload of the same key (§3.3). An object counts as present only once its
        sidecar exists, so a reader never sees a half-written one; both are synced to disk first, and
        `resolve` checks the data's size against the sidecar, so a crash cannot serve a partial file.
        """
        meta_path, data_path = self._paths(key)
        try:
            os.link(tmp_data, data_path)
        except FileExistsError:
            raise _exists(key) from None
        try:
            tmp_meta = self._tmp / f"{tmp_data.name}.json"
            fd = os.open(tmp_meta, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(asdict(meta), out)
                sync(out)
            os.replace(tmp_meta, meta_path)
        except BaseException:
            data_path.unlink(missing_ok=True)
            raise

    # --- quotas: running totals, never a listing (issue 13) ----------------------------------------

    def _check_room(self, owner: str | None, size: int) -> None:
        """Refuse one more object of `size` bytes for `owner` if its quota or the store is full."""
        mine, total = self._usage.get(owner, _Usage()), self._total
        if mine.objects >= self.max_objects_per_key or mine.size_bytes + size > self.max_bytes_per_key:
            who = "this API key" if owner is not None else "callers without an API key"
            raise UploadQuotaExceeded(
                f"The upload quota of {who} is used up: it keeps {mine.objects} of "
                f"{self.max_objects_per_key} files and {_size(mine.size_bytes)} of "
                f"{_size(self.max_bytes_per_key)}; {self._wait_hint()}"
            )
        if total.objects >= self.max_total_objects or total.size_bytes + size > self.max_total_bytes:
            raise UploadQuotaExceeded(
                f"The upload store is full ({self.max_total_objects} files or "
                f"{_size(self.max_total_bytes)}); {self._wait_hint()}"
            )

    def _wait_hint(self) -> str:
        return f"try again after older uploads expire (they are kept {self.file_ttl_s / 3600:g} hours)."

    def _count(self, owner: str | None, size: int, objects: int) -> None:
        mine = self._usage.setdefault(owner, _Usage())
        for usage in (mine, self._total):
            usage.size_bytes += size
            usage.objects += objects
        if mine.objects == 0:
            del self._usage[owner]

    # --- step 3: the generation call names the object (§3.4) ---------------------------------------

    def resolve(self, oss_url_or_key: str, api_key: str | None, model: str) -> Path:
        """The stored file behind `oss://<key>` (or a bare key), for the same API key and model.

        Raises `UploadNotFound` for a key never uploaded here or uploaded under another API key (the
        same answer, so other keys learn nothing), an expired object, or one uploaded for another model.
        """
        key = oss_url_or_key.removeprefix("oss://")
        meta_path, data_path = self._paths(key)
        meta = _load_meta(meta_path)
        shown = _shown(key)
        if meta is None or meta.key != key or meta.api_key_hash != hash_api_key(api_key):
            raise UploadNotFound(f"{shown} was not found; upload the file again.")
        if self._clock() >= meta.expires_at:
            raise UploadNotFound(f"{shown} has expired; upload the file again.")
        if meta.model != model:
            raise UploadNotFound(f"{shown} was uploaded for model {meta.model!r}, not {model!r}.")
        if size_of(data_path) != meta.size_bytes:  # missing, or cut short by a crash
            raise UploadNotFound(f"{shown} was not found; upload the file again.")
        return data_path

    # --- expiry and leftovers ----------------------------------------------------------------------

    def cleanup(self) -> int:
        """Remove expired objects and partial files abandoned for an hour; return how many objects went.

        Expired objects come off a heap ordered by expiry; only `tmp/` (uploads in progress) is listed.
        """
        removed = self._expire_due()
        for entry in listing(self._tmp):
            if age_s(Path(entry.path)) > _STALE_S:  # a crash of another store sharing this root
                unlink(Path(entry.path))
        return removed

    def _expire_due(self) -> int:
        """Remove the objects whose time is up: as many heap pops as objects expired, nothing more."""
        now, due = self._clock(), []
        with self._lock:
            while self._expiry and self._expiry[0][0] <= now:
                _, name, owner, size = heapq.heappop(self._expiry)
                self._count(owner, -size, -1)
                due.append(name)
        for name in due:
            unlink(self._objects / f"{name}.json")  # first: without its sidecar an object is gone
            unlink(self._objects / f"{name}.data")
        return len(due)

    def _scan(self, alone: bool) -> None:
        """Count the stored objects, once, at start, and remove what is expired or half-written.

        Alone in the root, every partial file is a crashed process's: an upload's temporary file, or
        data whose sidecar was never written (a crash mid-commit). Sharing the root with a running
        store, only those older than the SDK's upload timeout are, as the other may be writing them.
        """
        now = self._clock()
        entries = {entry.name: entry for entry in listing(self._objects)}
        for name, entry in entries.items():
            stem, suffix = os.path.splitext(name)
            data = self._objects / f"{stem}.data"
            if suffix == ".json":
                meta = _load_meta(Path(entry.path))
                if meta is not None and self._is_whole(name, meta, now):
                    self._expiry.append((meta.expires_at, stem, meta.api_key_hash, meta.size_bytes))
                    self._count(meta.api_key_hash, meta.size_bytes, 1)
                else:
                    unlink(Path(entry.path))
                    unlink(data)
            elif suffix == ".data" and f"{stem}.json" not in entries and (alone or age_s(data) > _STALE_S):
                unlink(data)
        heapq.heapify(self._expiry)
        for entry in listing(self._tmp):
            if alone or age_s(Path(entry.path)) > _STALE_S:
                unlink(Path(entry.path))

    def _is_whole(self, name: str, meta: StoredUpload, now: float) -> bool:
        """The sidecar `name` is in its right place, unexpired, and its data is all there."""
        meta_path, data_path = self._paths(meta.key)
        return meta_path.name == name and now < meta.expires_at and size_of(data_path) == meta.size_bytes

    def _signing_key(self) -> bytes:
        """The key in `KEY_FILE` (mode 0600), made on the first start so policies outlive a restart."""
        path = self.root / KEY_FILE
        if not path.exists():
            fd, name = tempfile.mkstemp(dir=self._tmp, prefix="key-")  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="ascii") as out:
                    out.write(secrets.token_hex(32) + "\n")
                    sync(out)
                with contextlib.suppress(FileExistsError):  # another store made it first: use theirs
                    os.link(name, path)
            finally:
                os.unlink(name)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
            log.warning("the upload signing key %s was readable by others; it is now mode 0600", path)
        key = path.read_bytes().strip()
        if len(key) < _MIN_SECRET_BYTES:
            raise ValueError(
                f"the upload signing key {path} is damaged: delete it (unexpired upload policies stop "
                "working) or set upload_secret"
            )
        return key

    def _paths(self, key: str) -> tuple[Path, Path]:
        """Sidecar and data paths: named by the key's SHA-256, never by caller-chosen text."""
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._objects / f"{name}.json", self._objects / f"{name}.data"


def _size(size_bytes: int) -> str:
    return f"{size_bytes} bytes" if size_bytes < _MIB else f"{size_bytes / _MIB:.1f} MB"


def _chunks(data: UploadData) -> Iterator[bytes]:
    if isinstance(data, (bytes, bytearray)):
        yield bytes(data)
    elif isinstance(data, _Readable):
        while chunk := data.read(_CHUNK_BYTES):
            yield chunk
    else:
        yield from data


def _content_type(value: str | None) -> str:
    return value if value is not None and _CONTENT_TYPE.fullmatch(value) else "application/octet-stream"


def _load_meta(path: Path) -> StoredUpload | None:
    """The sidecar at `path`, or None when it is missing or unreadable (cleanup then removes it)."""
    try:
        return StoredUpload(**json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, TypeError):
        return None


def _exists(key: str) -> InvalidUploadPolicy:
    return InvalidUploadPolicy(f"{_shown(key)} already exists and cannot be overwritten; get a new policy.")


def _shown(key: str) -> str:
    """The key as an `oss://` URL for messages, cut short so a huge key cannot flood a response."""
    url = "oss://" + key
    return url if len(url) <= 200 else url[:200] + "…"
