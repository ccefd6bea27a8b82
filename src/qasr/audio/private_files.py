"""File-system steps of a store that keeps callers' files on disk (`qasr.audio.uploads`): a root locked
for the store's lifetime, private directories, writes synced before they are published, and removals
and stats that tolerate files going away meanwhile."""

from __future__ import annotations

import contextlib
import os
import sys
import time
from pathlib import Path
from typing import IO, Any

if sys.platform != "win32":
    import fcntl


def claim(root: Path) -> tuple[int | None, bool]:
    """Lock `root` for a store's lifetime; True when no other store holds it (its leftovers are ours).

    The lock starts exclusive, for the start-up scan; `share` then makes it shared. Without `flock`
    (Windows, some network file systems) a store assumes it has the root to itself.
    """
    if sys.platform == "win32":
        return None, True
    fd = os.open(root, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        fcntl.flock(fd, fcntl.LOCK_SH)
        return fd, False
    except OSError:
        os.close(fd)
        return None, True
    return fd, True


def share(fd: int | None) -> None:
    """Let other stores open the root (they then leave this one's partial files alone)."""
    if fd is not None and sys.platform != "win32":
        fcntl.flock(fd, fcntl.LOCK_SH)


def private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is filtered by the umask; an existing dir may be wider
    return path


def listing(path: Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as entries:
        return list(entries)


def sync(out: IO[Any]) -> None:
    """Flush a file being written to disk, so a crash after it is published finds it whole."""
    out.flush()
    os.fsync(out.fileno())


def unlink(path: Path) -> None:
    """Remove a file, best effort: a leftover that cannot go now is tried again at the next start."""
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def size_of(path: Path) -> int | None:
    try:
        return path.stat().st_size
    except OSError:
        return None


def age_s(path: Path) -> float:
    """Seconds since `path` was last written; 0 if it is gone (an upload finishing meanwhile).

    From the file system's clock, not the store's `clock`: partial files are crash leftovers."""
    try:
        return time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return 0.0
