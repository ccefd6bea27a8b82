"""The engine interface: a handful of methods every backend provides."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from qasr.types import Delta, EngineRequest, EngineResult


@dataclass
class Job:
    """One request inside a model batch, with optional live hooks.

    `on_delta` is called from the model thread with each new piece of text; `cancelled` is polled
    once per generated token, and a True answer ends that row (the rest of the batch goes on).
    """

    request: EngineRequest
    on_delta: Callable[[Delta], None] | None = None
    cancelled: Callable[[], bool] | None = None
    prepared: object | None = None
    """What the engine's `prepare` made of the request ahead of the batch, if it has one."""


class Engine(Protocol):
    """What the pipeline and the batcher need from a speech-recognition backend.

    A backend may also offer `prepare(request) -> object`: per-clip work that needs no model (features,
    prompt ids). The batcher then runs it in its preparation thread, in parallel with the model, and
    hands the result over in `Job.prepared`; without it, `run` does all the work on the model thread.
    """

    name: str
    """The model's name (its hub id or directory), listed by the APIs."""

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        """Transcribe a batch; blocking; call from a worker thread, never the event loop."""
        ...

    def transcribe(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        """`run` without hooks."""
        ...

    def stream(self, request: EngineRequest) -> Iterator[Delta | EngineResult]:
        """Deltas as the model writes them, then the final `EngineResult`."""
        ...

    def count_text_tokens(self, text: str) -> int:
        """Tokens of `text` in the model's tokenizer."""
        ...

    def count_audio_tokens(self, num_samples: int) -> int:
        """Audio placeholder tokens the model sees for a clip of `num_samples` 16 kHz samples."""
        ...
