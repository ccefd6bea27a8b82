"""Which part of a live hypothesis is settled (`text`) and which is still provisional (`stash`).

Each partial step decodes the utterance so far with the settled text forced as the start of the
transcript, so the model only writes a continuation. Of that continuation, all but the last few words
become settled too (the official toolkit rolls back its last 5 tokens the same way; words are used
here so that `text` always ends at a word boundary, docs/spec/realtime.md Part 2). Settled text is
never taken back: later partials of the utterance only extend it.

Words are runs of non-space characters; in scripts written without spaces (Chinese, Japanese, Korean
syllables) each character counts as a word.
"""

from __future__ import annotations

import re

_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af\uf900-\ufaff\uff00-\uffef"
_UNIT = re.compile(f"[{_CJK}]|[^\\s{_CJK}]+")


def split_hypothesis(settled: str, hypothesis: str, hold_words: int) -> tuple[str, str]:
    """`(text, stash)` for a hypothesis that starts with the settled text.

    `text` is `settled` plus the continuation's words but the last `hold_words` (cut right after a
    word, so it never ends in a space); `stash` is the rest (it may start with the space that separates
    it from `text`). A hypothesis that does not continue `settled` settles nothing new."""
    if not hypothesis.startswith(settled):
        return settled, ""
    rest = hypothesis[len(settled) :]
    units = list(_UNIT.finditer(rest))
    keep = len(units) - max(0, hold_words)
    if keep <= 0:
        return settled, rest
    cut = units[keep - 1].end()
    return settled + rest[:cut], rest[cut:]
