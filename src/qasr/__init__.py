"""qasr: self-hosted Qwen3-ASR speech recognition with the DashScope and OpenAI APIs.

The library API, in three lines::

    from qasr import Runtime

    with Runtime.open("Qwen/Qwen3-ASR-0.6B-hf") as asr:
        print(asr.transcribe("meeting.m4a").text)

`Runtime` (qasr.runtime) also gives `atranscribe` for async code; the result is a `Transcript`
(qasr.types) with the text, the language, timed segments and usage.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from qasr.runtime import Runtime
    from qasr.types import Segment, TranscribeOptions, Transcript

__all__ = ["Runtime", "Segment", "TranscribeOptions", "Transcript", "__version__"]


def __getattr__(name: str) -> Any:
    # Lazy: `import qasr` (and so `qasr --help`) must not load torch and transformers.
    if name == "Runtime":
        from qasr.runtime import Runtime

        return Runtime
    if name in {"Segment", "TranscribeOptions", "Transcript"}:
        from qasr import types

        return getattr(types, name)
    raise AttributeError(f"module 'qasr' has no attribute {name!r}")
