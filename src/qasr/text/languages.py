"""Language codes (DashScope's ISO-style codes) and the model's language names, mapped both ways.

The model names 30 languages (docs/DESIGN.md); DashScope documents 27 codes for `asr_options.language`.
Three DashScope codes (`uk`, `is`, `no`) name languages the model was not trained to force: they are
accepted as a hint only (the model detects the language itself), as the README documents.
"""

from __future__ import annotations

from qasr.errors import UnknownLanguage, format_value

# Model language name for each code the model can be forced to.
CODE_TO_NAME: dict[str, str] = {
    "zh": "Chinese",
    "en": "English",
    "yue": "Cantonese",
    "ar": "Arabic",
    "de": "German",
    "fr": "French",
    "es": "Spanish",
    "pt": "Portuguese",
    "id": "Indonesian",
    "it": "Italian",
    "ko": "Korean",
    "ru": "Russian",
    "th": "Thai",
    "vi": "Vietnamese",
    "ja": "Japanese",
    "tr": "Turkish",
    "hi": "Hindi",
    "ms": "Malay",
    "nl": "Dutch",
    "sv": "Swedish",
    "da": "Danish",
    "fi": "Finnish",
    "pl": "Polish",
    "cs": "Czech",
    "fil": "Filipino",
    "fa": "Persian",
    "el": "Greek",
    "ro": "Romanian",
    "hu": "Hungarian",
    "mk": "Macedonian",
}
NAME_TO_CODE: dict[str, str] = {name.lower(): code for code, name in CODE_TO_NAME.items()}

# DashScope codes the model cannot be forced to: accepted, passed on as "detect".
HINT_ONLY_CODES: frozenset[str] = frozenset({"uk", "is", "no"})

# Spellings callers use for the same languages.
ALIASES: dict[str, str] = {
    "zh-cn": "zh",
    "zh-hans": "zh",
    "cmn": "zh",
    "zh-hk": "yue",
    "zh-yue": "yue",
    "tl": "fil",
    "nb": "no",
    "nn": "no",
}


def normalize_code(value: str | None) -> str | None:
    """Return the canonical code for a code or a model language name; None for None or empty.

    Raises `UnknownLanguage` for anything else.
    """
    if value is None:
        return None
    key = value.strip().lower().replace("_", "-")
    if not key:
        return None
    key = ALIASES.get(key, key)
    if key in CODE_TO_NAME or key in HINT_ONLY_CODES:
        return key
    if key in NAME_TO_CODE:
        return NAME_TO_CODE[key]
    known = ", ".join(sorted(set(CODE_TO_NAME) | HINT_ONLY_CODES))
    raise UnknownLanguage(f"Unknown language {format_value(value)!r}. Use one of: {known}.", param="language")


def forceable_name(code: str | None) -> str | None:
    """The model language name to force for a canonical code, or None to let the model detect."""
    if code is None:
        return None
    return CODE_TO_NAME.get(code)


def code_for_model_name(name: str | None) -> str | None:
    """The code for a language name the model wrote; None for `None`, empty or unknown names."""
    if not name:
        return None
    return NAME_TO_CODE.get(name.strip().lower())
