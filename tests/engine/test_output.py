"""Token-by-token output assembly with a scripted decoder (pieces of text per id)."""

from __future__ import annotations

import pytest

from qasr.engine.output import IncrementalDecoder, RepetitionGuard, TextAssembler


def _run(pieces: list[str], forced: str | None = None) -> tuple[list[str], TextAssembler]:
    assembler = TextAssembler(lambda ids: "".join(pieces[i] for i in ids), forced)
    out = [assembler.feed(i) for i in range(len(pieces))]
    out.append(assembler.finish())
    return out, assembler


@pytest.mark.parametrize(
    ("pieces", "text", "language"),
    [
        (
            ["lang", "uage", " Eng", "lish", "<asr", "_text>", "Hel", "lo ", "wor", "ld  "],
            "Hello world",
            "en",
        ),
        (["language Chinese<asr_text>", "你好"], "你好", "zh"),
        (["language None<asr_text>"], "", None),
        (["language", " Cantonese"], "", "yue"),  # header alone: no speech, language known
        (["Hi", " the", "re"], "Hi there", None),  # no header at all: all text
        (["lang", "uid flow"], "languid flow", None),  # looked like a header, was not
        (["language Klingon<asr_text>", "x"], "x", None),  # unknown name: no code invented
        (["  ", "\x06", "a\ufffdb", " "], "ab", None),  # whitespace, control chars, U+FFFD dropped
        (["a\tb", "\nc"], "a b c", None),  # one line of text
    ],
)
def test_assembly(pieces: list[str], text: str, language: str | None) -> None:
    out, assembler = _run(pieces)
    assert "".join(out) == assembler.text == text
    assert assembler.language == language


def test_forced_language_skips_header() -> None:
    _, assembler = _run(["language", " English"], forced="en")
    assert assembler.text == "language English" and assembler.language == "en"


def test_multibyte_character_never_split() -> None:
    data = "你好!".encode()
    decoder = IncrementalDecoder(lambda ids: bytes(data[i] for i in ids).decode("utf-8", errors="replace"))
    pieces = [decoder.add(i) for i in range(len(data))]
    assert pieces == ["", "", "你", "", "", "好", "!"]


def test_repetition_guard() -> None:
    guard = RepetitionGuard(max_pattern=16, min_span=32, min_repeats=4)
    assert guard.looping([7] * 32)
    assert not guard.looping([7] * 31)
    assert guard.looping([1, 2, 3] * 11)
    assert not guard.looping(list(range(100)))
    assert not guard.looping([1, 2] * 3)
