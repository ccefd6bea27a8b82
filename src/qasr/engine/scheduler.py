"""The model scheduler: cross-request batching between the async API and one model's worker thread.

One `Scheduler` per model (the recognizer, the forced aligner, ...), generic over that model's kind of
work. Requests from any number of coroutines wait in per-priority queues; a single worker thread
builds each batch and runs the engine, and deltas flow back to each request's event loop as the model
writes them.

Priorities (`Priority`): final results of live utterances first, then live-session partial steps
(small and latency-bound; a person is waiting for both), then interactive API
requests, then background jobs. A batch is drawn from the most urgent class that has work, so a
background submission delays an interactive one by at most the prefill of the batch already running. Starvation is
bounded: a request that has waited longer than `max_starvation_s` is served next whatever its class.

More urgent work does not even wait for the batch already running: while a batch decodes, the
engine calls back between tokens (`Job.between_tokens`) and waiting work of a more urgent class runs
right there, as a nested batch, before the long batch goes on. So live steps do not wait for a sync
request's batch (issue 16), and sync requests do not wait for a file job's segments (issue 15). Only
the running batch's prefill cannot be interrupted, so while live sessions are active, batches of the
other classes are kept small (`max_batch_with_live`); file jobs keep theirs small themselves.

Admission comes first and is cheap (`admit`): a caller asks for a place before it fetches or decodes
any audio, and an overloaded scheduler refuses at once (`Overloaded`, HTTP 429) instead of after the
download. Each class has its own bound, so background work never pushes interactive callers into 429.
An open admission also tells the worker that a request is on its way: a partial batch then waits up
to `max_hold_ms` for it instead of `max_wait_ms`, so clients that send together are batched together
while a lone request never waits.

A request whose caller has gone (cancelled) or whose deadline has passed never reaches the model; a
cancelled request leaves a running batch at the next token; if the worker dies, every waiting request
fails at once and `healthy` turns False.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from qasr.engine.base import Job
from qasr.errors import EngineUnavailable, Overloaded, QueueTimeout
from qasr.metrics import Metrics

log = logging.getLogger(__name__)

Req = TypeVar("Req")
Res = TypeVar("Res")
Req_contra = TypeVar("Req_contra", contravariant=True)
Res_co = TypeVar("Res_co", covariant=True)


class Priority(enum.IntEnum):
    """Scheduling classes, most urgent first."""

    LIVE_FINAL = -1
    """The final decode of a live utterance: the result a person waits for after they stop speaking,
    so it goes before the partial steps of every session (issue 16)."""
    LIVE = 0
    """Partial steps of live (WebSocket) sessions: small, and a person is waiting for each."""
    INTERACTIVE = 1
    """Synchronous API requests and the CLI."""
    BACKGROUND = 2
    """Asynchronous file jobs: throughput matters, latency does not."""


class ModelWork(Protocol[Req_contra, Res_co]):
    """All the scheduler calls on an engine."""

    name: str
    """The model's name, for logs and metrics."""

    def prepare(self, request: Req_contra) -> object:
        """Per-request work that needs no model (features, prompt ids); runs in the preparation thread,
        in parallel with the model. Its result reaches `run` in `Job.prepared`."""
        ...

    def size(self, request: Req_contra) -> int:
        """How long the request is (e.g. samples); requests of similar size are batched together."""
        ...

    def run(self, jobs: Sequence[Job[Any]]) -> Sequence[Res_co]:
        """Run one batch on the model; blocking, called from the worker thread only."""
        ...


@dataclass(frozen=True)
class SchedulerPolicy:
    """How requests are admitted and grouped."""

    max_batch_size: int = 8
    """Most requests in one model batch."""
    max_wait_ms: float = 10.0
    """How long a partial batch waits for more requests before it runs."""
    max_hold_ms: float = 200.0
    """How long a partial batch may wait for requests admitted and on their way (being fetched,
    decoded or prepared)."""
    max_queue: int = 64
    """Live and interactive requests admitted or waiting beyond this are refused (`Overloaded`)."""
    max_background_queue: int = 64
    """The same bound for background requests, counted separately."""
    max_starvation_s: float = 30.0
    """A request waiting longer than this is served next, whatever its class."""
    max_batch_with_live: int = 2
    """Most requests in a batch of the interactive or background class while live sessions are
    active (live work queued in the last `live_active_s`): such a batch's prefill (encoder and
    prompt) cannot be interrupted for live work, so it is kept short."""
    live_active_s: float = 10.0
    """How long after the last live request live sessions count as active."""


@dataclass(eq=False)
class _Pending:
    request: object
    size: int
    priority: Priority
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[object]
    on_delta: Callable[[object], None] | None
    deadline: float | None
    prepared: object | None = None
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False


class Scheduler(Generic[Req, Res]):
    """Owns one model's worker thread. `start()`, then `admit()`/`submit()` from any event loop, then
    `close()`."""

    def __init__(
        self,
        engine: ModelWork[Req, Res],
        policy: SchedulerPolicy | None = None,
        metrics: Metrics | None = None,
        label: str = "asr",
    ) -> None:
        """`label` names the model's role in metrics and logs (`asr`, `aligner`): never a path."""
        self.engine = engine
        self.policy = policy or SchedulerPolicy()
        self.metrics = metrics or Metrics()
        self._label = label
        self._waiting: dict[Priority, list[_Pending]] = {p: [] for p in Priority}
        self._running: list[_Pending] = []  # the batch on the model now, failed too if the worker dies
        self._arriving: Counter[Priority] = Counter()  # admissions whose first request is not queued yet
        self._preparing = 0
        self._cond = threading.Condition()
        self._closing = False
        self._stopped = False  # the worker has ended; nothing may be queued any more
        self._thread: threading.Thread | None = None
        self._prep_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="qasr-prepare")
        self.error: BaseException | None = None
        """Why the worker died, if it did."""
        self.batches_run = 0
        self.batch_sizes: Counter[int] = Counter()
        """How many batches ran at each size (bounded: at most `max_batch_size` keys)."""
        self.batches_between_tokens = 0
        """Live batches run between the tokens of a batch of another class."""
        self._live_seen = -float("inf")  # time.monotonic() of the last live request queued

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
        """Requests waiting for the model, all classes."""
        with self._cond:
            return sum(len(q) for q in self._waiting.values())

    def depth(self, priority: Priority) -> int:
        """Requests of one class waiting for the model."""
        with self._cond:
            return len(self._waiting[priority])

    @property
    def arriving(self) -> int:
        """Requests admitted or being prepared, not yet in the queue."""
        with self._cond:
            return sum(self._arriving.values()) + self._preparing

    # --- admission -------------------------------------------------------------------------------------

    def admit(self, priority: Priority = Priority.INTERACTIVE) -> Admission:
        """A place for a request that will be submitted soon, or `Overloaded` at once.

        Call it before fetching or decoding anything, and release it when the request is done (a
        `with` block). Requests submitted with the admission are not refused again: a long file's
        later segments ride on its place. Until its first request is queued it counts as on its way."""
        with self._cond:
            if not self.healthy and self._thread is not None:
                raise EngineUnavailable(self._dead_message())
            if self._load(priority) >= self._bound(priority):
                self.metrics.rejected.labels(self._label, priority.name.lower()).inc()
                raise Overloaded(
                    f"The server is busy ({self._load(priority)} requests waiting for the model); retry shortly."
                )
            self._arriving[priority] += 1
        return Admission(self, priority)

    def _load(self, priority: Priority) -> int:
        """What counts against `priority`'s bound: requests waiting for the model and admissions on
        their way (not queued yet); its class alone for background, live and interactive together
        otherwise. A request whose work is on the model counts no more. Call with the lock held."""
        if priority is Priority.BACKGROUND:
            classes = [Priority.BACKGROUND]
        else:
            classes = [Priority.LIVE_FINAL, Priority.LIVE, Priority.INTERACTIVE]
        return sum(len(self._waiting[c]) + self._arriving[c] for c in classes)

    def _bound(self, priority: Priority) -> int:
        if priority is Priority.BACKGROUND:
            return self.policy.max_background_queue
        return self.policy.max_queue

    def _arrived(self, priority: Priority) -> None:
        with self._cond:
            self._arriving[priority] -= 1
            self._cond.notify_all()

    # --- submitting ------------------------------------------------------------------------------------

    async def submit(
        self,
        request: Req,
        on_delta: Callable[[object], None] | None = None,
        *,
        priority: Priority = Priority.INTERACTIVE,
        admission: Admission | None = None,
        deadline: float | None = None,
    ) -> Res:
        """Queue one request and wait for its result; `on_delta` runs on the caller's loop per new text.

        Without an `admission` the request is admitted here (and may be refused), and the place is
        given back once it is queued. With one, it runs at the admission's priority and is never
        refused for load; the holder releases the admission. `deadline`
        (time.monotonic) fails the request with `QueueTimeout` if the model has not started it by then.
        Cancelling the awaiting task takes the request out of the queue or its batch.
        """
        own = admission is None
        ticket = self.admit(priority) if admission is None else admission
        item: _Pending | None = None
        try:
            loop = asyncio.get_running_loop()
            with self._cond:
                self._preparing += 1
            try:
                prepared = await loop.run_in_executor(self._prep_pool, self.engine.prepare, request)
                item = _Pending(
                    request,
                    self.engine.size(request),
                    ticket.priority,
                    loop,
                    loop.create_future(),
                    on_delta,
                    deadline,
                    prepared,
                )
                with self._cond:
                    if self._stopped:  # the worker ended while this request was being prepared
                        raise EngineUnavailable(self._dead_message())
                    self._waiting[ticket.priority].append(item)
                    if ticket.priority <= Priority.LIVE:
                        self._live_seen = time.monotonic()
                    self._depth_changed(ticket.priority)
                    self._cond.notify_all()
            finally:
                with self._cond:
                    self._preparing -= 1
                    self._cond.notify_all()
        finally:
            ticket.arrived()  # after the request is queued: the worker never sees a gap
            if own:
                ticket.release()
        try:
            if deadline is not None:
                return await self._until_started(item, deadline)  # type: ignore[return-value]
            return await item.future  # type: ignore[return-value]
        except asyncio.CancelledError:
            item.cancelled = True
            with self._cond:
                queue = self._waiting[item.priority]
                if item in queue:
                    queue.remove(item)
                    self._depth_changed(item.priority)
            raise

    async def _until_started(self, item: _Pending, deadline: float) -> object:
        """The result, or `QueueTimeout` as soon as `deadline` passes with the request still queued
        (the worker may be busy with a long batch, so it does not wait for the worker to notice)."""
        try:
            return await asyncio.wait_for(asyncio.shield(item.future), max(0.0, deadline - time.monotonic()))
        except TimeoutError:
            with self._cond:
                queue = self._waiting[item.priority]
                queued = item in queue
                if queued:
                    queue.remove(item)
                    self._depth_changed(item.priority)
            if not queued:  # it started just in time: wait for it like any other
                return await item.future
            self.metrics.rejected.labels(self._label, item.priority.name.lower()).inc()
            raise QueueTimeout(_QUEUE_TIMEOUT_MESSAGE) from None

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
            while True:
                head = self._wait_for_head()
                if head is None:
                    return None
                # Give concurrent requests a moment to arrive, unless the batch is already full;
                # longer if some are known to be on their way (admitted, or being prepared).
                wait_until = head.enqueued + self.policy.max_wait_ms / 1000
                hold_until = head.enqueued + max(self.policy.max_hold_ms, self.policy.max_wait_ms) / 1000
                while len(self._candidates(head)) < self.policy.max_batch_size and not self._closing:
                    coming = sum(self._arriving.values()) + self._preparing > 0
                    remaining = (hold_until if coming else wait_until) - time.monotonic()
                    if remaining <= 0:
                        break
                    self._cond.wait(remaining)
                if self._closing:
                    return None
                # Callers may have left during the wait (a live final cancels its utterance's queued
                # partial): build the batch around whoever is still waiting; if nobody is, start over.
                self._drop_dead()
                head = self._head()
                if head is not None:
                    break
            batch = self._pick(head)
            for item in batch:
                self._waiting[item.priority].remove(item)
            for priority in {item.priority for item in batch}:
                self._depth_changed(priority)
            self._running = batch
            return batch

    def _wait_for_head(self) -> _Pending | None:
        """Block (holding the condition) until a request waits; None when the scheduler closes."""
        while not self._closing:
            self._drop_dead()
            head = self._head()
            if head is not None:
                return head
            self._cond.wait(self._next_deadline_in())
        return None

    def _head(self) -> _Pending | None:
        """The request the next batch is built around: a starved one (oldest first), else the oldest
        of the most urgent class that has work."""
        heads = [q[0] for q in self._waiting.values() if q]
        if not heads:
            return None
        now = time.monotonic()
        starved = [h for h in heads if now - h.enqueued > self.policy.max_starvation_s]
        if starved:
            return min(starved, key=lambda h: h.enqueued)
        return min(heads, key=lambda h: h.priority)

    def _candidates(self, head: _Pending) -> list[_Pending]:
        """Requests that may share `head`'s batch: its class and the more urgent ones."""
        return [p for prio in Priority if prio <= head.priority for p in self._waiting[prio]]

    def _pick(self, head: _Pending) -> list[_Pending]:
        """`head`, then the most urgent candidates, closest to it in size (less padding)."""
        others = [p for p in self._candidates(head) if p is not head]
        others.sort(key=lambda p: (p.priority, abs(p.size - head.size)))
        size = self.policy.max_batch_size
        if head.priority > Priority.LIVE and time.monotonic() - self._live_seen < self.policy.live_active_s:
            size = min(size, max(1, self.policy.max_batch_with_live))
        return [head, *others[: size - 1]]

    def _drop_dead(self) -> None:
        """Take out requests whose caller left or whose deadline passed: they never reach the model."""
        now = time.monotonic()
        for queue in self._waiting.values():
            for item in [p for p in queue if p.cancelled or (p.deadline is not None and now >= p.deadline)]:
                queue.remove(item)
                self._depth_changed(item.priority)
                if not item.cancelled:
                    self.metrics.rejected.labels(self._label, item.priority.name.lower()).inc()
                    self._settle(item, exc=QueueTimeout(_QUEUE_TIMEOUT_MESSAGE))

    def _depth_changed(self, priority: Priority) -> None:
        """Call with the lock held, after `priority`'s queue changed."""
        self.metrics.queue_depth.labels(self._label, priority.name.lower()).set(len(self._waiting[priority]))

    def _next_deadline_in(self) -> float | None:
        deadlines = [p.deadline for q in self._waiting.values() for p in q if p.deadline is not None]
        return max(0.0, min(deadlines) - time.monotonic()) if deadlines else None

    def _run(self, batch: list[_Pending]) -> None:
        live = [p for p in batch if not p.cancelled]
        if not live:
            return
        started = time.monotonic()
        for p in live:
            self.metrics.queue_wait_seconds.labels(self._label, p.priority.name.lower()).observe(
                started - p.enqueued
            )
        # Between its tokens, a batch lets more urgent work that is waiting run first (live steps
        # inside a sync request's batch, sync requests inside a file job's); live finals are never
        # interrupted.
        urgency = min(p.priority for p in live)
        serve = functools.partial(self._serve_urgent, urgency) if urgency > Priority.LIVE_FINAL else None
        jobs = [
            Job(
                p.request,
                on_delta=self._delta_sender(p) if p.on_delta is not None else None,
                cancelled=lambda p=p: p.cancelled,  # type: ignore[misc]
                prepared=p.prepared,
                between_tokens=serve,
            )
            for p in live
        ]
        self.batches_run += 1
        self.batch_sizes[len(jobs)] += 1
        self.metrics.batch_size.labels(self._label).observe(len(jobs))
        try:
            results = self.engine.run(jobs)
        except Exception as exc:  # one bad batch fails its requests; the worker goes on
            log.exception("batch of %d failed", len(jobs))
            for p in live:
                self._settle(p, exc=exc)
        else:
            for p, result in zip(live, results, strict=True):
                self._settle(p, result=result)
        # Not in a `finally`: when the worker dies (a BaseException), `_fail_all` fails this batch too.
        self.metrics.batch_seconds.labels(self._label).observe(time.monotonic() - started)
        with self._cond:
            self._running = [p for p in self._running if p not in batch]

    def _serve_urgent(self, running: Priority) -> None:
        """Between two tokens of a batch whose most urgent class is `running` (in the worker thread):
        run the work of more urgent classes that is waiting, most urgent first, without waiting for
        more to arrive. Such a nested batch may itself be interrupted by still more urgent work, so
        the nesting is at most as deep as there are classes."""
        while True:
            with self._cond:
                if self._closing:
                    return
                self._drop_dead()
                heads = [self._waiting[p][0] for p in Priority if p < running and self._waiting[p]]
                if not heads:
                    return
                batch = self._pick(heads[0])
                for item in batch:
                    self._waiting[item.priority].remove(item)
                for priority in {item.priority for item in batch}:
                    self._depth_changed(priority)
                self._running = [*self._running, *batch]
                self.batches_between_tokens += 1
            self._run(batch)

    @staticmethod
    def _delta_sender(item: _Pending) -> Callable[[object], None]:
        callback = item.on_delta
        assert callback is not None

        def send(delta: object) -> None:
            if not item.cancelled:
                with contextlib.suppress(RuntimeError):  # the caller's loop is closed
                    item.loop.call_soon_threadsafe(callback, delta)

        return send

    @staticmethod
    def _settle(item: _Pending, result: object = None, exc: BaseException | None = None) -> None:
        def apply() -> None:
            if item.future.done():
                return
            if exc is not None:
                item.future.set_exception(exc)
            else:
                item.future.set_result(result)

        # A RuntimeError means the caller's loop is closed: nobody is waiting any more.
        with contextlib.suppress(RuntimeError):
            item.loop.call_soon_threadsafe(apply)

    def _fail_all(self, exc: BaseException) -> None:
        with self._cond:
            self._stopped = True  # a request still being prepared must not join a dead queue
            waiting = self._running + [p for q in self._waiting.values() for p in q]
            for queue in self._waiting.values():
                queue.clear()
            self._running = []
        for item in waiting:
            self._settle(item, exc=exc)

    def _dead_message(self) -> str:
        if self.error is not None:
            return "The model worker stopped after an internal error; the server must be restarted."
        return "The model worker is not running."


_QUEUE_TIMEOUT_MESSAGE = "The server is busy: the request waited too long for the model; retry shortly."


class Admission:
    """A request let in by `Scheduler.admit`, on its way to `submit`.

    Until its first request is queued (`arrived`) or it is released, it counts against its class's
    bound and a partial batch may wait for it (up to `max_hold_ms`). Later requests submitted with it
    are never refused for load. Releasing twice does nothing."""

    def __init__(
        self, scheduler: Scheduler[object, object] | Scheduler[Req, Res], priority: Priority
    ) -> None:
        self._scheduler = scheduler
        self.priority = priority
        self.created = time.monotonic()
        """When the request was let in (time.monotonic): its queue time is counted from here."""
        self._arriving = True
        self._lock = threading.Lock()

    def arrived(self) -> None:
        """Its (first) request is queued: partial batches need not wait for it any more."""
        with self._lock:
            if not self._arriving:
                return
            self._arriving = False
        self._scheduler._arrived(self.priority)

    def release(self) -> None:
        """The holder is done: stop counting it as on its way (if its request never came)."""
        self.arrived()

    def __enter__(self) -> Admission:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
