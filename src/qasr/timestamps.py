"""Word timestamps for one finished segment, from the forced aligner (issue 14, docs/spec/aligner.md).

The transcriber calls `word_times` once a segment's text is final, with the segment's samples (kept
only until then). Where no time can honestly be given (no aligner loaded, a language the aligner
does not cover, a segment over its length limit) the segment keeps segment-level times and says so:
words are never invented. A segment without a word (silence, only punctuation) has nothing to place:
with an aligner it counts as word-timed, with no words.

The aligner is trained on what is said, so it aligns the SPOKEN text the model wrote. When ITN
changed it (`twenty five percent` -> `25%`), the written text's units are matched to the spoken
units (`difflib`, on their cleaned forms): unchanged units keep their times, and each written form
gets the span of the spoken words it replaced (shared by length when several written units replace
them together). Units map back to displayed words by character offsets, so punctuation stays.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from difflib import SequenceMatcher
from typing import TYPE_CHECKING, TypeAlias

import numpy as np

from qasr.engine.scheduler import Priority
from qasr.text.words import Unit, aligner_supports, clean, units_for, words_from
from qasr.types import SAMPLE_RATE, Segment

if TYPE_CHECKING:  # the aligner module imports torch: only where an aligner is loaded
    from qasr.engine.aligner import AlignRequest, AlignResult
    from qasr.engine.scheduler import Scheduler

    AlignScheduler: TypeAlias = Scheduler[AlignRequest, AlignResult]

MAX_ALIGN_S = 180.0
"""`qasr.engine.aligner.MAX_ALIGN_S`, repeated so that this module does not import torch."""


def alignable(segment: Segment, samples: np.ndarray | None) -> bool:
    """Whether the aligner can place `segment`'s words: text, a covered language, audio within its limit."""
    return (
        bool(segment.text.strip())
        and samples is not None
        and 0 < len(samples) <= MAX_ALIGN_S * SAMPLE_RATE
        and aligner_supports(segment.language)
    )


async def word_times(
    aligner: AlignScheduler | None,
    segment: Segment,
    samples: np.ndarray | None,
    *,
    spoken: str | None = None,
    priority: Priority = Priority.INTERACTIVE,
) -> Segment:
    """`segment` with its words placed in time (`word_timing="word"`), or unchanged (segment-level)
    when the aligner is absent or cannot cover it. `spoken`: the text as the model wrote it, when ITN
    changed it into `segment.text`; that is what is aligned."""
    if aligner is None:
        return segment
    if not clean(segment.text):
        # No word in it (silence, noise, only punctuation): none of its words is missing a time, and
        # marking it segment-level would report some as missing.
        return replace(segment, words=(), word_timing="word")
    if not alignable(segment, samples):
        return segment
    from qasr.engine.aligner import AlignRequest

    assert samples is not None  # alignable() checked it
    written = units_for(segment.text, segment.language)
    said = units_for(spoken, segment.language) if spoken and spoken != segment.text else written
    if not written or not said:
        return segment
    request = AlignRequest(samples, tuple(u.text for u in said), offset_s=segment.start_s)
    result = await aligner.submit(request, priority=priority)
    spans = result.spans if said is written else written_spans(said, result.spans, written)
    bounds = (segment.start_s, segment.start_s + len(samples) / SAMPLE_RATE)
    words = words_from(segment.text, written, spans, bounds_s=bounds)
    return Segment(segment.start_s, segment.end_s, segment.text, segment.language, tuple(words), "word")


def written_spans(
    said: Sequence[Unit], spans: Sequence[tuple[float, float]], written: Sequence[Unit]
) -> list[tuple[float, float]]:
    """One span per written unit from the spans of the spoken units (see the module docstring).

    A written unit with no spoken counterpart gets a zero-length span where it stands, which
    `words_from` repairs (and marks) against its neighbours."""
    out: list[tuple[float, float]] = []
    matcher = SequenceMatcher(
        None, [u.text.lower() for u in said], [u.text.lower() for u in written], autojunk=False
    )
    for op, s0, s1, w0, w1 in matcher.get_opcodes():
        if op == "equal":
            out += spans[s0:s1]
            continue
        if s0 == s1:  # inserted in writing: nothing was said for it
            at = spans[s0 - 1][1] if s0 else (spans[0][0] if spans else 0.0)
            out += [(at, at)] * (w1 - w0)
            continue
        low, high = spans[s0][0], spans[s1 - 1][1]
        weights = [max(1, len(u.text)) for u in written[w0:w1]]
        total, done = sum(weights), 0
        for weight in weights:  # empty when only deleted: the spoken words had no written form
            start = low + (high - low) * done / total
            done += weight
            out.append((start, low + (high - low) * done / total))
    return out
