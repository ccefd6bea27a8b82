"""Joining transcript pieces from consecutive segments: a space between words of space-separated
scripts, nothing next to CJK text (Chinese, Japanese and Korean punctuation included)."""

from __future__ import annotations

import unicodedata


def is_cjk(char: str) -> bool:
    """CJK ideographs, kana, hangul, and the full-width punctuation those scripts use."""
    code = ord(char)
    return (
        0x2E80 <= code <= 0x9FFF  # radicals, CJK punctuation, kana, ideographs
        or 0xAC00 <= code <= 0xD7AF  # hangul syllables
        or 0xF900 <= code <= 0xFAFF  # compatibility ideographs
        or 0xFF00 <= code <= 0xFFEF  # full-width forms
        or 0x20000 <= code <= 0x3FFFF  # extension ideographs
    )


def join_texts(left: str, right: str) -> str:
    """`left` + `right` with a space only where two space-separated words would otherwise touch."""
    if not left or not right:
        return left + right
    a, b = left[-1], right[0]
    if a.isspace() or b.isspace() or is_cjk(a) or is_cjk(b):
        return left + right
    if unicodedata.category(b).startswith("P") and b not in "([{¿¡\"'":
        return left + right  # closing punctuation attaches to the previous word
    return left + " " + right
