"""One live recognition session: client events in, server events out (docs/spec/realtime.md Part 1).

Three tasks per session, so that nothing a client does can stall the server:

- the reader (`run`) takes one client event at a time and turns audio into utterances (server VAD
  or manual commits, a length cap), CPU work off the event loop when it is more than a trifle;
- the driver asks the live recognizer for a partial result about every second of new audio of the
  open utterance (never more than one step outstanding) and emits each utterance's final result in
  order; an utterance's final is started the moment it closes (finals go before partial steps);
- the writer sends events from a bounded queue; a client that stops reading fills it and is closed.

A session ends on `session.finish` (last results, `session.finished`, close 1000), on a limit or a
server drain (last results, an `error` event saying why, close 1000), or when the client goes away
(everything freed at once).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from qasr.api.realtime.audio import Audio, Cut, Cutter, PcmDecoder, SpeechStarted, SpeechStopped, TurnDetector
from qasr.api.realtime.protocol import (
    UNSUPPORTED_EVENTS,
    EventError,
    SessionConfig,
    apply_update,
    end_error,
    error_event,
    event,
    item_created,
    ms,
    new_id,
    parse_event,
    transcription_completed,
    transcription_failed,
    transcription_text,
)
from qasr.audio.vad import VoiceActivityDetector
from qasr.errors import InvalidRequest, Overloaded, QasrError
from qasr.live import LiveRecognizer, Utterance
from qasr.text import itn
from qasr.types import SAMPLE_RATE

log = logging.getLogger(__name__)
_ON_LOOP_SAMPLES = 8192
"""Audio up to this many samples per append is handled on the event loop (well under a millisecond)."""


class Socket(Protocol):
    """What a session needs of its WebSocket (Starlette's `WebSocket` has it)."""

    async def receive(self) -> Any: ...
    async def send_text(self, data: str) -> None: ...
    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


@dataclass(frozen=True)
class SessionLimits:
    """What one session may take (settings: `# --- live sessions ---`)."""

    max_session_s: float = 3600.0
    idle_timeout_s: float = 60.0
    max_append_bytes: int = 15 * 1024 * 1024
    partial_every_s: float = 1.0
    """New audio of the open utterance between two partial steps."""
    max_pending_finals: int = 4
    """Closed utterances waiting for their final result; at this many, audio is read no further."""
    max_outbox: int = 256
    """Events waiting to be sent; a client that lets more pile up is not reading and is closed."""
    finish_timeout_s: float = 120.0
    """How long the last results may take at the end of a session."""
    tick_s: float = 0.25
    """How often limits and the drain are looked at."""


class _Abort(Exception):
    """The session cannot go on (the client left or stopped reading, or a bug): free everything."""


@dataclass
class _Turn:
    """One utterance of the session: an item on the wire, an `Utterance` in the recognizer."""

    item_id: str
    utterance: Utterance
    fed_since_step: int = 0
    shown: tuple[str, str] | None = None
    final: asyncio.Future[Any] | None = None


@dataclass
class SessionStats:
    """For the session's log line."""

    audio_samples: int = 0
    utterances: int = 0
    events_in: int = 0
    ended: str = "disconnect"


class Session:
    """One WebSocket session. `run()` drives it to the end and returns the close code it used."""

    def __init__(
        self,
        socket: Socket,
        recognizer: LiveRecognizer,
        vad: VoiceActivityDetector,
        limits: SessionLimits,
        model: str,
        draining: Callable[[], bool],
        check_context: Callable[[str], Awaitable[None]],
    ) -> None:
        self.id = new_id("sess")
        self.socket = socket
        self.recognizer = recognizer
        self.vad = vad
        self.limits = limits
        self.model = model
        self.draining = draining
        self.check_context = check_context
        self.config = SessionConfig()
        self.stats = SessionStats()
        self._pcm = PcmDecoder(self.config.sample_rate)
        self._tracker: TurnDetector | None = None
        self._cutter = Cutter(
            int(recognizer.max_utterance_s * SAMPLE_RATE),
            int(min(4.0, recognizer.max_utterance_s / 4) * SAMPLE_RATE),
        )
        self._received = 0  # 16 kHz samples received in this session: the session clock
        self._open: _Turn | None = None
        self._finals: collections.deque[_Turn] = collections.deque()
        self._previous_item: str | None = None
        self._outbox: asyncio.Queue[str | None] = asyncio.Queue()
        self._overflowed = False
        self._wake = asyncio.Event()
        self._settled = asyncio.Event()
        self._settled.set()
        self._writer: asyncio.Task[None] | None = None
        self._driver: asyncio.Task[None] | None = None
        self._receiving: asyncio.Future[Any] | None = None

    # --- the session's life ----------------------------------------------------------------------------

    async def run(self) -> int:
        self._writer = asyncio.ensure_future(self._write())
        self._driver = asyncio.ensure_future(self._drive())
        self._new_tracker()
        self._emit(event("session.created", session=self._wire()))
        code = 1000
        try:
            reason = await self._read()
            self.stats.ended = reason
            if reason == "disconnect":
                return 1006
            await self._end(reason)
        except _Abort as exc:
            self.stats.ended = str(exc) or "aborted"
            code = 1008 if self._overflowed else 1011
            with contextlib.suppress(Exception):
                await self.socket.close(code)
        finally:
            self._free()
        return code

    async def _read(self) -> str:
        """Client events until the session should end; returns why it ends."""
        started = heard = time.monotonic()
        while True:
            message = await self._next_message(self.limits.tick_s)
            now = time.monotonic()
            if message is not None:
                heard = now
                if message.get("type") == "websocket.disconnect":
                    return "disconnect"
                if await self._handle(message):
                    return "finish"
            if self.draining():
                return "draining"
            if now - started >= self.limits.max_session_s:
                return "expired"
            if now - heard >= self.limits.idle_timeout_s:
                return "idle"

    async def _next_message(self, timeout: float) -> Any:
        if self._receiving is None:
            self._receiving = asyncio.ensure_future(self.socket.receive())
        done = await self._watch(self._receiving, timeout)
        if not done:
            return None
        receiving, self._receiving = self._receiving, None
        try:
            return receiving.result()
        except Exception:  # the connection broke under the receive
            return {"type": "websocket.disconnect"}

    async def _watch(self, work: asyncio.Future[Any], timeout: float | None) -> bool:
        """Wait for `work` (up to `timeout`) while watching the writer and the driver; `_Abort` if
        either has stopped. True when `work` is done."""
        assert self._writer is not None and self._driver is not None
        done, _ = await asyncio.wait(
            {work, self._writer, self._driver}, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
        )
        if self._writer in done:
            raise _Abort("client not reading" if self._overflowed else "send failed")
        if self._driver in done:
            if not self._driver.cancelled() and self._driver.exception() is not None:
                log.error("live session %s failed", self.id, exc_info=self._driver.exception())
            raise _Abort("internal error")
        return work in done

    async def _end(self, reason: str) -> None:
        """The last results, then `session.finished` (or an `error` saying why), then close 1000."""
        self._apply(self._tracker.flush() if self._tracker is not None else [])
        if self._open is not None:
            self._close_turn(announce_stop=self._tracker is not None)
        settled = asyncio.ensure_future(self._settled.wait())
        try:
            if not await self._watch_or_disconnect(settled, self.limits.finish_timeout_s):
                log.warning("live session %s: last results not ready in time", self.id)
        finally:
            settled.cancel()
        if reason == "finish":
            self._emit(event("session.finished"))
        else:
            self._emit(error_event(end_error(reason, self.limits.max_session_s, self.limits.idle_timeout_s)))
        self._outbox.put_nowait(None)  # the writer stops after the last event
        assert self._writer is not None
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.shield(self._writer), 10.0)
        with contextlib.suppress(Exception):
            await self.socket.close(1000)

    async def _watch_or_disconnect(self, work: asyncio.Future[Any], timeout: float) -> bool:
        """`_watch` that also ends (`_Abort`) when the client disconnects meanwhile."""
        deadline = time.monotonic() + timeout
        while not work.done():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            message = await self._next_message(min(remaining, self.limits.tick_s))
            if message is not None and message.get("type") == "websocket.disconnect":
                raise _Abort("disconnect")
        return True

    def _free(self) -> None:
        for task in (self._driver, self._writer, self._receiving):
            if task is not None and not task.done():
                task.cancel()
        for turn in [*self._finals, *([self._open] if self._open else [])]:
            if turn.final is not None and not turn.final.done():
                turn.final.cancel()
            turn.utterance.close()
        self._finals.clear()
        self._open = None

    # --- client events ---------------------------------------------------------------------------------

    async def _handle(self, message: Any) -> bool:
        """One client frame; True on `session.finish`. Bad input gets an `error` event, nothing more."""
        self.stats.events_in += 1
        event_id: str | None = None
        try:
            data = await parse_event(message)
            raw_id = data.get("event_id")
            event_id = raw_id[:100] if isinstance(raw_id, str) else None
            kind = data["type"]
            if kind == "session.finish":
                return True
            if kind == "input_audio_buffer.append":
                await self._append(data.get("audio"))
            elif kind == "session.update":
                await self._update(data.get("session"))
            elif kind == "input_audio_buffer.commit":
                self._commit()
            elif kind == "input_audio_buffer.clear":
                self._clear()
            elif kind in UNSUPPORTED_EVENTS:
                raise EventError(
                    f"`{kind}` is not supported: qwen3-asr-flash-realtime only transcribes the audio it is sent.",
                    code="unsupported_event",
                    param="type",
                )
            else:
                raise EventError(f"Unknown event type {kind[:100]!r}.", code="unknown_event", param="type")
        except QasrError as exc:
            self._emit(error_event(EventError.of(exc), event_id))
        return False

    async def _update(self, body: object) -> None:
        config = apply_update(self.config, body)
        if config.context != self.config.context:
            try:
                await self.check_context(config.context)
            except InvalidRequest as exc:
                raise EventError(exc.message, param="session.input_audio_transcription.corpus.text") from None
        if config.enable_itn:
            itn.require()
        restart = (config.turn_detection, config.sample_rate) != (
            self.config.turn_detection,
            self.config.sample_rate,
        )
        if restart and self._open is not None:
            self._close_turn(announce_stop=self._tracker is not None)
        self.config = config
        if restart:
            self._pcm = PcmDecoder(config.sample_rate)
            self._new_tracker()
        self._emit(event("session.updated", session=self._wire()))

    async def _append(self, audio: object) -> None:
        if isinstance(audio, str) and len(audio) > self.limits.max_append_bytes:
            raise EventError(
                f"The appended audio is {len(audio)} bytes of base64; this server takes at most "
                f"{self.limits.max_append_bytes} per append: send smaller chunks.",
                code="audio_too_large",
                param="audio",
            )
        await self._room_for_finals()
        pcm, tracker, start = self._pcm, self._tracker, self._received
        size = len(audio) * 3 // 4 if isinstance(audio, str) else 0
        big = size // 2 > _ON_LOOP_SAMPLES or (tracker is not None and tracker.would_run_model(size // 2))

        def work() -> tuple[int, list[Audio | SpeechStarted | SpeechStopped]]:
            samples = pcm.decode_base64(audio)
            if tracker is None:
                return len(samples), [Audio(samples, start)] if len(samples) else []
            return len(samples), tracker.feed(samples)

        received, actions = await asyncio.to_thread(work) if big else work()
        self._received = start + received
        self.stats.audio_samples += received
        self._apply(actions)

    def _commit(self) -> None:
        if self._tracker is not None:
            raise EventError(
                "`input_audio_buffer.commit` is for manual mode (`turn_detection: null`); with server VAD "
                "the server commits each utterance when speech ends.",
                code="invalid_request",
                param="type",
            )
        if self._open is None:
            raise EventError(
                "There is no audio to commit: append audio first.", code="input_audio_buffer_commit_empty"
            )
        self._close_turn(announce_stop=False)

    def _clear(self) -> None:
        if self._open is not None:
            self._open.utterance.close()
            self._open = None
        self._cutter.flush()
        self._new_tracker()
        self._emit(event("input_audio_buffer.cleared"))

    # --- utterances ------------------------------------------------------------------------------------

    def _apply(self, actions: list[Audio | SpeechStarted | SpeechStopped]) -> None:
        for action in actions:
            if isinstance(action, SpeechStarted):
                turn = self._open_turn()
                self._emit(
                    event(
                        "input_audio_buffer.speech_started",
                        audio_start_ms=ms(action.speech_at),
                        item_id=turn.item_id,
                    )
                )
            elif isinstance(action, SpeechStopped):
                if self._open is not None:
                    self._close_turn(announce_stop=True, at=action.at)
            else:
                for piece in self._cutter.push(action):
                    if isinstance(piece, Cut):  # the length cap: this utterance ends, the next goes on
                        vad = self._tracker is not None
                        self._close_turn(announce_stop=vad, at=piece.at, flush=False)
                        turn = self._open_turn()
                        if vad:
                            self._emit(
                                event(
                                    "input_audio_buffer.speech_started",
                                    audio_start_ms=ms(piece.at),
                                    item_id=turn.item_id,
                                )
                            )
                    else:
                        self._feed(piece.samples)

    def _open_turn(self) -> _Turn:
        turn = _Turn(new_id("item"), self.recognizer.utterance(self.config.live_options()))
        self._open = turn
        self.stats.utterances += 1
        return turn

    def _feed(self, samples: np.ndarray) -> None:
        turn = self._open or self._open_turn()  # manual mode: the first audio opens an utterance
        turn.utterance.append(samples)
        turn.fed_since_step += len(samples)
        self._wake.set()

    def _close_turn(self, *, announce_stop: bool, at: int | None = None, flush: bool = True) -> None:
        """The open utterance ends: its final starts now; the driver emits it in turn."""
        if flush:
            for piece in self._cutter.flush():
                if isinstance(piece, Audio):
                    self._feed(piece.samples)
        turn = self._open
        assert turn is not None
        self._open = None
        turn.final = asyncio.ensure_future(turn.utterance.final())
        if announce_stop:
            end = self._received if at is None else at
            self._emit(event("input_audio_buffer.speech_stopped", audio_end_ms=ms(end), item_id=turn.item_id))
        self._emit(
            event("input_audio_buffer.committed", previous_item_id=self._previous_item, item_id=turn.item_id)
        )
        self._emit(item_created(turn.item_id, self._previous_item))
        self._previous_item = turn.item_id
        self._finals.append(turn)
        self._settled.clear()
        self._wake.set()

    async def _room_for_finals(self) -> None:
        while len(self._finals) >= self.limits.max_pending_finals:
            oldest = self._finals[0].final
            assert oldest is not None
            waiting = asyncio.ensure_future(asyncio.shield(oldest))
            try:
                await self._watch(waiting, None)
            finally:
                waiting.cancel()
            await asyncio.sleep(0)  # let the driver emit it

    def _new_tracker(self) -> None:
        detection = self.config.turn_detection
        self._tracker = TurnDetector(self.vad, detection, self._received) if detection is not None else None

    # --- results (the driver) --------------------------------------------------------------------------

    async def _drive(self) -> None:
        step_samples = int(self.limits.partial_every_s * SAMPLE_RATE)
        while True:
            self._wake.clear()
            if self._finals:
                await self._emit_final(self._finals[0])
                self._finals.popleft()
                if not self._finals:
                    self._settled.set()
                continue
            turn = self._open
            if turn is not None and turn.fed_since_step >= step_samples:
                turn.fed_since_step = 0
                await self._step(turn)
                continue
            await self._wake.wait()

    async def _step(self, turn: _Turn) -> None:
        try:
            partial = await turn.utterance.partial()
        except Overloaded:
            return  # the live queue is full: this step is skipped, the next one has all the audio
        except QasrError as exc:
            log.warning("live session %s: partial step failed: %s", self.id, exc.message)
            return
        if partial is None or turn is not self._open:
            return
        shown = (partial.text, partial.stash)
        if shown != turn.shown and (partial.text or partial.stash):
            turn.shown = shown
            self._emit(transcription_text(turn.item_id, partial.text, partial.stash, partial.language))

    async def _emit_final(self, turn: _Turn) -> None:
        assert turn.final is not None
        try:
            final = await asyncio.shield(turn.final)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if not isinstance(exc, QasrError):
                log.error("live session %s: final failed", self.id, exc_info=exc)
            self._emit(transcription_failed(turn.item_id, EventError.of(exc)))
        else:
            self._emit(transcription_completed(turn.item_id, final.transcript, final.language))
        finally:
            turn.utterance.close()

    # --- server events (the writer) --------------------------------------------------------------------

    def _emit(self, payload: dict[str, Any]) -> None:
        if self._overflowed:
            return
        if self._outbox.qsize() >= self.limits.max_outbox:
            self._overflowed = True  # the client is not reading: the writer stops, the session ends
            if self._writer is not None:
                self._writer.cancel()
            return
        self._outbox.put_nowait(json.dumps(payload, ensure_ascii=False))

    async def _write(self) -> None:
        while True:
            text = await self._outbox.get()
            if text is None:
                return
            await self.socket.send_text(text)

    def _wire(self) -> dict[str, Any]:
        return self.config.to_wire(self.id, self.model)
