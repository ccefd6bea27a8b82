"""Typed domain errors. No HTTP in here: `qasr.api.errors` maps each class to wire codes in one table.

Every message is written for the user who sent the request: it says what was wrong and what to do.
"""

from __future__ import annotations

MAX_QUOTED_CHARS = 100
"""An error message quotes at most this many characters of a value the client sent (issue 13)."""


def format_value(value: object) -> str:
    """A value the client sent, as an error message quotes it: at most `MAX_QUOTED_CHARS` characters
    (then an ellipsis), and anything UTF-8 cannot carry (a lone surrogate from a JSON `\\ud800`)
    escaped, so that no value can flood an error response or break its encoding (issue 13)."""
    text = str(value)
    if len(text) > MAX_QUOTED_CHARS:
        text = text[:MAX_QUOTED_CHARS] + "…"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


class QasrError(Exception):
    """Base of every error qasr raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


# --- the caller sent something we cannot use (4xx) -------------------------------------------------


class InvalidRequest(QasrError):
    """A malformed or inconsistent request (missing field, wrong type, bad value)."""

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class UnknownLanguage(InvalidRequest):
    """A language code that neither the model nor the DashScope API knows."""


class AudioError(InvalidRequest):
    """The audio itself is unusable."""


class AudioDecodeError(AudioError):
    """The data is not audio FFmpeg can read (corrupt, truncated, or another kind of file)."""


class NoAudioStream(AudioError):
    """The container is readable but holds no audio stream (a video-only file, an image)."""


class EmptyAudio(AudioError):
    """The input has no bytes, or decodes to zero samples."""


class AudioTooLarge(AudioError):
    """The input is over the configured byte limit."""


class AudioTooLong(AudioError):
    """The input is over the configured duration limit."""


class SourceError(InvalidRequest):
    """The audio reference cannot be resolved to bytes."""


class UnsupportedSource(SourceError):
    """A URL scheme or reference form we do not read."""


class ForbiddenSource(SourceError):
    """A reference that this server refuses for safety (server-side files, private network hosts)."""


class DownloadFailed(SourceError):
    """An http(s) download failed: bad status, timeout, or connection error."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class UploadNotFound(SourceError):
    """An `oss://` key that was never uploaded here, has expired, or belongs to another key or model."""


class InvalidUploadPolicy(InvalidRequest):
    """A temporary-upload POST with a forged, expired or mismatched policy."""


class ItnUnavailable(InvalidRequest):
    """`enable_itn` was asked for, but this server has no ITN: WeTextProcessing (pynini) is not installed."""


class ModelNotFound(QasrError):
    """The request names a model this server does not serve."""


class EndpointNotFound(QasrError):
    """The request's path is not an endpoint of this server (a typo, or a client of another API)."""


class MethodNotAllowed(QasrError):
    """The path is an endpoint, but not for this HTTP method; `allowed` lists the methods it takes."""

    def __init__(self, message: str, allowed: tuple[str, ...] = ()) -> None:
        super().__init__(message)
        self.allowed = allowed


class Unauthorized(QasrError):
    """Missing or wrong API key."""


# --- the server cannot serve right now (5xx / 429) -------------------------------------------------


class Overloaded(QasrError):
    """The request queue is full; the caller should retry later."""


class UploadQuotaExceeded(Overloaded):
    """The caller's API key, or the whole upload store, keeps as many uploaded bytes or files as allowed;
    room comes back as older uploads expire (issue 13)."""


class QueueTimeout(Overloaded):
    """The request waited for the model past its deadline and was dropped before it ran."""


class EngineUnavailable(QasrError):
    """The model worker is not running (failed to start, or died)."""


class ModelLoadError(QasrError):
    """The model cannot be loaded; raised at start-up with one sentence that says what to do."""


class Draining(QasrError):
    """The server is shutting down (SIGTERM): it finishes what it has and takes nothing new."""


class ClientGone(QasrError):
    """The client closed the connection before its answer was ready: the work was cancelled, and the
    answer (HTTP 499, nginx's "client closed request") is written for the log only."""


class RequestTimeout(QasrError):
    """The request took longer than the configured limit."""


class UnsupportedMediaType(InvalidRequest):
    """A JSON endpoint got a body of another declared type (or none). Requiring `application/json`
    keeps a browser's cross-site "simple" POST (text/plain, a form) from reaching the model (issue 13)."""


class StorageFull(QasrError):
    """The server's disk is full (or over quota) while storing an upload or spooling a form: the
    request was fine, and may be retried once there is room."""
