"""Turn the model's generated token ids into clean text, token by token.

The model writes `language English<asr_text>the text<|im_end|>` (docs/DESIGN.md). `TextAssembler` receives
one token at a time and yields only new, complete transcript text:
- the `language X<asr_text>` header is held back and parsed, even when it arrives split over tokens;
- a multi-byte character split across tokens is never emitted half-way;
- leading whitespace is dropped and trailing whitespace held back, so the deltas join to exactly the
  final text;
- undecodable bytes (U+FFFD) and control characters are dropped, tabs and newlines become spaces;
- repetition loops are detected on token ids and end the row (`finish_reason="repetition"`).
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable, Sequence

from qasr.text.languages import code_for_model_name

HEADER_PREFIX = "language "
ASR_TEXT = "<asr_text>"
_MAX_HEADER_CHARS = len(HEADER_PREFIX) + 24  # longest language name is 10 characters; allow slack


def _unwanted(char: str) -> bool:
    return char == "\ufffd" or unicodedata.category(char) == "Cc"


class IncrementalDecoder:
    """Detokenize a growing id list and return only new, complete text (no U+FFFD half characters)."""

    def __init__(self, decode: Callable[[Sequence[int]], str]) -> None:
        self._decode = decode
        self.ids: list[int] = []
        self._prefix = 0  # start of the window decoded for context (byte-level merges look back)
        self._read = 0  # ids before this are already emitted

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        before = self._decode(self.ids[self._prefix : self._read])
        now = self._decode(self.ids[self._prefix :])
        if now.endswith("\ufffd") or len(now) <= len(before):
            return ""  # an incomplete UTF-8 sequence: wait for the next token
        self._prefix, self._read = self._read, len(self.ids)
        return now[len(before) :]


class RepetitionGuard:
    """Detect a loop: the same pattern of 1..`max_pattern` ids repeated until it covers
    `min_span` ids (and at least `min_repeats` times). Real speech does not do that."""

    def __init__(self, max_pattern: int = 16, min_span: int = 32, min_repeats: int = 4) -> None:
        self.max_pattern = max_pattern
        self.min_span = min_span
        self.min_repeats = min_repeats

    def looping(self, ids: Sequence[int]) -> bool:
        n = len(ids)
        for size in range(1, self.max_pattern + 1):
            repeats = max(self.min_repeats, -(-self.min_span // size))
            span = size * repeats
            if span > n:
                continue
            tail = ids[n - span :]
            pattern = tail[-size:]
            if all(tail[i] == pattern[i % size] for i in range(span)):
                return True
        return False


class TextAssembler:
    """Per-request output state: feed token ids, get transcript deltas."""

    def __init__(
        self, decode: Callable[[Sequence[int]], str], forced_language: str | None, prefix: str = ""
    ) -> None:
        """`forced_language`: the code of a language forced in the prompt (no header follows), or None.
        `prefix`: transcript text forced into the prompt after the header; the output continues it."""
        self._decoder = IncrementalDecoder(decode)
        self._guard = RepetitionGuard()
        # With a forced language the prompt already ends in the header; the output is only text.
        self._in_header = forced_language is None
        self._header = ""
        self.language: str | None = forced_language
        self.language_known = forced_language is not None
        stripped = prefix.rstrip()
        self._started = bool(stripped)  # any non-space text emitted yet (a prefix counts)
        self._pending_space = prefix[len(stripped) :]
        self.text = stripped
        self.output_tokens = 0

    def feed(self, token_id: int) -> str:
        """Add one generated id (not an end token); return the new transcript text, maybe ''."""
        self.output_tokens += 1
        piece = self._decoder.add(token_id)
        if not piece:
            return ""
        if self._in_header:
            piece = self._take_header(piece)
        return self._emit(piece)

    def looping(self) -> bool:
        return self._guard.looping(self._decoder.ids)

    def finish(self) -> str:
        """Generation ended: resolve a header that never closed; return any last text."""
        if self._in_header:
            self._in_header = False
            name = (
                self._header[len(HEADER_PREFIX) :].strip() if self._header.startswith(HEADER_PREFIX) else None
            )
            if name is not None and (name.lower() == "none" or code_for_model_name(name)):
                # A header alone: the model heard no speech, or said only the language.
                self.language = code_for_model_name(name)
                self.language_known = True
                return ""
            leftover, self._header = self._header, ""
            self.language_known = True
            return self._emit(leftover)
        self.language_known = True
        return ""

    def _take_header(self, piece: str) -> str:
        """Consume header text; return what follows it (transcript text), or '' while still in it."""
        self._header += piece
        marker = self._header.find(ASR_TEXT)
        if marker >= 0:
            head, rest = self._header[:marker], self._header[marker + len(ASR_TEXT) :]
            self._in_header = False
            self._header = ""
            name = head.strip()[len(HEADER_PREFIX) :].strip() if head.strip().startswith("language") else ""
            # `language None` means no speech: no language, not a language called "None" (docs/DESIGN.md).
            self.language = code_for_model_name(name)
            self.language_known = True
            return rest
        if self._could_be_header(self._header):
            return ""
        # Not a header after all (the model skipped it): everything so far is transcript.
        self._in_header = False
        self.language_known = True
        text, self._header = self._header, ""
        return text

    @staticmethod
    def _could_be_header(text: str) -> bool:
        """True while `text` can still grow into `language <Name><asr_text>`."""
        if len(text) <= len(HEADER_PREFIX):
            return HEADER_PREFIX.startswith(text)
        if not text.startswith(HEADER_PREFIX) or len(text) > _MAX_HEADER_CHARS:
            return False
        name = text[len(HEADER_PREFIX) :]
        for k in range(len(ASR_TEXT) - 1, 0, -1):  # a marker that has only partly arrived
            if name.endswith(ASR_TEXT[:k]):
                name = name[:-k]
                break
        return name == "" or name.isalpha()

    def _emit(self, piece: str) -> str:
        # A transcript is one line of text: tabs and newlines become spaces, other controls go.
        piece = "".join(" " if c in "\t\n\r" else c for c in piece if c in "\t\n\r" or not _unwanted(c))
        if not self._started:
            piece = piece.lstrip()
            if not piece:
                return ""
            self._started = True
        piece = self._pending_space + piece
        stripped = piece.rstrip()
        self._pending_space = piece[len(stripped) :]
        self.text += stripped
        return stripped
