"""Transcripts as aligner units and aligned units back as words (`qasr.text.words`)."""

from __future__ import annotations

import random
import sys
import types
from itertools import pairwise

import pytest

from qasr.text.words import (
    SENTENCE_PAUSE_S,
    Unit,
    Word,
    aligner_supports,
    ends_sentence,
    sentences_from,
    units_for,
    words_from,
)

_TEXTS = [
    ("Hello, world! It's 3.5% of e-mail.", "en"),
    ("你好，世界。今天天气很好！", "zh"),
    ("¿Qué tal? Muy bien, gracias.", "es"),
    ('"Hi," she said — (quietly) 1,000 times…', "en"),
    ("我用iPhone 15拍的，don’t worry.", "zh"),
    ("Привет, мир! Ça va très bien.", "ru"),
    ("  leading and trailing spaces  ", "en"),
    ("今日は、いい天気です。", "ja"),
    ("안녕하세요, 세계!", "ko"),
    ("emoji 🎉 and symbols © ® between", "en"),
]


def _spaced(n: int) -> list[tuple[float, float]]:
    return [(0.5 * i, 0.5 * i + 0.3) for i in range(n)]


def _words(text: str, language: str | None = "en") -> list[Word]:
    units = units_for(text, language)
    return words_from(text, units, _spaced(len(units)))


def test_units_are_cleaned_as_the_aligner_sees_them() -> None:
    units = units_for("Hello, world! It's 3.5% of e-mail, don’t 1,000.", "en")
    assert [u.text for u in units] == ["Hello", "world", "It's", "35", "of", "email", "dont", "1000"]


def test_units_keep_their_place_in_the_original_text() -> None:
    text = "Hello, world"
    assert units_for(text, "en") == [Unit("Hello", 0, 5), Unit("world", 7, 12)]
    assert units_for("你好，世界", "zh") == [
        Unit("你", 0, 1),
        Unit("好", 1, 2),
        Unit("世", 3, 4),
        Unit("界", 4, 5),
    ]


@pytest.mark.parametrize(("text", "language"), [t for t in _TEXTS if t[1] not in ("ja", "ko")])
def test_units_equal_the_transformers_split(text: str, language: str) -> None:
    from transformers import Qwen3ASRProcessor

    # The split uses no processor state; the unbound call avoids building a tokenizer.
    expected = Qwen3ASRProcessor.split_words_for_alignment(None, text, None)  # type: ignore[arg-type]
    assert [u.text for u in units_for(text, language)] == expected


def test_punctuation_stays_attached() -> None:
    assert [w.text for w in _words("Hello, world! It's 3.5% of e-mail.")] == [
        "Hello,",
        "world!",
        "It's",
        "3.5%",
        "of",
        "e-mail.",
    ]
    assert [w.text for w in _words("¿Qué tal? Muy bien.", "es")] == ["¿Qué", "tal?", "Muy", "bien."]
    assert [w.text for w in _words('"Hi," she said — (quietly).')] == ['"Hi,"', "she", "said —", "(quietly)."]


def test_chinese_is_one_unit_per_character() -> None:
    words = _words("你好，世界。", "zh")
    assert [w.text for w in words] == ["你", "好，", "世", "界。"]


def test_mixed_scripts() -> None:
    assert [w.text for w in _words("我用iPhone 15拍的。", "zh")] == ["我", "用", "iPhone", "15", "拍", "的。"]


def test_japanese_without_nagisa_is_one_unit_per_character() -> None:
    units = units_for("今日は、いいラーメン。", "ja")
    assert [u.text for u in units] == ["今", "日", "は", "い", "い", "ラ", "ー", "メ", "ン"]


def test_korean_without_soynlp_is_whitespace_words() -> None:
    units = units_for("안녕하세요, 세계!", "ko")
    assert [u.text for u in units] == ["안녕하세요", "세계"]


def test_japanese_uses_nagisa_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("nagisa")
    words = ["今日", "は", "、", "いい", "天気", "です", "。"]
    fake.__dict__["tagging"] = lambda text: types.SimpleNamespace(words=words)
    monkeypatch.setitem(sys.modules, "nagisa", fake)
    text = "今日は、いい天気です。"
    units = units_for(text, "ja")
    assert [u.text for u in units] == ["今日", "は", "いい", "天気", "です"]
    assert [w.text for w in words_from(text, units, _spaced(len(units)))] == [
        "今日",
        "は、",
        "いい",
        "天気",
        "です。",
    ]


def test_a_segmenter_that_rewrites_text_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    fake = types.ModuleType("nagisa")
    fake.__dict__["tagging"] = lambda text: types.SimpleNamespace(words=["きょう"])
    monkeypatch.setitem(sys.modules, "nagisa", fake)
    assert [u.text for u in units_for("今日", "ja")] == ["今", "日"]


@pytest.mark.parametrize(("text", "language"), _TEXTS)
def test_words_concatenate_back_to_the_transcript(text: str, language: str) -> None:
    units = units_for(text, language)
    words = words_from(text, units, _spaced(len(units)))
    assert len(words) == len(units) > 0
    assert "".join("".join(w.text.split()) for w in words) == "".join(text.split())
    assert all(w.text and w.text == w.text.strip() for w in words)


def test_no_units_no_words() -> None:
    assert units_for("... — !!", "en") == []
    assert words_from("... — !!", [], []) == []


def test_span_count_must_match() -> None:
    with pytest.raises(ValueError, match="one span per unit"):
        words_from("a b", units_for("a b"), [(0.0, 1.0)])


def test_aligner_languages() -> None:
    for code in ("zh", "en", "yue", "fr", "de", "it", "ja", "ko", "pt", "ru", "es", "English", "zh-cn"):
        assert aligner_supports(code), code
    for other in ("ar", "th", "vi", "hi", "uk", None, "", "klingon"):
        assert not aligner_supports(other), other


# --- repair ---------------------------------------------------------------------------------------


def test_good_spans_are_kept() -> None:
    words = words_from("a b", units_for("a b"), [(0.0, 0.4), (0.5, 0.9)])
    assert [(w.start_s, w.end_s, w.repaired) for w in words] == [(0.0, 0.4, False), (0.5, 0.9, False)]


def test_zero_length_word_takes_a_share_of_the_gap() -> None:
    words = words_from("a b c", units_for("a b c"), [(0.0, 0.5), (0.8, 0.8), (1.2, 1.6)])
    assert [w.repaired for w in words] == [False, True, False]
    assert (words[0].start_s, words[0].end_s, words[2].start_s, words[2].end_s) == (0.0, 0.5, 1.2, 1.6)
    assert 0.5 <= words[1].start_s < 0.8 < words[1].end_s <= 1.2


def test_zero_length_word_without_room_shares_its_neighbours_span() -> None:
    words = words_from("aa b cc", units_for("aa b cc"), [(0.0, 1.0), (1.0, 1.0), (1.0, 2.0)])
    assert all(w.repaired for w in words)
    assert words[0].start_s == 0.0 and words[-1].end_s == 2.0
    assert all(w.end_s > w.start_s for w in words)
    assert words[0].end_s == words[1].start_s and words[1].end_s == words[2].start_s
    assert words[1].end_s - words[1].start_s < words[0].end_s - words[0].start_s  # shared by length


def test_run_of_equal_times_spreads_inside_the_bounds() -> None:
    text = "one two three four five"
    words = words_from(text, units_for(text), [(3.2, 3.2)] * 5, bounds_s=(3.0, 4.0))
    assert all(w.repaired for w in words)
    assert all(3.0 <= w.start_s < w.end_s <= 4.0 for w in words)
    assert all(a.end_s <= b.start_s for a, b in pairwise(words))


def test_overlap_is_cut_in_the_middle() -> None:
    words = words_from("a b", units_for("a b"), [(0.0, 1.0), (0.6, 1.5)])
    assert [(w.start_s, w.end_s, w.repaired) for w in words] == [(0.0, 0.8, True), (0.8, 1.5, True)]


def test_repaired_words_are_ordered_and_inside_the_bounds() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        n = rng.randint(1, 25)
        text = " ".join("w" * rng.randint(1, 6) for _ in range(n))
        low = rng.choice([0.0, 12.5])
        high = low + rng.choice([0.5, 3.0, 20.0])
        # Aligner-like: 80 ms steps, sorted (as after the monotonic repair), with runs of equal times;
        # one case in four unsorted, for the general path.
        times = [low + 0.08 * rng.randint(0, int((high - low) / 0.08)) for _ in range(2 * n)]
        if seed % 4:
            times.sort()
        spans = [(times[2 * i], times[2 * i + 1]) for i in range(n)]
        words = words_from(text, units_for(text), spans, bounds_s=(low, high))
        assert len(words) == n
        assert all(low <= w.start_s < w.end_s <= high for w in words), seed
        assert all(a.end_s <= b.start_s for a, b in pairwise(words)), seed
        for word, (start, end) in zip(words, spans, strict=True):
            if not word.repaired:
                assert (word.start_s, word.end_s) == (round(start, 3), round(end, 3)), seed


# --- sentences ------------------------------------------------------------------------------------


def test_sentences_end_at_sentence_punctuation_with_the_original_text() -> None:
    text = 'Hello, world! It is 3.5% of the U.S. budget in 2024. "Really?" he said; fine'
    sentences = sentences_from(text, _words(text))
    assert [s.text for s in sentences] == [
        "Hello, world!",
        "It is 3.5% of the U.S. budget in 2024.",
        '"Really?"',
        "he said;",
        "fine",
    ]
    for s in sentences:
        assert (s.start_s, s.end_s) == (s.words[0].start_s, s.words[-1].end_s)


def test_chinese_sentences_keep_their_punctuation_and_no_spaces() -> None:
    text = "你好，世界。今天天气很好！还有呢"
    assert [s.text for s in sentences_from(text, _words(text, "zh"))] == [
        "你好，世界。",
        "今天天气很好！",
        "还有呢",
    ]


def test_a_long_pause_ends_a_sentence() -> None:
    text = "one two three four"
    gap = SENTENCE_PAUSE_S
    spans = [(0.0, 0.4), (0.5, 0.9), (0.9 + gap, 1.3 + gap), (1.3 + gap + gap * 0.99, 2.0 + 2 * gap)]
    words = words_from(text, units_for(text), spans)
    assert [s.text for s in sentences_from(text, words)] == ["one two", "three four"]
    assert [s.text for s in sentences_from(text, words, max_pause_s=0.05)] == ["one", "two", "three", "four"]
    with pytest.raises(ValueError, match="positive"):
        sentences_from(text, words, max_pause_s=0)


@pytest.mark.parametrize(
    ("word", "ends"),
    [
        ("end.", True),
        ("2024.", True),
        ("end...", True),
        ("why?)", True),
        ("好。」", True),
        ("wait…", True),
        ("U.S.", False),
        ("e.g.", False),
        ("3.5", False),
        ("Hello,", False),
        ('"', False),
    ],
)
def test_what_ends_a_sentence(word: str, ends: bool) -> None:
    assert ends_sentence(word) is ends


@pytest.mark.parametrize(("text", "language"), _TEXTS)
def test_sentences_partition_the_words(text: str, language: str) -> None:
    rng = random.Random(text)
    units = units_for(text, language)
    times = sorted(rng.uniform(0, 5) for _ in range(2 * len(units)))
    words = words_from(text, units, [(times[2 * i], times[2 * i + 1]) for i in range(len(units))])
    sentences = sentences_from(text, words, max_pause_s=0.3)
    assert [w for s in sentences for w in s.words] == words
    assert all(s.words and (s.start_s, s.end_s) == (s.words[0].start_s, s.words[-1].end_s) for s in sentences)
    assert "".join("".join(s.text.split()) for s in sentences) == "".join(text.split())


def test_sentences_need_the_text_their_words_came_from() -> None:
    assert sentences_from("", []) == []
    with pytest.raises(ValueError, match="not in the text"):
        sentences_from("other words", _words("Hello there"))
