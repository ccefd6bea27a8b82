"""A transcript as forced-aligner units, and aligned units back as displayable words
(docs/spec/aligner.md, "Units" and "A sound approach").

`units_for` splits the transcript as the aligner was trained to see it: whitespace words, each CJK
ideograph its own unit, and a clean step that keeps only letters, digits and the ASCII apostrophe
(`3.5%` -> `35`, `e-mail` -> `email`, `don’t` -> `dont`). Each unit keeps where it is written in the
ORIGINAL text, because the cleaned form cannot be shown. `words_from` turns the aligner's spans into
words whose text is the original from the unit's start up to the next unit's start, so punctuation
stays attached (`Hello,`, `3.5%`), and repairs zero-length and overlapping spans against their
neighbours, marking the words it changed. `sentences_from` groups timed words into sentences, cut at
sentence punctuation and at long pauses, each spanning its words (the async file API's `sentences`).

Japanese and Korean: the toolkit splits Japanese with `nagisa` and Korean with `soynlp` (optional
dependencies). When they are installed they are used here too; without them, Japanese kana and kanji
are one unit per character (as Chinese is) and Korean falls back to whitespace words, which is also
what the default split gives for Hangul. Their units then differ from the toolkit's.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise

from qasr.errors import UnknownLanguage
from qasr.text.languages import normalize_code
from qasr.types import Word as Word  # re-exported: the domain type lives in qasr.types

ALIGNER_LANGUAGES: frozenset[str] = frozenset(
    {"zh", "en", "yue", "fr", "de", "it", "ja", "ko", "pt", "ru", "es"}
)
"""Codes of the 11 languages Qwen3-ForcedAligner covers; the other 19 the ASR model knows need a
fallback (segment-level times, marked as such), never the aligner's guess."""

SENTENCE_PAUSE_S = 1.0
"""A silence at least this long between two words ends a sentence, punctuation or not."""
_SENTENCE_ENDS = "。！？!?；;…"
"""Sentence punctuation (docs/spec/aligner.md, "What peers do"); `.` is guarded (`ends_sentence`)."""
_EPSILON_S = 1e-6
"""Times are rounded to the millisecond: a pause of exactly `max_pause_s` must not miss by a float's last bit."""
_CLOSERS = "\"'”’»)]}）」』》〉】"
"""Closing quotes and brackets that may follow a sentence's punctuation."""

_NOMINAL_WORD_S = 0.25
"""Time a repaired zero-length word may take from an empty gap beside it (a short word's length)."""
_MIN_WORD_S = 0.05
"""Below this much room per word, zero-length words share their neighbours' spans instead."""

# CJK ideograph blocks, as the toolkit lists them (transformers `_is_cjk_char`).
_CJK_RANGES = (
    (0x4E00, 0x9FFF),
    (0x3400, 0x4DBF),
    (0x20000, 0x2A6DF),
    (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F),
    (0x2B820, 0x2CEAF),
    (0xF900, 0xFAFF),
    (0x2F800, 0x2FA1F),
)
# Hiragana, katakana, katakana phonetic extensions, halfwidth katakana.
_KANA_RANGES = ((0x3040, 0x309F), (0x30A0, 0x30FF), (0x31F0, 0x31FF), (0xFF66, 0xFF9F))


@dataclass(frozen=True)
class Unit:
    """One unit the aligner places in time, and where it is written in the original text."""

    text: str
    """The cleaned form the aligner sees: letters, digits and `'` only, never empty."""
    start: int
    """Offset in the original text where its written form begins, with any punctuation that opens
    its whitespace-separated word (`¿`, a quote, a bracket)."""
    end: int
    """One past its last kept character in the original text."""


def aligner_supports(language: str | None) -> bool:
    """Whether the forced aligner covers `language` (a code or a model language name)."""
    try:
        code = normalize_code(language)
    except UnknownLanguage:
        return False
    return code in ALIGNER_LANGUAGES


def _in_ranges(char: str, ranges: tuple[tuple[int, int], ...]) -> bool:
    point = ord(char)
    return any(low <= point <= high for low, high in ranges)


def is_cjk(char: str) -> bool:
    """A CJK ideograph: always a unit of its own."""
    return _in_ranges(char, _CJK_RANGES)


def is_kept(char: str) -> bool:
    """A character the aligner sees: a letter, a digit (any script), a CJK ideograph or ASCII `'`."""
    return char == "'" or unicodedata.category(char)[0] in "LN" or is_cjk(char)


def clean(raw: str) -> str:
    """`raw` with only the characters the aligner sees."""
    return "".join(c for c in raw if is_kept(c))


def units_for(text: str, language: str | None = None) -> list[Unit]:
    """The aligner's units for `text`, in order, each with its place in `text`."""
    try:
        code = normalize_code(language)
    except UnknownLanguage:
        code = None
    external = _segmenter(code)
    if external is not None:
        units = _units_from_words(text, external(text))
        if units is not None:
            return units
    if code == "ja":
        return _split(text, lambda c: is_cjk(c) or _in_ranges(c, _KANA_RANGES))
    return _split(text, is_cjk)


def _split(text: str, single: Callable[[str], bool]) -> list[Unit]:
    """Whitespace words, cleaned, with every `single` character a unit of its own (the toolkit's
    default split, with positions)."""
    units: list[Unit] = []
    kept: list[str] = []
    kept_start = kept_end = 0
    lead: int | None = None  # where punctuation opening the current whitespace word begins
    at_word_start = True

    def flush() -> None:
        if kept:
            units.append(Unit("".join(kept), kept_start, kept_end))
            kept.clear()

    for i, char in enumerate(text):
        if char.isspace():
            flush()
            lead, at_word_start = None, True
        elif single(char):
            flush()
            units.append(Unit(char, i if lead is None else lead, i + 1))
            lead, at_word_start = None, False
        elif is_kept(char):
            if not kept:
                kept_start = i if lead is None else lead
            kept.append(char)
            kept_end = i + 1
            lead, at_word_start = None, False
        elif at_word_start and lead is None:
            lead = i
    flush()
    return units


def _segmenter(code: str | None) -> Callable[[str], list[str]] | None:
    """The toolkit's word splitter for Japanese (`nagisa`) or Korean (`soynlp`), when installed."""
    if code == "ja":
        try:
            import nagisa  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None
        return lambda text: [str(w) for w in nagisa.tagging(text).words]
    if code == "ko":
        try:
            from soynlp.tokenizer import LTokenizer  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None
        tokenizer = LTokenizer()
        return lambda text: [str(w) for w in tokenizer.tokenize(text)]
    return None


def _units_from_words(text: str, words: Sequence[str]) -> list[Unit] | None:
    """Units from a segmenter's words, found in order in `text`; None if a word is not found there
    (a segmenter that normalises), so the caller falls back to the default split."""
    units: list[Unit] = []
    cursor = 0
    for word in words:
        at = text.find(word, cursor) if word else cursor
        if at < 0:
            return None
        cursor = at + len(word)
        positions = [at + k for k, c in enumerate(word) if is_kept(c)]
        if positions:
            units.append(Unit(clean(word), positions[0], positions[-1] + 1))
    return units


@dataclass(frozen=True)
class Sentence:
    """Consecutive timed words of one segment, cut at sentence punctuation or a long pause."""

    text: str
    """The original text from its first word to its last, as written (spacing and punctuation kept)."""
    start_s: float
    """Its first word's start."""
    end_s: float
    """Its last word's end."""
    words: tuple[Word, ...]


# --- aligned units back to words -----------------------------------------------------------------


def words_from(
    text: str,
    units: Sequence[Unit],
    spans: Sequence[tuple[float, float]],
    *,
    bounds_s: tuple[float, float] | None = None,
) -> list[Word]:
    """One word per unit: its original text (up to the next unit, whitespace stripped; text before
    the first unit goes with the first word) and its span, repaired where the aligner gave it no time
    of its own. `bounds_s` (the clip on the original timeline) keeps repaired times inside it."""
    if len(units) != len(spans):
        raise ValueError(f"{len(units)} units but {len(spans)} spans: one span per unit.")
    if any(b.start < a.start for a, b in pairwise(units)):
        raise ValueError("Units must be in the order they are written.")
    if not units:
        return []
    starts = [0, *(u.start for u in units[1:])]
    ends = [*(u.start for u in units[1:]), len(text)]
    shown = [text[a:b].strip() for a, b in zip(starts, ends, strict=True)]
    weights = [max(1, len(u.text)) for u in units]
    repair = _Repair(spans, weights, bounds_s)
    times = repair.run()
    return [
        Word(shown[i], round(times[i][0], 3), round(times[i][1], 3), repair.changed[i])
        for i in range(len(units))
    ]


class _Repair:
    """Spans made non-overlapping and of positive length, marking the ones it changed."""

    def __init__(
        self, spans: Sequence[tuple[float, float]], weights: list[int], bounds_s: tuple[float, float] | None
    ) -> None:
        self.low, self.high = bounds_s if bounds_s is not None else (0.0, float("inf"))
        self.starts = [min(max(float(s), self.low), self.high) for s, _ in spans]
        self.ends = [min(max(float(e), self.low), self.high) for _, e in spans]
        self.weights = weights
        self.changed = [False] * len(spans)

    def run(self) -> list[tuple[float, float]]:
        self._untangle()
        i = 0
        while i < len(self.starts):
            if self.ends[i] > self.starts[i]:
                i += 1
                continue
            last = i
            while last + 1 < len(self.starts) and self.ends[last + 1] <= self.starts[last + 1]:
                last += 1
            self._spread(i, last)
            i = last + 1
        return list(zip(self.starts, self.ends, strict=True))

    def _untangle(self) -> None:
        """Reversed spans collapse to their middle; an overlap is cut in the middle of the shared part."""
        s, e = self.starts, self.ends
        for i in range(len(s)):
            if e[i] < s[i]:
                s[i] = e[i] = (s[i] + e[i]) / 2
                self.changed[i] = True
            if i and s[i] < e[i - 1]:
                cut = max(s[i - 1], min((s[i] + e[i - 1]) / 2, max(e[i], s[i])))
                e[i - 1], s[i] = cut, cut
                e[i] = max(e[i], cut)
                self.changed[i - 1] = self.changed[i] = True

    def _spread(self, first: int, last: int) -> None:
        """Give the zero-length words `first..last` time: from the empty gap around them when there is
        room, else by sharing the span of their neighbours with them."""
        s, e, n = self.starts, self.ends, len(self.starts)
        count = last - first + 1
        left = e[first - 1] if first > 0 else self.low
        right = s[last + 1] if last + 1 < n else self.high
        half = count * _NOMINAL_WORD_S / 2
        low, high = max(left, s[first] - half), min(right, e[last] + half)
        if high - low < count * _MIN_WORD_S and (first > 0 or last + 1 < n):
            first, last = max(first - 1, 0), min(last + 1, n - 1)
            low, high = min(low, s[first]), max(high, e[last])
        self._split(first, last, low, high)

    def _split(self, first: int, last: int, low: float, high: float) -> None:
        """Share `[low, high]` among words `first..last`, in proportion to their units' lengths."""
        total = sum(self.weights[first : last + 1])
        at, done = low, 0
        for i in range(first, last + 1):
            done += self.weights[i]
            end = low + (high - low) * done / total if i < last else high
            self.starts[i], self.ends[i] = at, end
            self.changed[i] = True
            at = end


# --- words into sentences ------------------------------------------------------------------------


def sentences_from(
    text: str, words: Sequence[Word], *, max_pause_s: float = SENTENCE_PAUSE_S
) -> list[Sentence]:
    """`words` (as `words_from(text, ...)` made them) grouped into sentences, in order: a sentence ends
    at a word that ends one (`ends_sentence`) or before a silence of at least `max_pause_s` between two
    words. Every word is in exactly one sentence."""
    if not max_pause_s > 0:
        raise ValueError(f"max_pause_s must be positive, got {max_pause_s}.")
    places = _places(text, words)
    sentences: list[Sentence] = []
    first = 0
    for i, word in enumerate(words):
        last = i + 1 == len(words)
        if last or ends_sentence(word.text) or words[i + 1].start_s - word.end_s >= max_pause_s - _EPSILON_S:
            group = tuple(words[first : i + 1])
            shown = text[places[first][0] : places[i][1]]
            sentences.append(Sentence(shown, group[0].start_s, group[-1].end_s, group))
            first = i + 1
    return sentences


def ends_sentence(word: str) -> bool:
    """Whether a displayed word ends a sentence: its last character before any closing quote or
    bracket is sentence punctuation, or a full stop that does not end an abbreviation written with
    inner dots (`U.S.`, `e.g.`); `3.5` has no final stop, and `in 2024.` ends one."""
    body = word.rstrip(_CLOSERS)
    if not body:
        return False
    if body[-1] in _SENTENCE_ENDS:
        return True
    if body[-1] != ".":
        return False
    stem = body.rstrip(".")
    return not any(
        stem[k] == "." and stem[k - 1].isalpha() and stem[k + 1].isalpha() for k in range(1, len(stem) - 1)
    )


def _places(text: str, words: Sequence[Word]) -> list[tuple[int, int]]:
    """Where each word is written in `text`, in order."""
    places: list[tuple[int, int]] = []
    cursor = 0
    for word in words:
        at = text.find(word.text, cursor)
        if at < 0:
            raise ValueError(
                f"Word {word.text[:40]!r} is not in the text after offset {cursor}: pass the text the words were made from."
            )
        cursor = at + len(word.text)
        places.append((at, cursor))
    return places
