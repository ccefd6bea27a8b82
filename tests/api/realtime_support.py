"""What the realtime tests share: speech fixtures, a rigged server, the SDK seed runner and a raw
WebSocket client (for what the SDK cannot send: bad events, binary frames, tokens)."""

from __future__ import annotations

import base64
import contextlib
import json
import subprocess
import sys
import wave
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from websockets.sync.client import ClientConnection, connect

from qasr.audio.decode import decode_audio
from qasr.types import SAMPLE_RATE
from tests.api.sdk import sdk_env
from tests.helpers import synthesize
from tests.server import LiveServer

SEEDS = Path(__file__).parent / "seeds"
TEXT = "Welcome to the speech recognition service."
"""What the rigged checkpoint writes for any speech (tests/helpers.py, `rigged_checkpoint`)."""
KEY = "sk-qasr-test"
PATH = "/api-ws/v1/realtime"
MODEL = "qwen3-asr-flash-realtime"
SDK_OLD = "1.24.6"
TEXT_EVENT = "conversation.item.input_audio_transcription.text"
COMPLETED = "conversation.item.input_audio_transcription.completed"


def write_wav(path: Path, samples: np.ndarray, rate: int = SAMPLE_RATE) -> Path:
    """Mono 16-bit WAV of float samples in [-1, 1] at `rate` (16 kHz samples are resampled)."""
    if rate == 8000:  # low-pass below 4 kHz (a 101-tap windowed sinc), then every other sample
        n = np.arange(101) - 50
        taps = 0.45 * np.sinc(0.45 * n) * np.hamming(101)
        samples = np.convolve(samples, taps / taps.sum(), mode="same")[::2].astype(np.float32)
    elif rate != SAMPLE_RATE:
        raise ValueError(f"write_wav: 16000 or 8000 Hz, not {rate}")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(rate)
        w.writeframes((np.clip(samples, -1.0, 1.0) * 32767).astype(np.int16).tobytes())
    return path


def speech(text: str, tmp: Path) -> np.ndarray:
    """espeak-ng speech as 16 kHz float32."""
    return decode_audio(synthesize(text, tmp / f"espeak-{abs(hash(text))}.wav")).samples


def silence(seconds: float) -> np.ndarray:
    return np.zeros(int(seconds * SAMPLE_RATE), np.float32)


def ws_url(server: LiveServer) -> str:
    return server.url.replace("http://", "ws://") + PATH


def run_seed(sdk: Path | None, server: LiveServer, audio: Path, key: str = KEY, **options: str) -> list[dict]:
    """Run the realtime seed program under `sdk`; the server events it printed, in order."""
    env = {
        **sdk_env(sdk),
        "DASHSCOPE_API_KEY": key,
        "QASR_REALTIME_URL": ws_url(server),
        "QASR_AUDIO": str(audio),
        **{f"QASR_{k.upper()}": v for k, v in options.items()},
    }
    code = (SEEDS / "realtime_session.py").read_text()
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    events = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return [e for e in events if not e["type"].startswith("<")]


def of_type(events: list[dict], kind: str) -> list[dict]:
    return [e for e in events if e["type"] == kind]


def check_text_semantics(events: list[dict]) -> None:
    """Interim results per item: `text` only ever grows (a settled prefix), and each item's interim
    results come before its `completed`."""
    done: set[str] = set()
    settled: dict[str, str] = {}
    for e in events:
        if e["type"] == COMPLETED:
            done.add(e["item_id"])
        elif e["type"] == TEXT_EVENT:
            item = e["item_id"]
            assert item not in done
            assert e["text"].startswith(settled.get(item, ""))
            settled[item] = e["text"]


class RawClient:
    """A plain WebSocket client speaking the realtime protocol (what the SDK sends, or worse)."""

    def __init__(self, connection: ClientConnection) -> None:
        self.ws = connection

    def send(self, kind: str, event_id: str | None = None, **fields: Any) -> None:
        self.ws.send(json.dumps({"event_id": event_id or f"event_{kind}", "type": kind, **fields}))

    def append(self, samples: np.ndarray, chunk_s: float = 0.1) -> None:
        pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
        step = int(chunk_s * SAMPLE_RATE) * 2
        for start in range(0, len(pcm), step):
            self.send("input_audio_buffer.append", audio=base64.b64encode(pcm[start : start + step]).decode())

    def next(self, timeout: float = 60) -> dict:
        return json.loads(self.ws.recv(timeout=timeout))

    def until(self, kind: str, timeout: float = 60) -> list[dict]:
        """Events up to and including the first of type `kind`."""
        seen = []
        while True:
            event = self.next(timeout)
            seen.append(event)
            if event["type"] == kind:
                return seen

    def rest(self, timeout: float = 60) -> list[dict]:
        """Every event until the server closes the connection."""
        from websockets.exceptions import ConnectionClosed

        seen = []
        try:
            while True:
                seen.append(self.next(timeout))
        except ConnectionClosed:
            return seen


@contextlib.contextmanager
def raw_client(
    server: LiveServer,
    key: str | None = KEY,
    query: str = f"?model={MODEL}",
    subprotocols: list[str] | None = None,
) -> Iterator[RawClient]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with connect(
        ws_url(server) + query,
        additional_headers=headers,
        subprotocols=subprotocols,  # type: ignore[arg-type]
        max_size=None,
        open_timeout=30,
    ) as connection:
        yield RawClient(connection)
