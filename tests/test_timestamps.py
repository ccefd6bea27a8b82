"""Word timestamps through the real pipeline (issue 14): a rigged tiny ASR model that always writes
one known sentence, a tiny random forced aligner, and a file of two utterances apart in time.

Random aligner weights give random times: these tests pin counts, order, bounds, offsets and the
fallbacks, never a particular time."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qasr.engine.aligner import Qwen3AlignerEngine
from qasr.runtime import Runtime
from qasr.settings import Settings
from qasr.text import itn
from qasr.text.subtitles import parse_srt, to_srt
from qasr.text.words import units_for
from qasr.timestamps import word_times, written_spans
from qasr.types import Segment, TranscribeOptions, Transcript, Word
from tests.helpers import EngineWrapper, rigged_checkpoint, two_utterances

TEXT = "Welcome to the speech recognition service."


@pytest.fixture(scope="module")
def rigged_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return rigged_checkpoint(tiny_dir, tmp_path_factory.mktemp("rigged-ts") / "model", TEXT)


@pytest.fixture(scope="module")
def two_segments(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("ts-audio") / "two.wav"
    return two_utterances("Hello there, how are you?", "I am fine, thank you.", out)


def _settings(model: Path, **extra: object) -> Settings:
    return Settings(model=str(model), device="cpu", dtype="float32", warmup=False, **extra)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def aligned(rigged_dir: Path, tiny_aligner_dir: Path) -> Iterator[Runtime]:
    aligner = Qwen3AlignerEngine.load(str(tiny_aligner_dir), device="cpu", dtype="float32")
    with Runtime.build(_settings(rigged_dir), aligner_engine=aligner) as runtime:
        yield runtime


def _run(runtime: Runtime, path: Path, **options: object) -> Transcript:
    opts = TranscribeOptions(**options)  # type: ignore[arg-type]
    return asyncio.run(runtime.transcriber.transcribe(path, opts, policy=runtime.local_policy()))


def test_words_per_segment_on_the_original_timeline(aligned: Runtime, two_segments: Path) -> None:
    t = _run(aligned, two_segments, language="en", timestamps="word")
    assert len(t.segments) == 2
    assert t.segments[1].start_s > t.segments[0].end_s  # the silence between them
    previous_end = 0.0
    for seg in t.segments:
        assert seg.word_timing == "word"
        assert len(seg.words) == len(units_for(seg.text, "en")) == 6
        assert " ".join(w.text for w in seg.words) == seg.text == TEXT
        for w in seg.words:
            # Offsets added once: inside this segment, not shifted by it twice or not at all.
            assert seg.start_s <= w.start_s < w.end_s <= seg.end_s + 1e-3
            assert w.start_s >= previous_end - 1e-9  # monotonic and non-overlapping
            previous_end = w.end_s
    assert previous_end <= t.duration_s + 1e-3


def test_segment_timestamps_do_not_run_the_aligner(aligned: Runtime, two_segments: Path) -> None:
    t = _run(aligned, two_segments, language="en", timestamps="segment")
    assert [(s.word_timing, s.words) for s in t.segments] == [("segment", ())] * 2


def test_unsupported_language_falls_back_to_segment_times(aligned: Runtime, two_segments: Path) -> None:
    # Arabic: one of the 30 languages the ASR model knows and the aligner does not.
    t = _run(aligned, two_segments, language="ar", timestamps="word")
    assert t.segments and all(s.word_timing == "segment" and not s.words for s in t.segments)


@pytest.mark.parametrize("text", ["", "  ", "…!?", "🎉"])
def test_a_segment_without_words_has_none_missing(aligned: Runtime, text: str) -> None:
    segment = Segment(2.0, 3.0, text, None)
    samples = np.zeros(16_000, dtype=np.float32)
    timed = asyncio.run(word_times(aligned.aligner, segment, samples))
    assert (timed.text, timed.words, timed.word_timing) == (text, (), "word")
    # Without an aligner, nothing is word-timed.
    assert asyncio.run(word_times(None, segment, samples)).word_timing == "segment"


def test_without_an_aligner_segments_are_marked_segment_level(rigged_dir: Path, two_segments: Path) -> None:
    with Runtime.build(_settings(rigged_dir)) as runtime:
        assert runtime.aligner is None
        t = _run(runtime, two_segments, language="en", timestamps="word")
    assert t.segments and all(s.word_timing == "segment" and not s.words for s in t.segments)


def test_subtitle_cues_start_when_their_first_word_is_spoken(aligned: Runtime, two_segments: Path) -> None:
    t = _run(aligned, two_segments, language="en", timestamps="word")
    words = [w for s in t.segments for w in s.words]
    cues = parse_srt(to_srt(t.segments))
    at = 0
    for cue in cues:
        count = len(cue.text.split())
        first, last = words[at], words[at + count - 1]
        assert cue.text.split() == [w.text for w in words[at : at + count]]
        assert cue.start_s >= first.start_s - 5e-4
        assert cue.end_s <= last.end_s + 5e-4
        at += count
    assert at == len(words)
    assert all(a.end_s <= b.start_s for a, b in itertools.pairwise(cues))


def test_subtitles_without_words_keep_shared_timing() -> None:
    cues = parse_srt(to_srt([Segment(1.0, 3.0, "Hello there.")]))
    assert [(c.start_s, c.end_s, c.text) for c in cues] == [(1.0, 3.0, "Hello there.")]


def test_cli_json_with_word_timestamps(rigged_dir: Path, tiny_aligner_dir: Path, two_segments: Path) -> None:
    cmd = [sys.executable, "-m", "qasr", "transcribe", str(two_segments), "--model", str(rigged_dir)]
    cmd += ["--dtype", "float32", "--aligner", str(tiny_aligner_dir), "--language", "en"]
    cmd += ["--format", "json", "--timestamps", "word"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    body = json.loads(done.stdout)
    assert len(body["segments"]) == 2
    for seg in body["segments"]:
        assert seg["word_timing"] == "word"
        assert [w["text"] for w in seg["words"]] == TEXT.split()
        assert all(set(w) == {"start", "end", "text", "repaired"} for w in seg["words"])
        assert all(seg["start"] <= w["start"] < w["end"] <= seg["end"] + 1e-3 for w in seg["words"])


def test_cli_subtitles_follow_the_words_when_an_aligner_is_loaded(
    rigged_dir: Path, tiny_aligner_dir: Path, two_segments: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from qasr import cli

    def run(*args: str) -> str:
        argv = ["transcribe", str(two_segments), "--model", str(rigged_dir), "--dtype", "float32"]
        code = cli.main([*argv, "--aligner", str(tiny_aligner_dir), "--language", "en", *args])
        out = capsys.readouterr().out
        assert code == 0, out
        return out

    body = json.loads(run("--format", "json", "--timestamps", "word"))
    segments = [
        Segment(
            s["start"],
            s["end"],
            s["text"],
            "en",
            tuple(Word(w["text"], w["start"], w["end"], w["repaired"]) for w in s["words"]),
            s["word_timing"],
        )
        for s in body["segments"]
    ]
    by_words, by_segments = (
        to_srt(segments),
        to_srt([replace(s, words=(), word_timing="segment") for s in segments]),
    )
    assert by_words != by_segments  # the test can tell them apart
    assert run("--format", "srt").strip() == by_words.strip()  # srt follows the words by default
    assert run("--format", "srt", "--timestamps", "segment").strip() == by_segments.strip()


def test_written_forms_take_the_span_of_the_spoken_words_they_replace() -> None:
    said = units_for("I have twenty five apples", "en")
    written = units_for("I have 25 apples", "en")
    spans = [(0.0, 0.1), (0.1, 0.3), (0.3, 0.6), (0.6, 0.8), (0.8, 1.2)]
    assert written_spans(said, spans, written) == [(0.0, 0.1), (0.1, 0.3), (0.3, 0.8), (0.8, 1.2)]
    # A written unit with no spoken counterpart gets a zero-length span where it stands (words_from
    # repairs and marks it); several written units for one spoken stretch share it by length.
    inserted = written_spans(units_for("a b", "en"), [(0.0, 1.0), (1.0, 2.0)], units_for("a b x", "en"))
    assert inserted == [(0.0, 1.0), (1.0, 2.0), (2.0, 2.0)]
    split = written_spans(units_for("ab", "en"), [(0.0, 1.0)], units_for("a bcd", "en"))
    assert split == [(0.0, 0.25), (0.25, 1.0)]


@pytest.mark.skipif(not itn.available(), reason=itn.UNAVAILABLE_HINT)
def test_itn_aligns_the_spoken_text_and_shows_the_written_words(
    tiny_dir: Path, aligned: Runtime, two_segments: Path, tmp_path: Path
) -> None:
    spoken = "Welcome to twenty services."
    model = rigged_checkpoint(tiny_dir, tmp_path / "model", spoken)
    seen: list[tuple[str, ...]] = []

    class Recording(EngineWrapper):
        def run(self, jobs: Any) -> Any:
            seen.extend(job.request.units for job in jobs)
            return self.inner.run(jobs)

    inner = aligned.transcriber.aligner.engine  # type: ignore[union-attr]
    with Runtime.build(_settings(model), aligner_engine=Recording(inner)) as runtime:
        t = _run(runtime, two_segments, language="en", timestamps="word", enable_itn=True)
    assert seen == [("Welcome", "to", "twenty", "services")] * 2  # what was said is aligned
    assert [s.text for s in t.segments] == ["Welcome to 20 services."] * 2
    for seg in t.segments:
        assert seg.word_timing == "word"
        assert [w.text for w in seg.words] == ["Welcome", "to", "20", "services."]
        assert all(seg.start_s <= w.start_s < w.end_s <= seg.end_s + 1e-3 for w in seg.words)
