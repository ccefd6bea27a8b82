"""SRT and WebVTT subtitles from transcript segments, and parsers for both formats.

How a segment becomes cues (the defaults are `CueLimits`):

- Script. A text is CJK when at least half of its non-space characters are East Asian wide (Han, kana,
  Hangul, full-width punctuation). CJK lines hold at most 16 characters, other lines at most 42
  (common broadcast and streaming guidelines). A cue has at most 2 lines.
- Duration. A cue lasts at most 7 s, as far as the text allows: one word is never split to meet it.
- Where a segment's text is split into cues: as few cues as the limits allow, each ending after
  sentence punctuation first, then clause punctuation, then at a space, then between any two CJK
  characters; among equal breaks, the one nearest to an even share of the text. A word is split
  only when it is longer than a line.
  Punctuation stays with the word before it, so no line or cue starts with a comma or a full stop.
- Lines. A cue that needs two lines is split where the lines are most even, preferring a punctuation
  break that is nearly as even.
- Timing. The segment's time is shared among its cues in proportion to their non-space character
  counts, on the millisecond grid: cues follow each other without gaps or overlaps, inside the segment.
- Word times (issue 14). When the forced aligner placed the segment's words, the words are the
  tokens, a cue's duration is measured from its first word's start to its last word's end, and a cue
  runs from its first word's start to its last word's end: it never starts before its first word is
  spoken. The same line and duration limits and break preferences apply.
- Text. Runs of whitespace (newlines included) become one space; a segment with no text gets no cue.
  Times are rounded to milliseconds: SRT `HH:MM:SS,mmm`, WebVTT `HH:MM:SS.mmm` after a `WEBVTT`
  header; hours go past 99 when needed. WebVTT escapes `&`, `<` and `>`; SRT text is written as is.
"""

from __future__ import annotations

import html
import math
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass

from qasr.types import Segment

_MAX_LINES = 2
_EVEN_SHARE_CUES = 3
"""When the rest of a segment's text fits in this many cues, they share it evenly."""
_SENTENCE_END = frozenset(".!?。！？…‼⁇")
_CLAUSE_END = frozenset(",;:，、；：")
_CLOSING = frozenset("\"')]}»”’」』）】〕〉》")
"""Characters that may follow a full stop or comma and still close the sentence or clause."""


@dataclass(frozen=True)
class CueLimits:
    """Size limits of one subtitle cue."""

    latin_line_chars: int = 42
    """Characters per line for text that is not CJK."""
    cjk_line_chars: int = 16
    """Characters per line for CJK text."""
    max_cue_s: float = 7.0
    """Longest cue in seconds, where the text can be split that finely."""


@dataclass(frozen=True)
class _Token:
    """The smallest piece a cue or line break may not cut: a word, or one CJK character."""

    text: str
    space_before: bool
    start_ms: int | None = None
    """With word times: when the word starts; else None."""
    end_ms: int | None = None


def to_srt(segments: Sequence[Segment], limits: CueLimits | None = None) -> str:
    """Render segments as SubRip (`.srt`) text, numbering cues from 1."""
    blocks = [
        f"{n}\n{_timestamp(cue.start_s, ',')} --> {_timestamp(cue.end_s, ',')}\n{cue.text}\n"
        for n, cue in enumerate(to_cues(segments, limits), start=1)
    ]
    return "\n".join(blocks)


def to_vtt(segments: Sequence[Segment], limits: CueLimits | None = None) -> str:
    """Render segments as WebVTT (`.vtt`) text."""
    blocks = [
        f"{_timestamp(cue.start_s, '.')} --> {_timestamp(cue.end_s, '.')}\n{_escape_vtt(cue.text)}\n"
        for cue in to_cues(segments, limits)
    ]
    return "\n".join(["WEBVTT\n", *blocks])


def to_cues(segments: Sequence[Segment], limits: CueLimits | None = None) -> list[Segment]:
    """Split segments, in the order given, into cues (rules in the module docstring).

    A cue is a `Segment` whose text holds one or two lines joined by `\\n`; it keeps the language.
    """
    limits = limits or CueLimits()
    return [cue for segment in segments for cue in _segment_cues(segment, limits)]


def _segment_cues(segment: Segment, limits: CueLimits) -> list[Segment]:
    text = " ".join(segment.text.split())
    if not text:
        return []
    if segment.word_timing == "word" and segment.words:
        return _word_cues(segment, text, limits)
    line_chars = limits.cjk_line_chars if _is_cjk(text) else limits.latin_line_chars
    tokens = _split_long_tokens(_tokenize(text), line_chars)
    # Work on the millisecond grid the formats use, so cue times survive a round trip exactly.
    start_ms = _milliseconds(segment.start_s)
    duration_ms = max(0, _milliseconds(segment.end_s) - start_ms)
    total = _weight(tokens)
    max_cue_ms = limits.max_cue_s * 1000
    # A cue's time is duration * weight / total, so capping its weight caps its duration.
    max_weight = total * max_cue_ms / duration_ms if duration_ms > max_cue_ms else math.inf
    cues = []
    done = 0
    for group in _pack(tokens, line_chars, max_weight):
        cue_start = start_ms + round(duration_ms * done / total)
        done += _weight(group)
        cue_end = start_ms + round(duration_ms * done / total)
        lines = "\n".join(_lines(group, line_chars))
        cues.append(Segment(cue_start / 1000, cue_end / 1000, lines, segment.language))
    return cues


def _word_cues(segment: Segment, text: str, limits: CueLimits) -> list[Segment]:
    """Cues cut at word boundaries, timed by the words' own times."""
    line_chars = limits.cjk_line_chars if _is_cjk(text) else limits.latin_line_chars
    tokens = _split_long_tokens(_word_tokens(segment), line_chars)
    cues = []
    for group in _pack(tokens, line_chars, math.inf, limits.max_cue_s * 1000):
        start = group[0].start_ms or 0
        end = max(start, max(t.end_ms or 0 for t in group))
        lines = "\n".join(_lines(group, line_chars))
        cues.append(Segment(start / 1000, end / 1000, lines, segment.language))
    return cues


def _word_tokens(segment: Segment) -> list[_Token]:
    """One token per aligned word; a space before it where the segment's text has one."""
    tokens: list[_Token] = []
    cursor = 0
    for word in segment.words:
        shown = " ".join(word.text.split())
        if not shown:
            continue
        at = segment.text.find(word.text, cursor)
        space = bool(tokens) and (at < 0 or segment.text[cursor:at].isspace())
        if at >= 0:
            cursor = at + len(word.text)
        start = _milliseconds(word.start_s)
        tokens.append(_Token(shown, space, start, max(start, _milliseconds(word.end_s))))
    return tokens


def parse_srt(text: str) -> list[Segment]:
    """Read SubRip text back into segments (one per cue; cue lines joined by `\\n`)."""
    return [_parse_cue(block, "SRT") for block in _blocks(text)]


def parse_vtt(text: str) -> list[Segment]:
    """Read WebVTT text back into segments (one per cue; cue lines joined by `\\n`, entities decoded).

    Cue settings, identifiers, NOTE, STYLE and REGION blocks are skipped; payload tags are kept as text.
    """
    blocks = _blocks(text)
    if not blocks or not re.match(r"WEBVTT(?:[ \t].*)?$", blocks[0].split("\n", 1)[0]):
        raise ValueError("WebVTT text must start with a WEBVTT line")
    cues = []
    for block in blocks[1:]:
        if block.split(None, 1)[0] in ("NOTE", "STYLE", "REGION"):
            continue
        cue = _parse_cue(block, "WebVTT")
        cues.append(Segment(cue.start_s, cue.end_s, html.unescape(cue.text)))
    return cues


# --- rendering -------------------------------------------------------------------------------------


def _milliseconds(seconds: float) -> int:
    return max(0, round(seconds * 1000))


def _timestamp(seconds: float, decimal: str) -> str:
    hours, rest = divmod(_milliseconds(seconds), 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    secs, millis = divmod(rest, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{millis:03d}"


def _escape_vtt(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


# --- splitting text --------------------------------------------------------------------------------


def _is_wide(char: str) -> bool:
    return unicodedata.east_asian_width(char) in ("W", "F")


def _is_cjk(text: str) -> bool:
    chars = [c for c in text if not c.isspace()]
    return 2 * sum(map(_is_wide, chars)) >= len(chars)


def _is_punctuation(text: str, categories: tuple[str, ...]) -> bool:
    return all(unicodedata.category(c) in categories for c in text)


def _tokenize(text: str) -> list[_Token]:
    """Words, with every wide character a token of its own, and punctuation glued to its neighbour."""
    tokens: list[_Token] = []
    for word in text.split(" "):
        atoms = _atoms(word)
        opening = ""
        for k, atom in enumerate(atoms):
            if tokens and _is_punctuation(atom, ("Pe", "Pf", "Po")) and not opening:
                # Closing punctuation joins the token before it, across a space if it stands alone.
                glue = " " if k == 0 else ""
                tokens[-1] = _Token(tokens[-1].text + glue + atom, tokens[-1].space_before)
            elif _is_punctuation(atom, ("Ps", "Pi")) and k + 1 < len(atoms):
                opening += atom  # opening brackets and quotes join the token after them
            else:
                tokens.append(_Token(opening + atom, space_before=k == 0 and bool(tokens)))
                opening = ""
        if opening:
            tokens.append(_Token(opening, space_before=bool(tokens)))
    return tokens


def _atoms(word: str) -> list[str]:
    """Each wide character alone, runs of other characters together."""
    atoms: list[str] = []
    for char in word:
        if _is_wide(char) or not atoms or _is_wide(atoms[-1][-1]):
            atoms.append(char)
        else:
            atoms[-1] += char
    return atoms


def _split_long_tokens(tokens: list[_Token], line_chars: int) -> list[_Token]:
    """Cut tokens longer than a line into line-sized pieces (URLs, long numbers)."""
    out = []
    for token in tokens:
        for k in range(0, len(token.text), line_chars):
            piece = token.text[k : k + line_chars]
            out.append(_Token(piece, token.space_before and k == 0, token.start_ms, token.end_ms))
    return out


def _join(tokens: Sequence[_Token]) -> str:
    return "".join((" " if t.space_before and k else "") + t.text for k, t in enumerate(tokens))


def _weight(tokens: Sequence[_Token]) -> int:
    """Non-space characters: the share of the segment's time a piece of text gets."""
    return sum(not c.isspace() for t in tokens for c in t.text)


def _break_quality(before: _Token, after: _Token) -> int:
    """How good a place the boundary between two tokens is for a break: 3 best, 0 worst."""
    last = before.text.rstrip("".join(_CLOSING))[-1:]
    if last in _SENTENCE_END:
        return 3
    if last in _CLAUSE_END:
        return 2
    return 1 if after.space_before else 0


def _greedy_line_count(tokens: Sequence[_Token], line_chars: int) -> int:
    """Lines needed when each line takes as many tokens as fit (no layout needs fewer)."""
    lines, width = 1, 0
    for token in tokens:
        extra = len(token.text) + (1 if token.space_before and width else 0)
        if width and width + extra > line_chars:
            lines, width = lines + 1, len(token.text)  # a space at the break disappears
        else:
            width += extra
    return lines


def _fits(tokens: Sequence[_Token], line_chars: int, max_weight: float, max_ms: float) -> bool:
    return (
        _weight(tokens) <= max_weight
        and _span_ms(tokens) <= max_ms
        and _greedy_line_count(tokens, line_chars) <= _MAX_LINES
    )


def _span_ms(tokens: Sequence[_Token]) -> float:
    """From the first word's start to the last word's end; 0 without word times."""
    first, last = tokens[0].start_ms, tokens[-1].end_ms
    return 0 if first is None or last is None else last - first


def _pack(
    tokens: list[_Token], line_chars: int, max_weight: float, max_ms: float = math.inf
) -> list[list[_Token]]:
    """Group tokens into cues as few as the limits allow, each ending at a good break."""
    groups = []
    i = 0
    while i < len(tokens):
        j = _fill(tokens, i, line_chars, max_weight, max_ms)
        if j < len(tokens):
            j = _best_break(tokens, i, j, _even_share(tokens, i, j, line_chars, max_weight, max_ms))
        groups.append(tokens[i:j])
        i = j
    return groups


def _fill(tokens: list[_Token], i: int, line_chars: int, max_weight: float, max_ms: float) -> int:
    """End of the longest run of tokens from `i` that fits in one cue (at least one token)."""
    j = i + 1  # one token always goes in, even if it alone is over the duration budget
    while j < len(tokens) and _fits(tokens[i : j + 1], line_chars, max_weight, max_ms):
        j += 1
    return j


def _even_share(
    tokens: list[_Token], i: int, j: int, line_chars: int, max_weight: float, max_ms: float
) -> float:
    """Characters the cue from token `i` should hold; tokens `[i, j)` are what fits in it.

    Near the end of the text (the rest fits in a few cues) that is an even share of the rest, so the
    last cue is not one orphaned word; further away it is a full cue (looking further is quadratic).
    """
    count, k = 1, j
    while k < len(tokens):
        if count == _EVEN_SHARE_CUES:
            return len(_join(tokens[i:j]))
        k = _fill(tokens, k, line_chars, max_weight, max_ms)
        count += 1
    return len(_join(tokens[i:])) / count


def _best_break(tokens: list[_Token], i: int, j: int, target: float) -> int:
    """Where the cue starting at token `i` ends, given that tokens `[i, j)` fit in it.

    The best kind of break wins, the one nearest to an even share (`target` characters) on ties,
    among those keeping half a share; a sentence end may come earlier (a third of a share), as a short
    cue that ends a sentence reads better than one that starts the next sentence with a dangling word.
    Aiming at an even share, not a full cue, avoids a last cue of one orphaned word.
    """
    best, best_key = j, (-1, -math.inf)
    for k in range(i + 1, j + 1):
        quality = _break_quality(tokens[k - 1], tokens[k])
        length = len(_join(tokens[i:k]))
        eligible = k == j or length >= target / 2 or (quality == 3 and length >= target / 3)
        if eligible and (quality, -abs(length - target)) > best_key:
            best, best_key = k, (quality, -abs(length - target))
    return best


def _lines(tokens: list[_Token], line_chars: int) -> list[str]:
    """One line, or two lines as even as possible (a punctuation break wins if nearly as even)."""
    text = _join(tokens)
    if len(text) <= line_chars or len(tokens) < 2:
        return [text]
    bonus = line_chars // 4
    best: tuple[float, int, int] | None = None
    for k in range(1, len(tokens)):
        first, second = len(_join(tokens[:k])), len(_join(tokens[k:]))
        if first <= line_chars and second <= line_chars:
            quality = _break_quality(tokens[k - 1], tokens[k])
            score = abs(first - second) - (bonus if quality >= 2 else 0)
            best = min(best or (math.inf, 0, 0), (score, -quality, k))
    k = best[2] if best else len(tokens) // 2  # `_pack` guarantees a fitting break exists
    return [_join(tokens[:k]), _join(tokens[k:])]


# --- parsing ---------------------------------------------------------------------------------------

_TIME = r"(?:(\d+):)?(\d{1,2}):(\d{2})[,.](\d{3})"
_TIMING = re.compile(rf"\s*{_TIME}\s*-->\s*{_TIME}(?:\s.*)?$")


def _blocks(text: str) -> list[str]:
    """Blank-line separated blocks, line endings normalised and a byte-order mark dropped."""
    text = text.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    return [block.strip("\n") for block in re.split(r"\n[ \t]*\n", text) if block.strip()]


def _seconds(hours: str | None, minutes: str, seconds: str, millis: str) -> float:
    return (int(hours or 0) * 3_600_000 + int(minutes) * 60_000 + int(seconds) * 1000 + int(millis)) / 1000


def _parse_cue(block: str, kind: str) -> Segment:
    """A cue block: an optional identifier line, the timing line, then the text lines."""
    lines = block.split("\n")
    for k, line in enumerate(lines[:2]):
        match = _TIMING.match(line)
        if match:
            groups = match.groups()
            start, end = _seconds(*groups[:4]), _seconds(*groups[4:])
            return Segment(start, end, "\n".join(lines[k + 1 :]))
    raise ValueError(f"{kind} cue without a valid timing line: {block[:80]!r}")
