"""The composition root and the library API: a Python user transcribes a file in three lines, with
the same runtime the server and the CLI build."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.settings import Settings
from tests.helpers import synthesize


def test_three_lines_transcribe_a_file(tiny_dir: Path, tmp_path: Path) -> None:
    clip = synthesize("A library user transcribes this file.", tmp_path / "clip.wav")

    from qasr import Runtime

    with Runtime.open(str(tiny_dir), device="cpu", dtype="float32", warmup=False) as asr:
        transcript = asr.transcribe(clip)

    assert transcript.duration_s == pytest.approx(_duration(clip), abs=0.05)
    assert transcript.segments and transcript.usage.output_tokens > 0
    assert transcript.text == " ".join(s.text for s in transcript.segments)


def test_the_runtime_gives_what_the_engine_gives(engine: Qwen3ASREngine, tmp_path: Path) -> None:
    """Built around a given engine (as tests and benchmarks do), the library path returns exactly the
    engine's own transcription of the one segment the VAD finds."""
    from qasr import Runtime
    from qasr.types import EngineRequest

    clip = synthesize("Same text either way.", tmp_path / "clip.wav")
    with Runtime.build(Settings(model="tiny", warmup=False), engine) as runtime:
        transcript = asyncio.run(runtime.atranscribe(clip))
        assert runtime.scheduler.batches_run == len(transcript.segments) == 1
        assert runtime.healthy
    segment = transcript.segments[0]
    from qasr.audio.decode import decode_audio

    samples = decode_audio(clip.read_bytes()).samples
    piece = samples[int(segment.start_s * 16000) : int(segment.end_s * 16000)]
    direct = engine.transcribe([EngineRequest(piece)])[0]
    assert transcript.text == direct.text
    assert transcript.usage.output_tokens == direct.output_tokens
    assert not runtime.healthy  # closed: the worker has stopped


def test_close_is_idempotent_and_the_server_parts_are_optional(engine: Qwen3ASREngine) -> None:
    from qasr import Runtime

    plain = Runtime.build(Settings(model="tiny", warmup=False, vad=False), engine)
    server = Runtime.build(Settings(model="tiny", warmup=False, vad=False), engine, server=True)
    assert plain.uploads is None and server.uploads is not None
    root = server.uploads.root
    for runtime in (plain, server):
        runtime.close()
        runtime.close()
    assert root.is_dir()  # the persistent upload directory outlives the runtime (issue 13)


def _duration(path: Path) -> float:
    import wave

    with wave.open(str(path)) as w:
        return w.getnframes() / w.getframerate()
