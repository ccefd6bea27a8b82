"""What `qasr transcribe` does once its arguments are parsed: run the inputs in order through the
pipeline, results on stdout, progress and errors on stderr, and a clean stop on Ctrl-C that keeps
what was finished."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from qasr.errors import QasrError

if TYPE_CHECKING:
    from tqdm import tqdm

    from qasr.audio.sources import SourcePolicy
    from qasr.transcriber import Transcriber
    from qasr.types import TranscribeOptions, Transcript

_LINE_EVERY_S = 10.0
"""Without a terminal, a progress line at most this often (the first one at once)."""


@dataclass
class _Partial:
    """The input in progress: its text so far, and how much of it belongs to finished segments."""

    keep_text: bool = True
    """False when partial text would not be shown (`--format json`, `srt`, `vtt`): counts only."""
    pieces: list[str] = field(default_factory=list)
    """The deltas as they came (a list: joining a long file's text on every delta would be quadratic)."""
    finished: int = 0
    """How many of `pieces` belong to finished segments."""
    segments: int = 0
    seconds: float = 0.0

    def segment_done(self, segments: int, seconds: float) -> None:
        # The transcriber reports a segment after releasing all of its text, so `pieces` is whole here.
        self.finished, self.segments, self.seconds = len(self.pieces), segments, seconds

    @property
    def finished_text(self) -> str:
        return "".join(self.pieces[: self.finished])


@dataclass
class TranscribeRun:
    """One `qasr transcribe`: its inputs in order, results on stdout, everything else on stderr."""

    inputs: list[str]
    options: TranscribeOptions
    fmt: str
    progress: Progress
    failed: int = 0
    reported: bool = False
    """An interruption was reported (the input in progress, what was done of it)."""

    async def all(self, transcriber: Transcriber, policy: SourcePolicy) -> int:
        for index, source in enumerate(self.inputs):
            partial = _Partial(keep_text=self.fmt == "text")
            self.progress.begin(source)
            try:
                transcript = await self.one(transcriber, source, policy, partial)
            except QasrError as exc:
                self.failed += 1
                self.progress.say(f"qasr: {source}: {exc.message}")
            except asyncio.CancelledError:
                self.interrupted(source, partial, left=len(self.inputs) - index - 1)
                raise
            else:
                self.progress.say(
                    _render(source, transcript, self.fmt, self.several, self.options.timestamps == "word"),
                    sys.stdout,
                )
            self.progress.end()
        return 1 if self.failed else 0

    async def one(
        self, transcriber: Transcriber, source: str, policy: SourcePolicy, partial: _Partial
    ) -> Transcript:
        from qasr.types import Transcript

        def progress(segments: int, seconds: float) -> None:
            partial.segment_done(segments, seconds)
            self.progress.advance(segments, seconds)

        async for item in transcriber.stream(source, self.options, policy=policy, progress=progress):
            if isinstance(item, Transcript):
                return item
            if partial.keep_text:
                partial.pieces.append(item.text)
        raise RuntimeError("the transcription ended without a transcript")  # stream always ends with one

    def interrupted(self, source: str, partial: _Partial, left: int) -> None:
        """Ctrl-C: what was finished of the input in progress goes out as text, then one line on stderr."""
        body = partial.finished_text
        shown = bool(body)
        if shown:
            self.progress.say(f"==> {source} <==\n{body}" if self.several else body, sys.stdout)
        line = (
            f"qasr: {source}: interrupted after {_count(partial.segments, 'segment')} "
            f"({partial.seconds:.0f} s of audio)"
        )
        if shown:
            line += "; their text is on stdout"
        elif partial.segments and self.fmt != "text":
            line += f"; partial results are not written as {self.fmt}"
        if left:
            line += f"; {_count(left, 'more input')} not started"
        self.progress.say(line)
        self.reported = True

    @property
    def several(self) -> bool:
        return len(self.inputs) > 1


class Progress:
    """Progress on stderr, for one input as for many; stdout carries results only.

    On a terminal, a tqdm bar (inputs done; segments and seconds of audio of the current one). In a
    pipe or a log file, a plain line at an input's first finished segment, then every `_LINE_EVERY_S`.
    """

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total = total
        self.stream = stream
        self.index = 0
        self.name = ""
        self._bar: tqdm[Any] | None = None
        self._last_line: float | None = None

    def begin(self, source: str) -> None:
        if self.index == 0 and self.stream.isatty():  # started here: its clock leaves out the model load
            from tqdm import tqdm

            self._bar = tqdm(total=self.total, unit="file", file=self.stream, dynamic_ncols=True)
        self.index += 1
        self.name = Path(source).name[:40] or source[:40]
        self._last_line = None
        if self._bar is not None:
            self._bar.set_description(self.name)
            self._bar.set_postfix_str("")

    def advance(self, segments: int, seconds: float) -> None:
        done = f"{_count(segments, 'segment')}, {seconds:.0f} s of audio"
        if self._bar is not None:
            self._bar.set_postfix_str(done)
            return
        now = time.monotonic()
        if self._last_line is None or now - self._last_line >= _LINE_EVERY_S:
            self._last_line = now
            counter = f"[{self.index}/{self.total}] " if self.total > 1 else ""
            self.say(f"qasr: {counter}{self.name}: {done}")

    def end(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def say(self, text: str, stream: TextIO | None = None) -> None:
        """Write a line (stderr unless told) without breaking the bar; flushed, for pipes."""
        from tqdm import tqdm

        out = stream or self.stream
        tqdm.write(text, file=out)
        out.flush()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def _render(source: str, transcript: Any, fmt: str, several: bool, words: bool = False) -> str:
    from qasr.text.subtitles import to_srt, to_vtt

    if fmt == "json":
        return json.dumps(
            {
                "input": source,
                "language": transcript.language,
                "text": transcript.text,
                "duration": round(transcript.duration_s, 3),
                "segments": [_segment_json(s, words) for s in transcript.segments],
            },
            ensure_ascii=False,
        )
    if fmt == "srt":
        body = to_srt(transcript.segments)
    elif fmt == "vtt":
        body = to_vtt(transcript.segments)
    else:
        body = transcript.text
    return f"==> {source} <==\n{body}" if several else body


def _segment_json(segment: Any, words: bool) -> dict[str, Any]:
    """One segment of `--format json`; with `--timestamps word`, its words and how it was timed
    (`word_timing: segment` when the aligner could not place them: no word times are made up)."""
    out: dict[str, Any] = {
        "start": round(segment.start_s, 3),
        "end": round(segment.end_s, 3),
        "text": segment.text,
        "language": segment.language,
    }
    if words:
        out["word_timing"] = segment.word_timing
        out["words"] = [
            {"start": w.start_s, "end": w.end_s, "text": w.text, "repaired": w.repaired}
            for w in segment.words
        ]
    return out
