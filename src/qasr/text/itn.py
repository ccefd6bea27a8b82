"""Inverse text normalization (ITN): spoken forms in a transcript become written ones, like DashScope's
`enable_itn`. `apply_itn(text, language)` handles Chinese (`zh`, and `yue` for Cantonese) and English
(`en`); any other language, or None, comes back unchanged.

How it works: a finite-state tagger built from WeTextProcessing's grammars (`qasr.text.itn_rules`)
finds the spans that are numbers, dates, times, money and so on, with their values; this module writes
each span in the conventions below and splices it into the text. Everything outside a span is copied
byte for byte, and a span we are unsure about is left as it was said.

Written conventions (what a reader of a Chinese newspaper or of AP-style English expects):

Chinese (GB/T 15835, 出版物上数字用法)
- Counts and measures of 10 or more in Arabic digits: 二十五个 -> 25个, 一百二十三名 -> 123名.
  0-9 standing alone stay in characters (三个人, 第一次, 一心一意); with a metric unit or a
  currency they convert (五公里 -> 5公里, 五块钱 -> 5块钱). Traditional units stay (一斤).
- Round 万/亿 keep the character: 三千万 -> 3000万, 五万元 -> 5万元; others in full: 一万两千 -> 12000.
- Decimals 3.14; fractions 三分之一 -> 1/3; percent 百分之五 -> 5%, 千分之五 -> 5‰; negatives -12.
- Money keeps its unit word: 一百二十三块五 -> 123.5块, 三千万美元 -> 3000万美元.
- Dates keep 年月日/号: 二零二四年三月十五日 -> 2024年3月15日, 两千零一十年七月 -> 2010年7月, 九八年 -> 98年,
  九零后 -> 90后, 六月七号到九号 -> 6月7号到9号, 下个月三号 -> 下个月3号. Lunar dates stay in
  characters: 农历八月十五, 正月十五, 腊月二十三.
- Times: with minutes H:MM (下午三点半 -> 下午3:30, 十二点三十分二十秒 -> 12:30:20); a whole hour
  keeps 点 and needs a time-of-day word (早上八点 -> 早上8点); a bare 八点 stays.
- Digit strings (phone numbers, codes) run together: 幺三八零零一三八零零零 -> 13800138000.
- Approximate numbers and fixed expressions stay: 三四个, 十几, 几百, 十分感谢, 十字路口, 三番五次.
- Scores and votes 以三比二获胜 -> 以3:2获胜; sums 三加五等于八 -> 3+5=8; 负三 -> -3; temperatures keep
  零下: 零下五度 -> 零下5度 (`qasr.text.itn_expressions` says when: 五比三大, 三度夺冠 stay).

English (AP style)
- Cardinals from 10 in digits with thousands commas: twenty-five -> 25, fifty thousand -> 50,000,
  three million -> 3 million; one to nine stay words (three apples, one of the best), except next to
  a converted number in a range (five to ten kilometers -> 5 to 10 kilometers).
- Ordinals from 10th: twenty-first -> 21st; first to ninth stay (second attempt), except in dates.
- Decimals 3.14, 0.5; fractions one third -> 1/3, two and a half -> 2 1/2; percent -> 5%.
- Money: $25.50, $3 million, €10, ¥500; cents alone keep the word (50 cents); "pounds" is read as
  weight (3 pounds), never as £, because the two cannot be told apart.
- Measures keep the unit word: 75 kilograms, 6 feet, 65 miles per hour; "one kilometer" and small
  durations ("three days") stay words.
- Dates: January 5, 2024 (also for "January the fifth"); the 21st of May; years 1998, 2008, the 1980s.
- Scores and votes 102-98, 3-1, 2-0 ("won three nil"); sums 2 + 2 = 4; signs -5, -5 degrees, 5 below
  zero (`qasr.text.itn_expressions` says when: "a two to three hour drive" stays).
- Times: 3:30 PM, 7 AM, 8:15, 10 o'clock.
- Phone numbers 555-123-4567, 867-5309, 1-800-555-1212, +1-415-555-2671; other digit strings run
  together (911, 90210).
- Capitalized number words inside a sentence are names and stay (Ocean's Eleven, Fifth Avenue).

Grammars are compiled once per machine and cached (`$QASR_ITN_CACHE_DIR`, default `~/.cache/qasr/itn`);
loading is lazy and thread-safe, and `warm_up()` does it ahead of the first request.

ITN is optional (issue 11): WeTextProcessing brings pynini, which has wheels only for Linux x86_64.
Nothing here imports them until ITN runs; without them `available()` is False and asking for ITN
raises `ItnUnavailable` (a 400 that says how to install it), while everything else works.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from types import ModuleType
from typing import TYPE_CHECKING, Any

from qasr.errors import ItnUnavailable
from qasr.text.itn_expressions import ZH_KINDS, combine_en, render_zh
from qasr.text.itn_spans import grouped, ordinal, phone, text_after, text_before, text_of, zh_number
from qasr.text.languages import ALIASES, NAME_TO_CODE

if TYPE_CHECKING:
    from qasr.text.itn_rules import Span

logger = logging.getLogger(__name__)

ITN_CACHE_ENV = "QASR_ITN_CACHE_DIR"
GRAMMAR_OF = {"zh": "zh", "yue": "zh", "en": "en"}  # language code -> grammar
UNAVAILABLE_HINT = (
    "ITN (enable_itn) needs WeTextProcessing, which is not installed on this server: "
    "`pip install WeTextProcessing==1.2.0` (wheels for Linux x86_64; elsewhere pynini must be built "
    "from source)."
)


def available() -> bool:
    """Whether ITN can run here: WeTextProcessing and pynini import."""
    try:
        _rules()
    except ItnUnavailable:
        return False
    return True


def require() -> None:
    """Raise `ItnUnavailable` unless ITN can run here; for callers that check before starting work."""
    _rules()


def _rules() -> ModuleType:
    """`qasr.text.itn_rules`, which imports pynini and WeTextProcessing; imported on first use.

    Python does not cache a failed import: without the package each ITN request repeats the lookup (a
    few file checks) and gets the clear error, never a crash.
    """
    try:
        return importlib.import_module("qasr.text.itn_rules")
    except ImportError as exc:
        raise ItnUnavailable(UNAVAILABLE_HINT, param="enable_itn") from exc


def default_cache_dir() -> Path:
    """`$QASR_ITN_CACHE_DIR`, else `$XDG_CACHE_HOME/qasr/itn`, else `~/.cache/qasr/itn`."""
    if os.environ.get(ITN_CACHE_ENV):
        return Path(os.environ[ITN_CACHE_ENV])
    base = os.environ.get("XDG_CACHE_HOME")
    if not base:
        try:
            base = str(Path.home() / ".cache")
        except RuntimeError:  # no home directory (some containers): compile into a temporary place
            base = tempfile.gettempdir()
    return Path(base) / "qasr" / "itn"


def grammar_for(language: str | None) -> str | None:
    """The grammar ("zh" or "en") for a language code (or model language name) that has ITN, else None."""
    if not language:
        return None
    key = language.strip().lower().replace("_", "-")
    key = ALIASES.get(key, key)
    return GRAMMAR_OF.get(NAME_TO_CODE.get(key, key))


class InverseNormalizer:
    """Loads each grammar once, on first use, and applies ITN. Safe to share across threads."""

    def __init__(self, cache_dir: Path | None = None) -> None:
        self.cache_dir = cache_dir if cache_dir is not None else default_cache_dir()
        self._taggers: dict[str, Any] = {}
        self._load_lock = threading.Lock()
        # pynini does not document its FSTs as thread-safe; tagging a sentence takes about a millisecond.
        self._tag_lock = threading.Lock()

    def apply(self, text: str, language: str | None) -> str:
        """`text` with spoken forms written out; unchanged for languages without ITN.

        Raises `ItnUnavailable` for a language with ITN when WeTextProcessing is not installed.
        """
        grammar = grammar_for(language)
        if grammar is None or not text.strip() or _has_surrogates(text):
            return text
        fst = self._tagger(grammar)
        itn_rules = _rules()

        try:
            folded = _fold(text, grammar)
            spans: list[Span] = []
            for offset, piece in _pieces(folded, grammar):
                with self._tag_lock:
                    found = itn_rules.tag(fst, piece)
                spans += [replace(span, start=span.start + offset, end=span.end + offset) for span in found]
            return _splice(text, spans, _render_zh if grammar == "zh" else _render_en)
        except Exception:  # ITN only polishes a transcript: a bug here must not lose the transcript
            logger.exception("ITN failed for %s; returning the text unchanged", language)
            return text

    def warm_up(self, languages: tuple[str, ...] = ("zh", "en")) -> dict[str, float]:
        """Load the grammars for `languages` now; returns the seconds each took (0.0 if already loaded).

        Raises `ItnUnavailable` without WeTextProcessing: check `available()` first to skip quietly.
        """
        grammars = sorted({g for g in map(grammar_for, languages) if g is not None})
        return {grammar: self._load(grammar) for grammar in grammars}

    def _tagger(self, grammar: str) -> Any:
        if grammar not in self._taggers:
            self._load(grammar)
        return self._taggers[grammar]

    def _load(self, grammar: str) -> float:
        with self._load_lock:
            if grammar in self._taggers:
                return 0.0
            started = time.perf_counter()
            self._taggers[grammar] = _rules().load_tagger(grammar, self.cache_dir)
            seconds = time.perf_counter() - started
            logger.info("ITN grammar %s ready in %.2f s (cache %s)", grammar, seconds, self.cache_dir)
            return seconds


_default: InverseNormalizer | None = None
_default_lock = threading.Lock()


def default_normalizer() -> InverseNormalizer:
    """The process-wide normalizer behind `apply_itn` and `warm_up`, created on first use."""
    global _default
    with _default_lock:
        if _default is None:
            _default = InverseNormalizer()
        return _default


def apply_itn(text: str, language: str | None) -> str:
    """Inverse text normalization of one transcript; see the module docstring for the conventions."""
    if grammar_for(language) is None:
        return text
    return default_normalizer().apply(text, language)


def warm_up(languages: tuple[str, ...] = ("zh", "en")) -> dict[str, float]:
    """Load (compiling on the first run on a machine) the grammars for `languages` ahead of time."""
    return default_normalizer().warm_up(languages)


# Tagging cost grows faster than the text, so long transcripts are tagged a sentence (zh: a clause) at
# a time. No span crosses these breaks: numbers never contain them and "a.m." keeps its own full stop.
_BREAKS = {"zh": re.compile(r"(?<=[。！？；，、!?;\n])"), "en": re.compile(r"(?<=[.!?;])(?=\s)|(?<=\n)")}

# Writes each span, or None to leave it as said; may narrow a span to the part it rewrites.
Render = Callable[[bytes, list["Span"]], list[tuple["Span", "str | None"]]]


def _fold(text: str, grammar: str) -> str:
    """What the tagger reads: same UTF-8 length as `text`, so span offsets address the original.

    NUL is OpenFst's epsilon label and cannot be matched; English is lower-cased and unhyphenated.
    """
    text = text.replace("\0", "\1")
    return text if grammar == "zh" else _fold_english(text)


def _pieces(text: str, grammar: str) -> list[tuple[int, str]]:
    """`text` cut at sentence breaks, each piece with its UTF-8 byte offset."""
    pieces, offset = [], 0
    for piece in _BREAKS[grammar].split(text):
        if piece.strip():
            pieces.append((offset, piece))
        offset += len(piece.encode())
    return pieces


def _splice(text: str, spans: list[Span], render: Render) -> str:
    """`text` with each span that `render` writes replaced; the rest copied byte for byte."""
    source = text.encode()
    out, cursor = bytearray(), 0
    for span, written in render(source, spans):
        if written is not None and span.start >= cursor:
            out += source[cursor : span.start] + written.encode()
            cursor = span.end
    return (out + source[cursor:]).decode()


def _has_surrogates(text: str) -> bool:
    """Lone surrogates (possible from JSON escapes) have no UTF-8 form: such text is left alone."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return True
    return False


# --- Chinese ------------------------------------------------------------------------------------

ZH_NUMBERED = set("楼线院床房车门窗台位")  # 三号楼: 号 numbers a thing, it is not a day
ZH_COUNTED = set("斤两个只件张条瓶包盒袋杯碗份本支罐箱根把双对串棵颗粒")  # a digit before these counts them


def _zh_clock(hour: str, minute: str | None, second: str | None, hour_word: str) -> str:
    if minute is None:
        return f"{hour}{hour_word}"
    return f"{hour}:{int(minute):02d}" + (f":{int(second):02d}" if second else "")


def _render_zh(source: bytes, spans: list[Span]) -> list[tuple[Span, str | None]]:
    written = []
    for span in spans:
        if "j" in span.fields and text_after(source, span, 3)[:1] in ZH_COUNTED:
            # 一百块一斤: the 一 after 块 counts the 斤, it is not 1 毛; rewrite only up to 块.
            tail = text_of(source, span).split(span.fields["u"], 1)[1]
            fields = {key: value for key, value in span.fields.items() if key != "j"}
            span = replace(span, fields=fields, end=span.end - len(tail.encode()))
        if span.name in ZH_KINDS:
            written.append((span, render_zh(source, span)))
        elif "mp" in span.fields and text_after(source, span, 3)[:1] in ZH_NUMBERED:
            written.append((span, None))  # 下个月三号楼: building 3, not the 3rd
        else:
            written.append((span, _render_zh_span(span.name, span.fields, text_of(source, span))))
    return written


def _render_zh_span(kind: str, f: dict[str, str], said: str) -> str | None:
    if kind == "digits":
        return f["v"]  # a code or phone number: never 10万
    if kind == "cardinal":
        return zh_number(f["v"])
    if kind in ("measure", "money"):
        return zh_number(f["v"]) + (f".{f['j']}" if "j" in f else "") + f["u"]
    if kind == "range":
        return zh_number(f["v0"]) + f["to"] + zh_number(f["v"]) + f["u"]
    if kind == "percent":
        upper = f"{f['to']}{f['v2']}{f['p']}" if "v2" in f else ""
        return f"{f.get('s', '')}{f['v']}{f['p']}{upper}"
    if kind == "fraction":
        return f"{f['sign']}{f['numerator']}/{f['denominator']}"
    if kind == "generation":
        return f"{f['g']}后"
    if kind == "date":
        year = f"{f['y']}年" if "y" in f else ""
        month = f"{f['m']}月" if "m" in f else ""
        until = f"{f['to']}{f['d2']}{f['ds2']}" if "d2" in f else ""  # 6月7号到9号
        return f.get("mp", "") + year + month + f.get("d", "") + f.get("ds", "") + until
    if kind == "time":
        hour_word = "點" if "點" in said else "点"
        clock = _zh_clock(f["h"], f.get("min"), f.get("sec"), hour_word) + f.get("whole", "")
        until = f"{f['to']}{_zh_clock(f['h2'], f.get('m2'), None, hour_word)}" if "h2" in f else ""
        return f.get("noon", "") + clock + until
    return None  # "keep": fixed expressions and approximate numbers stay as said


# --- English ------------------------------------------------------------------------------------

_ONES = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
_TEENS = [
    "ten",
    "eleven",
    "twelve",
    "thirteen",
    "fourteen",
    "fifteen",
    "sixteen",
    "seventeen",
    "eighteen",
    "nineteen",
]
_TENS = ["twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_FIRST_TO_NINTH = ["first", "second", "third", "fourth", "fifth", "sixth", "seventh", "eighth", "ninth"]
_MAGNITUDES = {"hundred", "thousand", "million", "billion", "trillion"}
_NUMBER_WORDS = {"zero", "oh", "half", "halves", "quarter", "quarters", "hundredth", "thousandth"}
_NUMBER_WORDS |= {*_ONES, *_TEENS, *_TENS, *_FIRST_TO_NINTH, *_MAGNITUDES}
_NUMBER_WORDS |= {"twelfth"} | {w + "th" for w in _TEENS if w != "twelve"} | {w[:-1] + "ieth" for w in _TENS}
_NUMBER_WORDS |= {w + "s" for w in _NUMBER_WORDS if w.endswith("th")}
_HYPHENATED = re.compile(rf"\b(?:{'|'.join(_TENS)})-(?:{'|'.join(_ONES + _FIRST_TO_NINTH)})\b", re.IGNORECASE)
_SCORE_HYPHEN = re.compile(rf"\b(?:zero|{'|'.join(_ONES + _TEENS + _TENS)})-(?:nil|all)\b", re.IGNORECASE)
_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
_TIME_UNITS = {"second", "minute", "hour", "day", "week", "month", "year"}
_TIME_UNITS |= {unit + "s" for unit in _TIME_UNITS}
_PERIOD_CUES = {"after", "first", "last", "past", "next", "through", "consecutive", "straight"}
_YEAR_CUES = {"in", "of", "year", "since", "until", "till", "by", "from", "to", "before", "after", "around"}
_SENTENCE_START = re.compile(r"(?:\A\s*|[.!?]\s+|[\"“(]\s*)\Z")


def _fold_english(text: str) -> str:
    """What the English tagger reads: ASCII lower case, "twenty-five" as "twenty five", "two-nil" as
    "two nil".

    Both keep every byte offset, so spans found in the folded text address the original.
    """
    return _SCORE_HYPHEN.sub(_unhyphenate, _HYPHENATED.sub(_unhyphenate, text.translate(_LOWER)))


def _unhyphenate(match: re.Match[str]) -> str:
    return match.group(0).replace("-", " ")


def _words_around(source: bytes, span: Span) -> tuple[list[str], list[str]]:
    return text_before(source, span).lower().split(), text_after(source, span).lower().split()


def _is_name(source: bytes, span: Span) -> bool:
    """A capitalized number word inside a sentence is a name (Ocean's Eleven, Formula One)."""
    at_start = _SENTENCE_START.search(text_before(source, span)) is not None
    for index, word in enumerate(text_of(source, span).split()):
        if word[:1].isupper() and word.strip(".,").lower() in _NUMBER_WORDS and not (index == 0 and at_start):
            return True
    return False


def _is_fragment(source: bytes, span: Span) -> bool:
    """Part of a number the grammar did not read whole ("a hundred and twenty"): leave it as said."""
    if span.name == "signed":
        return False  # "one hundred minus five": a sign never continues the number before it
    before, after = _words_around(source, span)
    if _MAGNITUDES & set(before[-1:] + after[:1]):
        return True
    return before[-1:] == ["and"] and bool(_MAGNITUDES & set(before[-2:-1]))


def _render_en(source: bytes, spans: list[Span]) -> list[tuple[Span, str | None]]:
    usable = [not (_is_name(source, span) or _is_fragment(source, span)) for span in spans]
    written = [_render_en_span(source, span) if ok else None for span, ok in zip(spans, usable, strict=True)]
    _join_ranges(source, spans, written)
    return combine_en(source, spans, written, usable)  # scores, sums and signs across spans


def _render_en_span(source: bytes, span: Span) -> str | None:
    f, kind, said = span.fields, span.name, text_of(source, span)
    if kind == "cardinal":
        return grouped(f["v"]) if abs(int(f["v"])) >= 10 else None
    if kind == "signed":  # "minus five": the sign makes even a small number a number
        return grouped(f["v"])
    if kind == "ordinal":
        return ordinal(int(f["v"])) if int(f["v"]) >= 10 else None
    if kind == "decimal":
        number = grouped(f.get("integer_part", "0")) + (
            f".{f['fractional_part']}" if "fractional_part" in f else ""
        )
        return ("-" if f.get("negative") else "") + number + (f" {f['quantity']}" if "quantity" in f else "")
    if kind == "fraction":
        before, _ = _words_around(source, span)
        if said.lower().endswith(("quarters", "halves")) and before[-1:] and before[-1] in _PERIOD_CUES:
            return None  # "after three quarters", "the last two quarters": periods of a game or a year
        return (f"{f['i']} " if "i" in f else "") + f"{f['n']}/{f['d']}"
    if kind == "digits":
        return phone(f["v"])
    if kind == "measure":
        return _render_measure(f["v"], f["u"], said)
    if kind == "money":
        return _render_money(f, said)
    if kind == "time":
        return _render_time(source, span, said)
    if kind == "date":
        return _render_date(source, span, said)
    return None


def _render_measure(value: str, unit: str, said: str) -> str | None:
    if unit in ("percent", "per cent"):
        return f"{grouped(value)}%"
    small = value.lstrip("-").isdigit() and abs(int(value)) < 10
    if value in ("1", "-1") or (small and unit in _TIME_UNITS):
        return None  # "one kilometer", "three days" read better as words
    return f"{grouped(value)} {' '.join(said.split()[-len(unit.split()) :])}"


def _render_money(f: dict[str, str], said: str) -> str | None:
    if "value" not in f:  # cents alone: "50 cents"
        return f"{int(f['decimal'])} {said.split()[-1]}"
    if f["currency"] == "£":  # "three pounds of apples" is a weight more often than a price
        return None if f["value"] == "1" or "decimal" in f else f"{grouped(f['value'])} {said.split()[-1]}"
    cents = f".{f['decimal']}" if "decimal" in f else ""
    quantity = f" {f['quantity']}" if "quantity" in f else ""
    return f"{f['currency']}{grouped(f['value'])}{cents}{quantity}"


def _render_time(source: bytes, span: Span, said: str) -> str | None:
    f = span.fields
    if re.search(r"\b(?:past|to|till)\b", said.lower()):
        return None  # "a quarter past three", "ten to five" read well as they are
    hour, minute = int(f["hour"]), f.get("minute", "00")
    noon = {"a.m.": "AM", "p.m.": "PM"}.get(f.get("noon", ""), "")
    if minute == "00" and noon:
        clock = f"{hour} {noon}"
    elif minute == "00" and "clock" in said.lower():
        clock = f"{hour} o'clock"
    else:
        clock = f"{hour}:{minute}" + (f" {noon}" if noon else "")
    if said.endswith(".") and re.match(r"\s*(?:\Z|[A-Z])", text_after(source, span)):
        clock += "."  # "seven a.m." ended the sentence: keep its full stop
    return clock


def _render_date(source: bytes, span: Span, said: str) -> str | None:
    f = span.fields
    if "month" not in f:
        return None if "day" in f else _render_year(source, span, f.get("year", ""))  # "first quarter of"
    month = next((w for w in said.split() if w.lower().strip(",") == f["month"]), "")
    if not month[:1].isupper() or not f.get("day", "").isdigit():
        return None  # lower-case "march", "may" are verbs
    if month == "May" and said.split()[1:2] == ["the"] and _SENTENCE_START.search(text_before(source, span)):
        return None  # "May the fourth be with you"
    day = int(f["day"])
    year = f", {f['year']}" if "year" in f else ""
    if said.split()[0] == month:
        return f"{month} {day}{year}"
    return f"{'the ' if said.lower().startswith('the ') else ''}{ordinal(day)} of {month}{year}"


def _render_year(source: bytes, span: Span, year: str) -> str | None:
    if not year[:4].isdigit():
        return None
    said = text_of(source, span).lower()
    counted = year.isdigit() and ("hundred" in said or ("thousand" in said and int(year) <= 2000))
    before, _ = _words_around(source, span)
    if counted and not (before and before[-1] in _YEAR_CUES):
        return grouped(year)  # "two thousand people", "fourteen hundred students" are counts
    return year


def _join_ranges(source: bytes, spans: list[Span], written: list[str | None]) -> None:
    """Both ends of a range take the same form: "five to ten kilometers" -> "5 to 10 kilometers"."""
    for i, (left, right) in enumerate(itertools.pairwise(spans)):
        between = source[left.end : right.start].decode()
        if left.name != "cardinal" or written[i + 1] is None or not text_of(source, left).islower():
            continue
        if between not in (" to ", " and ", " through ", " or "):
            continue
        value, unit = grouped(left.fields["v"]), right.fields.get("u", "")
        if right.name == "measure" and unit in ("percent", "per cent"):
            written[i] = f"{value}%"
        elif right.name == "money" and "value" in right.fields and right.fields["currency"] != "£":
            written[i] = f"{right.fields['currency']}{value}"
        elif right.name in ("measure", "money", "cardinal"):
            written[i] = value
