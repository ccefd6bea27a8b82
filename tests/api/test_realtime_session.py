"""The session state machine (`qasr.api.realtime.session`) with a scripted recognizer double and an
in-memory socket: `text`/`stash` semantics, result order, failures, a client that stops reading, and
one that goes away. The engine path itself is covered end to end (test_realtime_e2e.py)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest

from qasr.api.realtime.session import Session, SessionLimits
from qasr.audio.vad import VoiceActivityDetector
from qasr.errors import EngineUnavailable, Overloaded
from qasr.live import Final, LiveOptions, Partial

SECOND = np.full(16000, 0.1, np.float32)


class Socket:
    def __init__(self, *, blocked: bool = False) -> None:
        self.incoming: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.sent: list[dict[str, Any]] = []
        self.closed: int | None = None
        self.blocked = blocked
        self.changed = asyncio.Event()

    async def receive(self) -> dict[str, Any]:
        return await self.incoming.get()

    async def send_text(self, data: str) -> None:
        if self.blocked:
            await asyncio.Event().wait()  # a client that never reads
        self.sent.append(json.loads(data))
        self.changed.set()

    async def close(self, code: int = 1000, reason: str | None = None) -> None:
        self.closed = code

    def push(self, kind: str, **fields: Any) -> None:
        self.incoming.put_nowait({"type": "websocket.receive", "text": json.dumps({"type": kind, **fields})})

    def append(self, samples: np.ndarray) -> None:
        import base64

        pcm = (samples * 32767).astype("<i2").tobytes()
        for i in range(0, len(pcm), 3200):
            self.push("input_audio_buffer.append", audio=base64.b64encode(pcm[i : i + 3200]).decode())

    async def wait_for(self, check: Callable[[list[dict[str, Any]]], bool]) -> None:
        async def until() -> None:
            while not check(self.sent):
                self.changed.clear()
                await self.changed.wait()

        await asyncio.wait_for(until(), 30)

    def types(self) -> list[str]:
        return [e["type"] for e in self.sent]


class Utterance:
    def __init__(self, partials: list[Any], final: Any, options: LiveOptions) -> None:
        self.partials = partials
        self.final_result = final
        self.options = options
        self.samples = 0
        self.closed = False
        self.release = asyncio.Event()
        self.release.set()

    def append(self, samples: np.ndarray) -> None:
        self.samples += len(samples)

    async def partial(self) -> Partial | None:
        if not self.partials:
            return None
        item = self.partials.pop(0)
        if isinstance(item, Exception):
            raise item
        return Partial(*item, self.options.language)

    async def final(self) -> Final:
        await self.release.wait()
        if isinstance(self.final_result, Exception):
            raise self.final_result
        return Final(self.final_result, "en")

    def close(self) -> None:
        self.closed = True


class Recognizer:
    """Hands out scripted utterances in order: (partials, final transcript or exception)."""

    max_utterance_s = 30.0

    def __init__(self, *scripts: tuple[list[Any], Any]) -> None:
        self.scripts = list(scripts)
        self.made: list[Utterance] = []

    def utterance(self, options: LiveOptions) -> Utterance:
        partials, final = self.scripts.pop(0)
        made = Utterance(list(partials), final, options)
        self.made.append(made)
        return made


@pytest.fixture(scope="module")
def vad() -> VoiceActivityDetector:
    return VoiceActivityDetector()


def _session(socket: Socket, recognizer: Recognizer, vad: VoiceActivityDetector, **limits: Any) -> Session:
    async def no_check(context: str) -> None:
        return None

    return Session(
        socket,
        recognizer,  # type: ignore[arg-type]
        vad,
        SessionLimits(tick_s=0.02, **limits),
        "qwen3-asr-flash-realtime",
        draining=lambda: False,
        check_context=no_check,
    )


def _manual(socket: Socket) -> None:
    socket.push(
        "session.update", session={"turn_detection": None, "input_audio_transcription": {"language": "en"}}
    )


async def _text_and_stash_then_the_final(vad: VoiceActivityDetector) -> None:
    socket = Socket()
    recognizer = Recognizer(
        (
            [("", "Hello wor"), ("Hello", " world, how"), ("Hello world,", " how are")],
            "Hello world, how are you?",
        )
    )
    run = asyncio.ensure_future(_session(socket, recognizer, vad).run())
    _manual(socket)
    for step in range(1, 4):
        socket.append(SECOND)  # one second of audio: one partial step
        await socket.wait_for(lambda sent, n=step: [e["type"][-5:] for e in sent].count(".text") == n)
    socket.push("input_audio_buffer.commit", event_id="c1")
    socket.push("session.finish")
    assert await run == 1000
    texts = [(e["text"], e["stash"], e["language"]) for e in socket.sent if e["type"].endswith(".text")]
    assert texts == [
        ("", "Hello wor", "en"),
        ("Hello", " world, how", "en"),
        ("Hello world,", " how are", "en"),
    ]
    assert socket.types()[-4:] == [
        "input_audio_buffer.committed",
        "conversation.item.created",
        "conversation.item.input_audio_transcription.completed",
        "session.finished",
    ]
    assert socket.sent[-2]["transcript"] == "Hello world, how are you?" and socket.closed == 1000
    assert recognizer.made[0].options == LiveOptions(language="en") and recognizer.made[0].closed


async def _finals_in_order_and_failures_reported(vad: VoiceActivityDetector) -> None:
    socket = Socket()
    recognizer = Recognizer(
        ([], "first"), ([Overloaded("full")], EngineUnavailable("worker stopped")), ([], "third")
    )
    run = asyncio.ensure_future(_session(socket, recognizer, vad).run())
    _manual(socket)
    socket.append(SECOND[:8000])
    socket.push("input_audio_buffer.commit")
    await socket.wait_for(lambda sent: "conversation.item.created" in [e["type"] for e in sent])
    recognizer.made[0].release.clear()  # the first final is slow: later ones wait for it on the wire
    socket.append(SECOND * 1.5)  # a partial step that finds the queue full: skipped, no event
    socket.push("input_audio_buffer.commit")
    socket.append(SECOND[:8000])
    socket.push("input_audio_buffer.commit")
    await socket.wait_for(lambda sent: [e["type"] for e in sent].count("conversation.item.created") == 3)
    recognizer.made[0].release.set()
    socket.push("session.finish")
    assert await run == 1000
    results = [e for e in socket.sent if "transcription." in e["type"]]
    assert [e["type"].rsplit(".", 1)[1] for e in results] == ["completed", "failed", "completed"]
    assert [r.get("transcript") for r in results] == ["first", None, "third"]
    assert results[1]["error"]["code"] == "service_unavailable"
    items = [e["item_id"] for e in socket.sent if e["type"] == "input_audio_buffer.committed"]
    assert [r["item_id"] for r in results] == items


async def _a_client_that_does_not_read_is_closed(vad: VoiceActivityDetector) -> None:
    socket = Socket(blocked=True)
    recognizer = Recognizer(([], "x"))
    run = asyncio.ensure_future(_session(socket, recognizer, vad, max_outbox=8).run())
    _manual(socket)
    socket.append(SECOND)
    for _ in range(20):
        socket.push("no.such.event")  # each answered with an error event nobody reads
    assert await asyncio.wait_for(run, 30) == 1008
    assert socket.closed == 1008 and all(u.closed for u in recognizer.made)


async def _a_disconnect_frees_everything(vad: VoiceActivityDetector) -> None:
    socket = Socket()
    recognizer = Recognizer(([], "held"), ([], "never"))
    run = asyncio.ensure_future(_session(socket, recognizer, vad).run())
    _manual(socket)
    socket.append(SECOND)
    socket.push("input_audio_buffer.commit")
    await socket.wait_for(lambda sent: "conversation.item.created" in [e["type"] for e in sent])
    recognizer.made[0].release.clear()
    socket.append(SECOND)  # a second utterance, open
    await asyncio.sleep(0)
    socket.incoming.put_nowait({"type": "websocket.disconnect", "code": 1006})
    assert await asyncio.wait_for(run, 30) == 1006
    assert len(recognizer.made) == 2 and all(u.closed for u in recognizer.made)


async def _idle_session_ends_with_its_last_result(vad: VoiceActivityDetector) -> None:
    socket = Socket()
    recognizer = Recognizer(([], "last words"))
    run = asyncio.ensure_future(_session(socket, recognizer, vad, idle_timeout_s=0.3).run())
    _manual(socket)
    socket.append(SECOND)  # never committed: the idle end commits it
    assert await asyncio.wait_for(run, 30) == 1000
    assert socket.sent[-2]["transcript"] == "last words"
    assert socket.sent[-1]["type"] == "error" and socket.sent[-1]["error"]["code"] == "idle_timeout"


async def _closed_utterances_waiting_for_finals_stop_the_reading(vad: VoiceActivityDetector) -> None:
    socket = Socket()
    recognizer = Recognizer(*[([], f"final {k}") for k in range(4)])
    run = asyncio.ensure_future(_session(socket, recognizer, vad, max_pending_finals=2).run())
    _manual(socket)
    for _ in range(4):
        socket.append(SECOND[:8000])
        socket.push("input_audio_buffer.commit")
    socket.push("session.finish")
    await socket.wait_for(lambda sent: [e["type"] for e in sent].count("conversation.item.created") == 1)
    for made in recognizer.made:
        made.release.clear()  # finals held from here on (the first, at least)
    await socket.wait_for(lambda sent: [e["type"] for e in sent].count("conversation.item.created") == 2)
    await asyncio.sleep(0.2)
    # Two closed utterances wait for their finals: the reader takes no more audio meanwhile.
    assert socket.incoming.qsize() > 0 and len(recognizer.made) <= 3
    for made in recognizer.made:
        made.release.set()
    while not run.done():
        for made in recognizer.made:
            made.release.set()
        await asyncio.sleep(0.01)
    assert run.result() == 1000
    transcripts = [e["transcript"] for e in socket.sent if e["type"].endswith(".completed")]
    assert transcripts == [f"final {k}" for k in range(4)]


def test_text_and_stash_then_the_final(vad: VoiceActivityDetector) -> None:
    asyncio.run(_text_and_stash_then_the_final(vad))


def test_finals_in_order_and_failures_reported(vad: VoiceActivityDetector) -> None:
    asyncio.run(_finals_in_order_and_failures_reported(vad))


def test_a_client_that_does_not_read_is_closed(vad: VoiceActivityDetector) -> None:
    asyncio.run(_a_client_that_does_not_read_is_closed(vad))


def test_a_disconnect_frees_everything(vad: VoiceActivityDetector) -> None:
    asyncio.run(_a_disconnect_frees_everything(vad))


def test_idle_session_ends_with_its_last_result(vad: VoiceActivityDetector) -> None:
    asyncio.run(_idle_session_ends_with_its_last_result(vad))


def test_closed_utterances_waiting_for_finals_stop_the_reading(vad: VoiceActivityDetector) -> None:
    asyncio.run(_closed_utterances_waiting_for_finals_stop_the_reading(vad))
