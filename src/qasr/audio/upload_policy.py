"""What a signed upload policy grants, and the checks on what a caller names under it (spec §3.2-3.3):
the policy document, the object key (`<upload_dir>/<one safe file name>`) and the API-key hash that
binds stored objects to their owner. Signing is `qasr.audio.uploads.UploadStore`'s (it holds the key)."""

from __future__ import annotations

import base64
import hashlib
import json
import unicodedata
from dataclasses import dataclass
from urllib.parse import unquote

from qasr.errors import InvalidUploadPolicy

MAX_KEY_CHARS = 1023
"""OSS object keys are at most 1023 bytes."""
MAX_NAME_BYTES = 255
"""A file name on every common file system."""


@dataclass(frozen=True)
class Policy:
    """What a signed policy document grants: one `upload_dir`, until `expires_at`."""

    upload_dir: str
    model: str
    api_key_hash: str | None
    expires_at: float
    max_bytes: int


def hash_api_key(api_key: str | None) -> str | None:
    """Unkeyed on purpose: stored objects stay bound to their key across restarts with a new secret."""
    if api_key is None:
        return None
    return hashlib.sha256(b"qasr-upload-api-key\0" + api_key.encode("utf-8", "surrogatepass")).hexdigest()


def decode_policy(policy: str) -> Policy:
    try:
        document = json.loads(base64.b64decode(policy, validate=True))
        result = Policy(
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


def checked_key(key: str | None, upload_dir: str) -> str:
    """`key` if it is `<upload_dir>/<name>` with one safe file name, as the SDK builds it (§3.3)."""
    prefix = upload_dir + "/"
    if not key or len(key) > MAX_KEY_CHARS or not key.startswith(prefix):
        raise InvalidUploadPolicy(
            f"The upload key must be {prefix}<file name>, inside the policy's upload_dir."
        )
    name = key[len(prefix) :]
    # Check the decoded form too, so a later layer that unquotes can never see `..` or a separator.
    if not (is_safe_name(name) and is_safe_name(unquote(name))):
        raise InvalidUploadPolicy("The file name in the upload key is empty, too long or not allowed.")
    return key


def is_safe_name(name: str) -> bool:
    """One path component: no separators, no `.`/`..`, no control or format characters."""
    return (
        0 < len(name.encode("utf-8", "surrogatepass")) <= MAX_NAME_BYTES
        and name not in (".", "..")
        and not any(ch in "/\\" or unicodedata.category(ch).startswith("C") for ch in name)
    )
