"""The result document of a finished job (docs/spec/filetrans.md section 3), the files it is kept in,
and the signed URL that lets user code fetch it with a plain GET.

Sentences: with word times (the forced aligner placed a segment's words), a segment is split at its
sentence ends and long pauses (`qasr.text.words.sentences_from`) and each sentence spans its words; without them, each speech segment (cut at pauses, up
to `segment_max_s`) is one sentence with the segment's times, since times inside it are not known and
are never invented. `words` appear only when asked for and only with aligned times; `emotion` is never
written (no model here predicts one).
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from qasr.text.words import sentences_from
from qasr.types import AudioInfo, Segment, Transcript, Word

_TRAILING_PUNCTUATION = ",.!?;:，。！？；：、…\"'”’)]}」』》〉）"
"""Moved from a word's end into its `punctuation` (the cloud's shape); `%` and the like stay."""
KEY_FILE = "result-signing.key"


@dataclass(frozen=True)
class ChannelResult:
    channel_id: int
    transcript: Transcript


def result_document(
    file_url: str, info: AudioInfo, channels: Sequence[ChannelResult], *, words: bool
) -> dict[str, Any]:
    """The JSON document of a SUCCEEDED job."""
    return {
        "file_url": file_url,
        "audio_info": {"format": info.container.split(",", 1)[0], "sample_rate": info.sample_rate},
        "transcripts": [_transcript(c, words) for c in channels],
    }


def _transcript(channel: ChannelResult, words: bool) -> dict[str, Any]:
    t = channel.transcript
    sentences = [s for segment in t.segments for s in _sentences(segment, words)]
    for k, sentence in enumerate(sentences):
        sentence["sentence_id"] = k
    out: dict[str, Any] = {"channel_id": channel.channel_id, "text": t.text, "sentences": sentences}
    if words and any(s.word_timing != "word" for s in t.segments):
        # A qasr extension, as in verbose_json: why some sentences have no `words` (never invented).
        out["word_timestamps"] = (
            "partial" if any(s.word_timing == "word" for s in t.segments) else "unavailable"
        ) + ": no forced aligner placed these words (QASR_ALIGNER, or a language it does not cover)"
    return out


def _sentences(segment: Segment, words: bool) -> Iterator[dict[str, Any]]:
    if segment.word_timing != "word" or not segment.words:
        yield _sentence(segment.start_s, segment.end_s, segment.language, segment.text.strip(), None)
        return
    # Cut where the other APIs cut (qasr.text.words): at sentence punctuation or a long pause.
    for sentence in sentences_from(segment.text, segment.words):
        shown = [_word(w) for w in sentence.words] if words else None
        yield _sentence(sentence.start_s, sentence.end_s, segment.language, sentence.text, shown)


def _sentence(
    start_s: float, end_s: float, language: str | None, text: str, words: list[dict[str, Any]] | None
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "sentence_id": 0,
        "begin_time": _ms(start_s),
        "end_time": _ms(end_s),
        "language": language,
        "text": text,
    }
    if words is not None:
        out["words"] = words
    return out


def _word(word: Word) -> dict[str, Any]:
    text = word.text.rstrip(_TRAILING_PUNCTUATION)
    if not text:  # a word that is only punctuation keeps it as its text
        text = word.text
    return {
        "begin_time": _ms(word.start_s),
        "end_time": _ms(word.end_s),
        "text": text,
        "punctuation": word.text[len(text) :],
    }


def _ms(seconds: float) -> int:
    return round(seconds * 1000)


# --- files ------------------------------------------------------------------------------------------


class ResultFiles:
    """Result documents in one directory, each written atomically: a temporary file in the same
    directory, fsynced, renamed over its name, and the directory fsynced; a crash leaves either no
    file or a whole one (and a stray `*.tmp`, removed at the next start)."""

    def __init__(self, root: Path) -> None:
        self.root = _private_dir(root)
        for stray in self.root.glob("*.tmp"):
            stray.unlink(missing_ok=True)

    def write(self, name: str, document: dict[str, Any]) -> None:
        data = json.dumps(document, ensure_ascii=False, separators=(",", ":")).encode()
        fd, tmp = tempfile.mkstemp(dir=self.root, prefix=".result-", suffix=".tmp")
        try:
            with os.fdopen(fd, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())
            os.replace(tmp, self.path(name))
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        _fsync_dir(self.root)

    def path(self, name: str) -> Path:
        if not _is_result_name(name):
            raise ValueError(f"not a result name: {name!r}")
        return self.root / name

    def remove(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError, ValueError):
            self.path(name).unlink()


def _is_result_name(name: str) -> bool:
    stem, dot, ext = name.partition(".")
    return dot == "." and ext == "json" and len(stem) == 36 and all(c in "0123456789abcdef-" for c in stem)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _private_dir(path: Path) -> Path:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    return path


# --- signed URLs ------------------------------------------------------------------------------------


class UrlSigner:
    """Signs result URLs (task id + expiry) with HMAC-SHA256 under a key kept in the jobs directory
    (`result-signing.key`, mode 0600, made on the first start), so URLs outlive a restart."""

    def __init__(self, key: bytes) -> None:
        self._key = key

    @classmethod
    def in_dir(cls, root: Path) -> UrlSigner:
        path = _private_dir(root) / KEY_FILE
        if not path.exists():
            fd, tmp = tempfile.mkstemp(dir=root, prefix=".key-", suffix=".tmp")  # mode 0600
            try:
                with os.fdopen(fd, "w", encoding="ascii") as out:
                    out.write(secrets.token_hex(32) + "\n")
                    out.flush()
                    os.fsync(out.fileno())
                with contextlib.suppress(FileExistsError):  # another process made it first: use theirs
                    os.link(tmp, path)
            finally:
                os.unlink(tmp)
        if stat.S_IMODE(path.stat().st_mode) & 0o077:
            os.chmod(path, 0o600)
        key = path.read_bytes().strip()
        if len(key) < 32:
            raise ValueError(
                f"the result signing key {path} is damaged: delete it (result URLs stop working)"
            )
        return cls(key)

    def signature(self, task_id: str, expires: int) -> str:
        message = f"qasr-result\0{task_id}\0{expires}".encode()
        return hmac.new(self._key, message, hashlib.sha256).hexdigest()

    def check(self, task_id: str, expires: str, signature: str, now: float) -> bool:
        """True when `signature` is this server's for `task_id` and `expires`, and it has not passed."""
        if not expires.isdigit() or len(expires) > 12 or int(expires) < now:
            return False
        return hmac.compare_digest(self.signature(task_id, int(expires)), signature)
