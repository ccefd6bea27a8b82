"""Language codes and model names, both ways."""

from __future__ import annotations

import pytest

from qasr.errors import UnknownLanguage
from qasr.text.languages import (
    CODE_TO_NAME,
    HINT_ONLY_CODES,
    code_for_model_name,
    forceable_name,
    normalize_code,
)

DASHSCOPE_CODES = [
    "zh",
    "yue",
    "en",
    "ja",
    "de",
    "ko",
    "ru",
    "fr",
    "pt",
    "ar",
    "it",
    "es",
    "hi",
    "id",
    "th",
    "tr",
    "uk",
    "vi",
    "cs",
    "da",
    "fil",
    "fi",
    "is",
    "ms",
    "no",
    "pl",
    "sv",
]


def test_every_dashscope_code_is_accepted() -> None:
    for code in DASHSCOPE_CODES:
        assert normalize_code(code) == code


def test_the_model_names_thirty_languages_both_ways() -> None:
    assert len(CODE_TO_NAME) == 30
    for code, name in CODE_TO_NAME.items():
        assert forceable_name(code) == name
        assert code_for_model_name(name) == code
        assert normalize_code(name.upper()) == code


def test_hint_only_codes_are_not_forced() -> None:
    assert {"uk", "is", "no"} == HINT_ONLY_CODES
    assert all(forceable_name(code) is None for code in HINT_ONLY_CODES)


@pytest.mark.parametrize(
    ("given", "code"),
    [
        ("zh-CN", "zh"),
        ("ZH_hans", "zh"),
        ("cmn", "zh"),
        ("tl", "fil"),
        (" en ", "en"),
        ("", None),
        (None, None),
    ],
)
def test_aliases_and_blanks(given: str | None, code: str | None) -> None:
    assert normalize_code(given) == code


def test_unknown_is_a_clear_error() -> None:
    with pytest.raises(UnknownLanguage, match=r"Unknown language 'xx'\. Use one of: ar, cs"):
        normalize_code("xx")


def test_model_none_is_no_language() -> None:
    assert code_for_model_name("None") is None and code_for_model_name("Klingon") is None
