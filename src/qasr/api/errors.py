"""The one table that turns domain errors into wire errors, for both API dialects.

DashScope: `{"request_id", "code", "message"}` (spec section 6). OpenAI: `{"error": {"message", "type",
"param", "code"}}`. Unknown exceptions are server bugs: 500 with a generic message, never the
exception text or a stack trace, and never a 4xx.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from starlette.requests import ClientDisconnect

from qasr import errors as e

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WireError:
    status: int
    dashscope_code: str
    openai_type: str
    openai_code: str


# Keyed by class; `classify` takes the entry of the nearest class in the exception's MRO, so a subclass
# with an entry of its own always gets it (no list order can let a parent shadow it), and a subclass
# without one deliberately shares its parent's (AudioDecodeError is an AudioError: invalid_audio).
_TABLE: dict[type[BaseException], WireError] = {
    # The client hung up while sending: nobody reads the answer, but it is not a server bug.
    ClientDisconnect: WireError(499, "ClientClosedRequest", "invalid_request_error", "client_disconnected"),
    e.ClientGone: WireError(499, "ClientClosedRequest", "invalid_request_error", "client_disconnected"),
    e.Unauthorized: WireError(401, "InvalidApiKey", "invalid_request_error", "invalid_api_key"),
    e.ModelNotFound: WireError(404, "ModelNotFound", "invalid_request_error", "model_not_found"),
    e.EndpointNotFound: WireError(404, "NotFound", "invalid_request_error", "not_found"),
    e.MethodNotAllowed: WireError(405, "MethodNotAllowed", "invalid_request_error", "method_not_allowed"),
    e.Overloaded: WireError(429, "Throttling.RateQuota", "rate_limit_error", "rate_limit_exceeded"),
    e.UploadQuotaExceeded: WireError(
        429, "Throttling.AllocationQuota", "insufficient_quota", "insufficient_quota"
    ),
    e.InvalidUploadPolicy: WireError(403, "AccessDenied", "invalid_request_error", "access_denied"),
    e.DownloadFailed: WireError(
        400, "BadRequest.InputDownloadFailed", "invalid_request_error", "download_failed"
    ),
    e.ForbiddenSource: WireError(400, "InvalidURL", "invalid_request_error", "forbidden_url"),
    e.UnsupportedSource: WireError(400, "InvalidURL", "invalid_request_error", "invalid_url"),
    e.UploadNotFound: WireError(400, "InvalidURL", "invalid_request_error", "invalid_url"),
    e.AudioTooLarge: WireError(400, "InvalidParameter", "invalid_request_error", "audio_too_large"),
    e.AudioTooLong: WireError(400, "InvalidParameter", "invalid_request_error", "audio_too_long"),
    e.AudioError: WireError(400, "InvalidParameter", "invalid_request_error", "invalid_audio"),
    e.UnknownLanguage: WireError(400, "InvalidParameter", "invalid_request_error", "unsupported_language"),
    e.ItnUnavailable: WireError(400, "InvalidParameter", "invalid_request_error", "itn_unavailable"),
    e.InvalidRequest: WireError(400, "InvalidParameter", "invalid_request_error", "invalid_parameter"),
    e.RequestTimeout: WireError(504, "RequestTimeOut", "server_error", "timeout"),
    e.EngineUnavailable: WireError(503, "ServiceUnavailable", "server_error", "service_unavailable"),
    e.Draining: WireError(503, "ServiceUnavailable", "server_error", "service_unavailable"),
    # 415 with DashScope's generic code for a request it refuses as sent: its clients branch on the
    # status, and the cloud has no code of its own for a body that is not JSON (issue 13).
    e.UnsupportedMediaType: WireError(
        415, "InvalidParameter", "invalid_request_error", "unsupported_media_type"
    ),
    e.StorageFull: WireError(507, "InsufficientStorage", "server_error", "insufficient_storage"),
}
RETRY_AFTER_S = 1
"""What a 429 tells the client to wait before retrying (seconds)."""
_INTERNAL = WireError(500, "InternalError", "server_error", "internal_error")
_INTERNAL_MESSAGE = "An internal error occurred; the server logged the details."


def classify(exc: BaseException) -> tuple[WireError, str]:
    """The wire error and the user-facing message for `exc`."""
    wire = next((_TABLE[cls] for cls in type(exc).__mro__ if cls in _TABLE), None)
    if wire is None:
        log.error("internal error", exc_info=exc)
        return _INTERNAL, _INTERNAL_MESSAGE
    if isinstance(exc, e.QasrError):
        return wire, exc.message
    return wire, "The client closed the connection before the request arrived."


def wire_headers(exc: BaseException) -> dict[str, str]:
    """Headers the status of `exc` calls for: `Allow` with a 405 (RFC 9110 section 15.5.6)."""
    if isinstance(exc, e.MethodNotAllowed) and exc.allowed:
        return {"Allow": ", ".join(exc.allowed)}
    if isinstance(exc, (e.Overloaded, e.Draining, e.EngineUnavailable)) and not isinstance(
        exc,
        e.UploadQuotaExceeded,  # room comes back only as uploads expire: no retry hint
    ):
        return {"Retry-After": str(RETRY_AFTER_S)}
    return {}


def dashscope_body(exc: BaseException, request_id: str) -> tuple[int, dict[str, str]]:
    wire, message = classify(exc)
    return wire.status, {"request_id": request_id, "code": wire.dashscope_code, "message": message}


def openai_body(exc: BaseException) -> tuple[int, dict[str, object]]:
    wire, message = classify(exc)
    param = getattr(exc, "param", None)
    return wire.status, {
        "error": {"message": message, "type": wire.openai_type, "param": param, "code": wire.openai_code}
    }
