"""What the ITN renderers (`qasr.text.itn`, `qasr.text.itn_expressions`) share: the text of a tagged span
and the text around it, and how a number is written in each language. Pure Python: no pynini here."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from qasr.text.itn_rules import Span

_ZH_CLAUSE_END = re.compile(r"[。！？；，、：!?;,:\n]")
_EN_CLAUSE_END = re.compile(r"[.!?;:,\n]")


def text_of(source: bytes, span: Span) -> str:
    """The text `span` covers, as said."""
    return source[span.start : span.end].decode()


def text_before(source: bytes, span: Span, size: int = 120) -> str:
    """The text just before `span` (enough for a few words of context)."""
    return source[max(0, span.start - size) : span.start].decode(errors="ignore")


def text_after(source: bytes, span: Span, size: int = 120) -> str:
    return source[span.end : span.end + size].decode(errors="ignore")


def clause_before(source: bytes, span: Span, grammar: str) -> str:
    """The text between the start of `span`'s clause (after the last comma or full stop) and `span`."""
    before = text_before(source, span)
    ends = list((_ZH_CLAUSE_END if grammar == "zh" else _EN_CLAUSE_END).finditer(before))
    return before[ends[-1].end() :] if ends else before


def grouped(value: str) -> str:
    """English: thousands commas for integers from 1000 (2,500; 50,000), a zero before a bare point (0.5)."""
    sign, digits = ("-", value[1:]) if value.startswith("-") else ("", value)
    if digits.startswith("."):
        return f"{sign}0{digits}"
    return f"{sign}{int(digits):,}" if digits.isdigit() and len(digits) >= 4 else value


def ordinal(value: int) -> str:
    """English: 21 -> 21st, 12 -> 12th."""
    suffix = "th" if 10 <= value % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(value % 10, "th")
    return f"{value}{suffix}"


def phone(digits: str) -> str:
    """English: North American grouping for phone-length digit strings (7, 10, 1+10, +CC+10 digits)."""
    plus, body = ("+", digits[1:]) if digits.startswith("+") else ("", digits)
    if plus and len(body) > 10:
        return f"+{body[:-10]}-{phone(body[-10:])}"
    if len(body) == 7:
        return f"{body[:3]}-{body[3:]}"
    if len(body) == 10:
        return f"{body[:3]}-{body[3:6]}-{body[6:]}"
    if len(body) == 11 and body.startswith("1"):
        return f"1-{phone(body[1:])}"
    return plus + body


def zh_number(value: str) -> str:
    """Chinese: round 万/亿 keep their character (50000 -> 5万); other numbers are written in full."""
    match = re.fullmatch(r"(-?)(\d{5,})", value)
    if match is None:
        return value
    number = int(match.group(2))
    for unit, size in (("亿", 10**8), ("万", 10**4)):
        if number % size == 0:
            return f"{match.group(1)}{number // size}{unit}"
    return value
