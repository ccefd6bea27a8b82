"""Streaming inverse text normalization: text is held back until a sentence ends, then normalized.

ITN looks at whole phrases ("twenty five dollars"), so it cannot run on token deltas. Applying it to
each finished sentence keeps streamed deltas equal to the final text, in every API.
"""

from __future__ import annotations

# A sentence ends at these; a Latin full stop only when whitespace follows (3.5 is not an end).
_HARD_ENDS = "。！？!?；;\n"


class SentenceItn:
    """Pass text through, normalized per sentence when enabled; `text` is everything emitted."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._buffer = ""
        self.text = ""

    def push(self, piece: str, language: str | None) -> str:
        if not self.enabled:
            self.text += piece
            return piece
        self._buffer += piece
        end = _last_sentence_end(self._buffer)
        if end == 0:
            return ""
        done, self._buffer = self._buffer[:end], self._buffer[end:]
        return self._emit(done, language)

    def finish(self, language: str | None) -> str:
        if not self.enabled or not self._buffer:
            return ""
        done, self._buffer = self._buffer, ""
        return self._emit(done, language)

    def _emit(self, sentence: str, language: str | None) -> str:
        from qasr.text.itn import apply_itn

        body = sentence.lstrip()
        lead = sentence[: len(sentence) - len(body)]
        out = lead + apply_itn(body, language)
        self.text += out
        return out


def _last_sentence_end(text: str) -> int:
    """Index just past the last complete sentence in `text`, or 0 if none is complete yet."""
    for i in range(len(text) - 1, -1, -1):
        char = text[i]
        if char in _HARD_ENDS:
            return i + 1
        if char == "." and i + 1 < len(text) and text[i + 1].isspace():
            return i + 1
    return 0
