"""Cross-request batching between the async API and the model worker thread.

Requests from any number of coroutines wait in one bounded queue; a single worker thread takes the
oldest, fills the batch with the waiting requests closest to it in length (less padding), waits at
most `max_wait_ms` for company, and runs the engine. Deltas flow back to each request's event loop
as the model writes them. A full queue refuses at once (`Overloaded`, HTTP 429); a cancelled request
leaves its batch at the next token; if the worker dies, every waiting request fails at once and
`healthy` turns False.

Two things keep batches full without slowing a lone request:
- Preparation in parallel. Each request's model inputs (features, prompt ids: `engine.prepare`) are
  computed in the batcher's preparation thread as it arrives, while the model runs the batch before.
- Arrivals on their way. A caller that knows a request is coming (a transcription whose audio is
  being decoded) holds a `Reservation`; while reservations or preparations are open, a partial batch
  waits up to `max_hold_ms` for them instead of `max_wait_ms`. Without this, clients that send their
  next request together are split by their decoding times: the first one starts a batch of one and
  the others wait a whole batch (seconds on CPU) for the next. With nothing on its way, a lone
  request waits only `max_wait_ms`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from qasr.engine.base import Engine, Job
from qasr.errors import EngineUnavailable, Overloaded
from qasr.types import Delta, EngineRequest, EngineResult

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BatchPolicy:
    """How requests are grouped."""

    max_batch_size: int = 8
    """Most clips in one model batch."""
    max_wait_ms: float = 10.0
    """How long a partial batch waits for more requests before it runs."""
    max_queue: int = 64
    """Waiting requests beyond this are refused with `Overloaded`."""
    max_hold_ms: float = 200.0
    """How long a partial batch may wait for requests known to be on their way (`Reservation`)."""


@dataclass(eq=False)
class _Pending:
    request: EngineRequest
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[EngineResult]
    on_delta: Callable[[Delta], None] | None
    prepared: object | None = None
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False

    @property
    def length(self) -> int:
        return len(self.request.samples)


class Batcher:
    """Owns the model worker thread. Use `start()`, then `submit()` from any event loop, then `close()`."""

    def __init__(self, engine: Engine, policy: BatchPolicy | None = None) -> None:
        self.engine = engine
        self.policy = policy or BatchPolicy()
        self._waiting: list[_Pending] = []
        self._running: list[_Pending] = []  # the batch on the model now, failed too if the worker dies
        self._cond = threading.Condition()
        self._closing = False
        self._stopped = False  # the worker has ended; nothing may be queued any more
        self._thread: threading.Thread | None = None
        self.error: BaseException | None = None
        """Why the worker died, if it did."""
        self.batches_run = 0
        self.batch_sizes: list[int] = []
        self._arriving = 0  # open reservations
        self._preparing = 0  # submitted requests whose inputs are being prepared
        self._prepare: Callable[[EngineRequest], object] | None = getattr(engine, "prepare", None)
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qasr-prepare")

    # --- lifecycle -----------------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._work, name="qasr-model-worker", daemon=True)
        self._thread.start()

    def close(self) -> None:
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self._prep_pool.shutdown(wait=False, cancel_futures=True)

    @property
    def healthy(self) -> bool:
        return self._thread is not None and self._thread.is_alive() and self.error is None

    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._waiting)

    @property
    def arriving(self) -> int:
        """Requests announced (`reserve`) or being prepared, not yet in the queue."""
        with self._cond:
            return self._arriving + self._preparing

    # --- the async side ---------------------------------------------------------------------------------

    def reserve(self) -> Reservation:
        """Announce a request that will be submitted soon; pass it to `submit` (which releases it
        once the request is queued), or `release` it."""
        with self._cond:
            self._arriving += 1
        return Reservation(self)

    def _arrived(self) -> None:
        with self._cond:
            self._arriving -= 1
            self._cond.notify_all()

    async def submit(
        self,
        request: EngineRequest,
        on_delta: Callable[[Delta], None] | None = None,
        reservation: Reservation | None = None,
    ) -> EngineResult:
        """Queue one clip and wait for its result; `on_delta` runs on the caller's loop per new text.

        Cancelling the awaiting task takes the request out of its batch.
        """
        try:
            if not self.healthy:
                raise EngineUnavailable(self._dead_message())
            with self._cond:
                # Requests being prepared count against the queue too: they are on their way into it.
                if len(self._waiting) + self._preparing >= self.policy.max_queue:
                    raise Overloaded(
                        f"The server is busy ({len(self._waiting)} requests waiting for the model); retry shortly."
                    )
                self._preparing += 1
            queued = False
            try:
                loop = asyncio.get_running_loop()
                prepared = None
                if self._prepare is not None:
                    prepared = await loop.run_in_executor(self._prep_pool, self._prepare, request)
                item = _Pending(request, loop, loop.create_future(), on_delta, prepared)
                with self._cond:
                    if self._stopped:  # the worker ended while this request was being prepared
                        raise EngineUnavailable(self._dead_message())
                    self._waiting.append(item)
                    self._preparing -= 1
                    queued = True
                    self._cond.notify_all()
            finally:
                if not queued:
                    with self._cond:
                        self._preparing -= 1
                        self._cond.notify_all()
        finally:
            if reservation is not None:
                reservation.release()  # after the request is queued: the worker never sees a gap
        try:
            return await item.future
        except asyncio.CancelledError:
            item.cancelled = True
            with self._cond:
                if item in self._waiting:
                    self._waiting.remove(item)
            raise

    # --- the worker thread --------------------------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                batch = self._next_batch()
                if batch is None:
                    return
                self._run(batch)
        except BaseException as exc:  # the worker must never die silently: fail everyone, report it
            self.error = exc
            log.exception("model worker died")
        finally:
            self._fail_all(EngineUnavailable(self._dead_message()))

    def _next_batch(self) -> list[_Pending] | None:
        with self._cond:
            while not self._waiting and not self._closing:
                self._cond.wait()
            if self._closing:
                return None
            # Give concurrent requests a moment to arrive, unless the batch is already full; longer
            # if some are known to be on their way (reserved or being prepared).
            first = self._waiting[0].enqueued
            wait_until = first + self.policy.max_wait_ms / 1000
            hold_until = first + max(self.policy.max_hold_ms, self.policy.max_wait_ms) / 1000
            while len(self._waiting) < self.policy.max_batch_size and not self._closing:
                coming = self._arriving + self._preparing > 0
                remaining = (hold_until if coming else wait_until) - time.monotonic()
                if remaining <= 0:
                    break
                self._cond.wait(remaining)
            if self._closing:
                return None
            batch = self._pick(self._waiting)
            for item in batch:
                self._waiting.remove(item)
            self._running = batch
            return batch

    def _pick(self, waiting: list[_Pending]) -> list[_Pending]:
        """The oldest request (fairness) plus the waiting ones closest to it in length (less padding)."""
        oldest = waiting[0]
        others = sorted(waiting[1:], key=lambda p: abs(p.length - oldest.length))
        return [oldest, *others[: self.policy.max_batch_size - 1]]

    def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.cancelled]
        if not live:
            return
        jobs = [
            Job(
                p.request,
                on_delta=self._delta_sender(p) if p.on_delta is not None else None,
                cancelled=lambda p=p: p.cancelled,  # type: ignore[misc]
                prepared=p.prepared,
            )
            for p in live
        ]
        self.batches_run += 1
        self.batch_sizes.append(len(jobs))
        try:
            results = self.engine.run(jobs)
        except Exception as exc:  # one bad batch fails its requests; the worker goes on
            log.exception("batch of %d failed", len(jobs))
            for p in live:
                self._settle(p, exc=exc)
            with self._cond:
                self._running = []
            return
        for p, result in zip(live, results, strict=True):
            self._settle(p, result=result)
        with self._cond:
            self._running = []

    @staticmethod
    def _delta_sender(item: _Pending) -> Callable[[Delta], None]:
        callback = item.on_delta
        assert callback is not None

        def send(delta: Delta) -> None:
            if not item.cancelled:
                item.loop.call_soon_threadsafe(callback, delta)

        return send

    @staticmethod
    def _settle(item: _Pending, result: EngineResult | None = None, exc: BaseException | None = None) -> None:
        def apply() -> None:
            if item.future.done():
                return
            if exc is not None:
                item.future.set_exception(exc)
            else:
                item.future.set_result(result)  # type: ignore[arg-type]

        # A RuntimeError means the caller's loop is closed: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            item.loop.call_soon_threadsafe(apply)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            self._stopped = True  # a request still being prepared must not join a dead queue
            waiting, self._waiting = self._running + self._waiting, []
            self._running = []
        for item in waiting:
            self._settle(item, exc=exc)

    def _dead_message(self) -> str:
        if self.error is not None:
            return "The model worker stopped after an internal error; the server must be restarted."
        return "The model worker is not running."


class Reservation:
    """A request on its way to `Batcher.submit`: while it is open, a partial batch may wait for it
    (up to `max_hold_ms`). Released once, by the submit it is passed to or by its holder; releasing
    again (a later submit, the end of a `with` block) does nothing."""

    def __init__(self, batcher: Batcher) -> None:
        self._batcher = batcher
        self._open = True
        self._lock = threading.Lock()

    def release(self) -> None:
        with self._lock:
            if not self._open:
                return
            self._open = False
        self._batcher._arrived()

    def __enter__(self) -> Reservation:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
