"""What the scheduler and the pipeline need from a model backend: a `Job` per request in a batch, and
the speech-recognition engine's interface. The scheduler itself needs less (`ModelWork` in
`qasr.engine.scheduler`): every backend (the recognizer, the forced aligner) provides that much."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from qasr.types import Delta, EngineRequest, EngineResult

Req = TypeVar("Req")


@dataclass
class Job(Generic[Req]):
    """One request inside a model batch, with optional live hooks.

    `on_delta` is called from the model thread with each new piece of output; `cancelled` is polled
    once per generated token, and a True answer ends that row (the rest of the batch goes on).
    """

    request: Req
    on_delta: Callable[[Any], None] | None = None
    cancelled: Callable[[], bool] | None = None
    prepared: object | None = None
    """What the engine's `prepare` made of the request ahead of the batch."""
    between_tokens: Callable[[], None] | None = None
    """Called by the engine once per generated token of the batch (from the model thread): the
    scheduler runs live work that is waiting there, so a long batch delays it by one token at most."""


class Engine(Protocol):
    """A speech-recognition backend: what the scheduler calls, plus direct use without one."""

    name: str
    """The model's name (its hub id or directory), listed by the APIs."""

    def prepare(self, request: EngineRequest) -> object:
        """Per-clip work that needs no model (features, prompt ids), for `Job.prepared`."""
        ...

    def size(self, request: EngineRequest) -> int:
        """The clip's length in samples: similar lengths are batched together (less padding)."""
        ...

    def run(self, jobs: Sequence[Job[EngineRequest]]) -> list[EngineResult]:
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

    def describe(self) -> dict[str, str]:
        """How the model runs, for metrics and logs: `name` (a directory's last component, never a
        path), `device`, `dtype`, `layout`."""
        ...
