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
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import re
import secrets
import shutil
import tempfile
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, runtime_checkable
from urllib.parse import unquote

from qasr.errors import AudioTooLarge, InvalidUploadPolicy, Overloaded, UploadNotFound

if TYPE_CHECKING:
    from qasr.settings import Settings

ACCESS_KEY_ID = "qasr-local"
"""The `oss_access_key_id` we hand out; the SDK echoes it back as `OSSAccessKeyId` (§3.3)."""

_MIB = 1024 * 1024
_MAX_KEY_CHARS = 1023  # OSS object keys are at most 1023 bytes
_MAX_NAME_BYTES = 255  # a file name on every common file system
_CHUNK_BYTES = _MIB
_CLEANUP_EVERY_S = 60.0
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


@dataclass(frozen=True)
class _Policy:
    """What a signed policy document grants: one `upload_dir`, until `expires_at`."""

    upload_dir: str
    model: str
    api_key_hash: str | None
    expires_at: float
    max_bytes: int


class UploadStore:
    """Objects uploaded through signed policies, kept on disk until they expire.

    `root=None` makes a private temporary directory (mode 0700) that `close()` removes. Times come from
    `clock` (seconds since the epoch) so tests can move time without sleeping. Thread-safe; routes
    should call `accept_upload` and `cleanup` off the event loop, since they do file I/O.
    """

    def __init__(
        self,
        root: Path | str | None = None,
        *,
        secret: bytes | str | None = None,
        policy_ttl_s: float = 300.0,
        file_ttl_s: float = 48 * 3600.0,
        max_bytes: int = 100 * _MIB,
        capacity_bytes: int = 10 * 1024 * _MIB,
        max_files: int = 10_000,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if min(policy_ttl_s, file_ttl_s) <= 0 or min(max_bytes, capacity_bytes, max_files) <= 0:
            raise ValueError("upload TTLs, sizes and capacity must be positive")
        self._owns_root = root is None
        self.root = Path(tempfile.mkdtemp(prefix="qasr-uploads-")) if root is None else Path(root)
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        self._objects = _private_dir(self.root / "objects")
        self._tmp = _private_dir(self.root / "tmp")
        self._secret = secret.encode() if isinstance(secret, str) else secret or secrets.token_bytes(32)
        self.policy_ttl_s, self.file_ttl_s = policy_ttl_s, file_ttl_s
        self.max_bytes, self.capacity_bytes, self.max_files = max_bytes, capacity_bytes, max_files
        self._clock = clock
        self._lock = threading.Lock()
        self._last_cleanup = float("-inf")

    @classmethod
    def from_settings(cls, settings: Settings) -> UploadStore:
        """A store configured by the `upload_*` settings; capacity limits keep their defaults."""
        return cls(
            settings.upload_dir,
            secret=settings.upload_secret,
            policy_ttl_s=settings.upload_policy_ttl_s,
            file_ttl_s=settings.upload_ttl_s,
            max_bytes=settings.upload_max_bytes,
        )

    def close(self) -> None:
        """Remove the root if this store created it; a configured directory is left in place."""
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
        if now - self._last_cleanup >= _CLEANUP_EVERY_S:
            self.cleanup()
        # Unique per policy: the SDK reuses one policy for every file of a call (§3.3).
        day = time.strftime("%Y-%m-%d", time.gmtime(now))
        upload_dir = f"dashscope-instant/{secrets.token_hex(16)}/{day}/{secrets.token_hex(8)}"
        document = {
            "upload_dir": upload_dir,
            "model": model,
            "api_key_sha256": _hash_api_key(api_key),
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
            "capacity_limit_mb": self.capacity_bytes // _MIB,
            "oss_access_key_id": ACCESS_KEY_ID,
            "x_oss_object_acl": "private",
            "x_oss_forbid_overwrite": "true",
        }

    # --- step 2: the multipart POST (§3.3) ---------------------------------------------------------

    def accept_upload(self, fields: Mapping[str, str], filename: str | None, data: UploadData) -> str:
        """Check the form fields the SDK sends, store the file part, and return its key.

        Raises `InvalidUploadPolicy` (bad, forged or expired policy, a key outside the policy's
        `upload_dir`, an unsafe file name, a key already written), `AudioTooLarge`, or `Overloaded`
        when the store is full even after removing expired files.
        """
        lowered = {name.lower(): value for name, value in fields.items()}
        policy = self._verify(lowered)
        key = _checked_key(lowered.get("key"), policy.upload_dir)
        if self._paths(key)[1].exists():
            raise _exists(key)
        with self._lock:
            self._ensure_room(0)  # refuse before reading the body when already full
        tmp_data, size = self._write_temp(_chunks(data), min(self.max_bytes, policy.max_bytes))
        try:
            now = self._clock()
            meta = StoredUpload(
                key=key,
                api_key_hash=policy.api_key_hash,
                model=policy.model,
                created_at=now,
                expires_at=now + self.file_ttl_s,
                size_bytes=size,
                content_type=_content_type(lowered.get("x-oss-content-type")),
                filename=filename if filename is not None and _is_safe_name(filename) else None,
            )
            with self._lock:
                self._ensure_room(size)
                self._commit(key, tmp_data, meta)
        finally:
            tmp_data.unlink(missing_ok=True)
        return key

    def _verify(self, fields: Mapping[str, str]) -> _Policy:
        policy, signature = fields.get("policy"), fields.get("signature")
        if not policy or not signature or fields.get("ossaccesskeyid") != ACCESS_KEY_ID:
            raise InvalidUploadPolicy(
                "The upload form needs the OSSAccessKeyId, policy and Signature from "
                "GET /api/v1/uploads?action=getPolicy."
            )
        expected = self._sign(policy).encode()
        if not hmac.compare_digest(expected, signature.encode("utf-8", "replace")):
            raise InvalidUploadPolicy("The upload policy signature is not valid; get a new policy.")
        document = _decode_policy(policy)
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
        except BaseException:
            path.unlink(missing_ok=True)
            raise
        return path, size

    def _commit(self, key: str, tmp_data: Path, meta: StoredUpload) -> None:
        """Publish the object: claim the data path with a hard link, then rename the sidecar in place.

        `os.link` fails if the target exists, which gives `x-oss-forbid-overwrite: true` atomically even
        against a concurrent upload of the same key (§3.3). An object counts as present only once its
        sidecar exists, so a reader never sees a half-written one.
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
            os.replace(tmp_meta, meta_path)
        except BaseException:
            data_path.unlink(missing_ok=True)
            raise

    def _ensure_room(self, size: int) -> None:
        """Refuse one more object of `size` bytes if it would not fit, even after a cleanup."""
        if self._fits(size):
            return
        self._cleanup_locked()
        if not self._fits(size):
            raise Overloaded(
                f"The upload store is full ({self.max_files} files or {self.capacity_bytes // _MIB} MB); "
                "try again after older uploads expire."
            )

    def _fits(self, size: int) -> bool:
        sizes = [path.stat().st_size for path in self._objects.glob("*.data")]
        return len(sizes) < self.max_files and sum(sizes) + size <= self.capacity_bytes

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
        if meta is None or meta.key != key or meta.api_key_hash != _hash_api_key(api_key):
            raise UploadNotFound(f"{shown} was not found; upload the file again.")
        if self._clock() >= meta.expires_at:
            raise UploadNotFound(f"{shown} has expired; upload the file again.")
        if meta.model != model:
            raise UploadNotFound(f"{shown} was uploaded for model {meta.model!r}, not {model!r}.")
        if not data_path.is_file():
            raise UploadNotFound(f"{shown} was not found; upload the file again.")
        return data_path

    # --- expiry ------------------------------------------------------------------------------------

    def cleanup(self) -> int:
        """Remove expired objects (and abandoned partial files); return how many objects went."""
        with self._lock:
            return self._cleanup_locked()

    def _cleanup_locked(self) -> int:
        now, removed = self._clock(), 0
        self._last_cleanup = now
        for meta_path in self._objects.glob("*.json"):
            meta = _load_meta(meta_path)
            if meta is None or now >= meta.expires_at:
                meta_path.unlink(missing_ok=True)
                meta_path.with_suffix(".data").unlink(missing_ok=True)
                removed += 1
        # File ages come from the file system's clock, not `clock`: these are crash leftovers.
        orphans = [p for p in self._objects.glob("*.data") if not p.with_suffix(".json").exists()]
        for path in [*orphans, *self._tmp.iterdir()]:
            if _age_s(path) > _STALE_S:
                path.unlink(missing_ok=True)
        return removed

    def _paths(self, key: str) -> tuple[Path, Path]:
        """Sidecar and data paths: named by the key's SHA-256, never by caller-chosen text."""
        name = hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()
        return self._objects / f"{name}.json", self._objects / f"{name}.data"


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; an existing dir may be wider
    return path


def _age_s(path: Path) -> float:
    """Seconds since `path` was last written; 0 if it is gone (an upload finishing meanwhile)."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0


def _hash_api_key(api_key: str | None) -> str | None:
    """Unkeyed on purpose: stored objects stay bound to their key across restarts with a new secret."""
    if api_key is None:
        return None
    return hashlib.sha256(b"qasr-upload-api-key\0" + api_key.encode("utf-8", "surrogatepass")).hexdigest()


def _decode_policy(policy: str) -> _Policy:
    try:
        document = json.loads(base64.b64decode(policy, validate=True))
        result = _Policy(
            upload_dir=document["upload_dir"],
            model=document["model"],
            api_key_hash=document["api_key_sha256"],
            expires_at=float(document["expires_at"]),
            max_bytes=int(document["max_bytes"]),
        )
    except (ValueError, TypeError, KeyError) as exc:
        raise InvalidUploadPolicy("The upload policy is malformed; get a new policy.") from exc
    if not isinstance(result.upload_dir, str) or not isinstance(result.model, str):
        raise InvalidUploadPolicy("The upload policy is malformed; get a new policy.")
    return result


def _checked_key(key: str | None, upload_dir: str) -> str:
    """`key` if it is `<upload_dir>/<name>` with one safe file name, as the SDK builds it (§3.3)."""
    prefix = upload_dir + "/"
    if not key or len(key) > _MAX_KEY_CHARS or not key.startswith(prefix):
        raise InvalidUploadPolicy(
            f"The upload key must be {prefix}<file name>, inside the policy's upload_dir."
        )
    name = key[len(prefix) :]
    # Check the decoded form too, so a later layer that unquotes can never see `..` or a separator.
    if not (_is_safe_name(name) and _is_safe_name(unquote(name))):
        raise InvalidUploadPolicy("The file name in the upload key is empty, too long or not allowed.")
    return key


def _is_safe_name(name: str) -> bool:
    """One path component: no separators, no `.`/`..`, no control or format characters."""
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= _MAX_NAME_BYTES
        and name not in (".", "..")
        and not any(ch in "/\\" or unicodedata.category(ch).startswith("C") for ch in name)
    )


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
