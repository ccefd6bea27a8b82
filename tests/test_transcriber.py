"""The pipeline on the tiny model: silence gating, segment order and times, streaming, languages."""

from __future__ import annotations

import asyncio
import io
import itertools
from collections.abc import Sequence
from pathlib import Path

import av
import numpy as np
import pytest

from qasr.audio.segment import SegmentationOptions
from qasr.engine.base import Job
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.engine.scheduler import Scheduler
from qasr.transcriber import PipelineOptions, Transcriber, TranscriptBuilder
from qasr.types import AudioInfo, Delta, EngineResult, Segment, TranscribeOptions, Transcript
from tests.helpers import EngineWrapper, synthesize


class _Counting(EngineWrapper):
    def __init__(self, inner: Qwen3ASREngine) -> None:
        super().__init__(inner)
        self.requests = 0

    def run(self, jobs: Sequence[Job]) -> list[EngineResult]:
        self.requests += len(jobs)
        return self.inner.run(jobs)


def _wav(samples: np.ndarray, rate: int = 16000) -> bytes:
    buf = io.BytesIO()
    with av.open(buf, "w", format="wav") as out:
        stream = out.add_stream("pcm_s16le", rate=rate, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            (samples * 32767).astype(np.int16)[None], format="s16", layout="mono"
        )
        frame.sample_rate = rate
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            out.mux(packet)
    return buf.getvalue()


def _run(
    engine: _Counting, source: bytes | Path, options: PipelineOptions | None = None, **kw: object
) -> list:
    data = source.read_bytes() if isinstance(source, Path) else source

    async def main() -> list:
        scheduler = Scheduler(engine)  # type: ignore[arg-type]
        scheduler.start()
        try:
            transcriber = Transcriber(scheduler, options=options)
            return [item async for item in transcriber.stream(data, TranscribeOptions(**kw))]  # type: ignore[arg-type]
        finally:
            scheduler.close()

    return asyncio.run(main())


@pytest.fixture(scope="module")
def speech_with_pauses(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[tuple[float, float]]]:
    """Three spoken sentences separated by 2 s of silence; returns the file and the silent stretches."""
    root = tmp_path_factory.mktemp("pauses")
    parts, silences, t = [], [], 0.0
    for i, text in enumerate(
        ["The first sentence is here.", "Then comes the second one.", "Finally the third."]
    ):
        path = synthesize(text, root / f"s{i}.wav")
        with av.open(str(path)) as f:
            resampler = av.AudioResampler(format="flt", layout="mono", rate=16000)
            chunks = [r.to_ndarray()[0] for fr in f.decode(audio=0) for r in resampler.resample(fr)]
        voice = np.concatenate(chunks)
        parts.append(voice)
        t += len(voice) / 16000
        if i < 2:
            parts.append(np.zeros(32000, dtype=np.float32))
            silences.append((t, t + 2.0))
            t += 2.0
    out = root / "pauses.wav"
    out.write_bytes(_wav(np.concatenate(parts)))
    return out, silences


def test_silence_and_noise_never_reach_the_model(engine: Qwen3ASREngine) -> None:
    counting = _Counting(engine)
    rng = np.random.default_rng(0)
    for samples in (
        np.zeros(16000 * 20, dtype=np.float32),
        (rng.standard_normal(16000 * 20) * 0.003).astype(np.float32),
    ):
        items = _run(counting, _wav(samples))
        final = items[-1]
        assert isinstance(final, Transcript)
        assert (final.text, final.segments, final.language) == ("", (), None)
        assert final.duration_s == pytest.approx(20.0, abs=0.05)
    assert counting.requests == 0


def test_segments_fall_in_pauses_and_stream_matches(
    engine: Qwen3ASREngine, speech_with_pauses: tuple
) -> None:
    path, silences = speech_with_pauses
    counting = _Counting(engine)
    items = _run(counting, path)
    final = items[-1]
    assert isinstance(final, Transcript)
    segments = final.segments
    assert len(segments) == 3 and counting.requests == 3
    for a, b in itertools.pairwise(segments):
        assert a.end_s <= b.start_s  # ordered, not overlapping
    for seg, (quiet_start, quiet_end) in zip(segments, silences, strict=False):
        assert quiet_start - 0.05 <= seg.end_s <= quiet_end  # the cut is inside the silence
    assert segments[0].start_s >= 0 and segments[-1].end_s <= final.duration_s
    deltas = "".join(i.text for i in items if isinstance(i, Delta))
    assert deltas == final.text
    # the same audio in one pass without streaming gives the same text
    again = _run(_Counting(engine), path)[-1]
    assert again.text == final.text


def test_long_segments_are_capped(engine: Qwen3ASREngine, speech_with_pauses: tuple) -> None:
    path, _ = speech_with_pauses
    options = PipelineOptions(segmentation=SegmentationOptions(max_segment_s=2.0))
    final = _run(_Counting(engine), path, options)[-1]
    assert final.segments and all(s.end_s - s.start_s <= 2.0 + 1e-6 for s in final.segments)


def test_forced_language_and_context_reach_every_segment(
    engine: Qwen3ASREngine, speech_with_pauses: tuple
) -> None:
    path, _ = speech_with_pauses
    final = _run(_Counting(engine), path, language="de", context="Namen: Qwen")[-1]
    assert final.language == "de" and {s.language for s in final.segments} == {"de"}
    assert final.usage.context_tokens == engine.count_text_tokens("Namen: Qwen")
    assert final.usage.audio_tokens > 0 and final.usage.output_tokens > 0


def test_whole_file_language_is_the_longest_spoken() -> None:
    collector = TranscriptBuilder()
    result = EngineResult("x", "en", 1, 0, 1)
    for seg, lang in [((0, 10), "en"), ((10, 12), "zh"), ((12, 15), "zh"), ((15, 16), None)]:
        collector.append("x", new_segment=True)
        collector.add(Segment(*seg, "x", lang), EngineResult("x", lang, 1, 0, 1))
    del result
    t = collector.transcript(AudioInfo(16.0, "wav", "pcm_s16le", 16000, 1))
    assert t.language == "en" and t.languages == ("en", "zh")
    assert t.text == "x x x x"


def test_the_announced_segment_is_released_whatever_happens(
    engine: Qwen3ASREngine, speech_with_pauses: tuple
) -> None:
    """The transcriber takes a place in the queue before anything else (`Scheduler.admit`); after a
    transcription with speech, one with only silence, and one that fails to decode, none is left
    open (an open one would make every partial batch wait its `max_hold_ms`)."""
    from qasr.errors import AudioDecodeError

    path, _ = speech_with_pauses

    async def main() -> Scheduler:
        scheduler = Scheduler(_Counting(engine))  # type: ignore[arg-type]
        scheduler.start()
        try:
            transcriber = Transcriber(scheduler)
            speech = await transcriber.transcribe(path.read_bytes(), TranscribeOptions())
            assert speech.text
            silence = await transcriber.transcribe(_wav(np.zeros(16000 * 3, np.float32)), TranscribeOptions())
            assert silence.text == ""
            with pytest.raises(AudioDecodeError):
                await transcriber.transcribe(b"not audio at all" * 100, TranscribeOptions())
            return scheduler
        finally:
            scheduler.close()

    assert asyncio.run(main()).arriving == 0
