"""Log set-up for `qasr serve` and `qasr transcribe`: one format for qasr and uvicorn alike, as text or
as one JSON object per line (`--log-format json`) for log shippers.

What is logged: one access line per request (`qasr.access`: request id, API, method, path, status,
audio seconds, duration), errors with their request id, start-up facts. Never API keys, audio or
query strings; transcripts only at debug level (`-vv`).
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

# Attributes every LogRecord has; anything else on a record came in through `extra=` and is a field.
_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", (), None))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time (UTC, ISO 8601), level, logger, message, plus the record's
    `extra` fields (the access log's request_id, api, status, audio_s, duration_ms, ...)."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update({k: v for k, v in vars(record).items() if k not in _STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


def configure(level: int, fmt: str = "text") -> None:
    """Set up the root logger (uvicorn's loggers propagate to it: qasr serves with log_config=None)."""
    handler = logging.StreamHandler()
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
