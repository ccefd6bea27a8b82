"""Numbers that are read as part of an expression (issue 12, point 6): scores and votes, spoken
arithmetic, signed numbers and temperatures, in Chinese and English.

A digit in these is written even below 10, but only where the words around it say what it is; without
such a cue the numbers are written as `qasr.text.itn` writes any number, so nothing changes where we
are unsure:

- Scores and votes: Chinese 3:2 (比分三比二, 以七比二的票数通过), English AP style 102-98, 3-1, 2-0
  ("won three to one", "voted fifty-two to forty-eight", "two nil", "drew one all"). Chinese needs a
  cue such as 比分, 以, 队 or 获胜; English a verb or noun of games and votes (won, beat, voted, ruled,
  score) in the clause or a result noun after it ("a three to two win"). Without one, "五比三大", "a
  two to three hour drive" and "the odds are three to one" stay as they are.
- Arithmetic: Chinese 3+5=8 (no spaces), English 2 + 2 = 4 (spaces), with + - × ÷ and =. It needs a
  result (等于/是/得 八; equals, is, makes) or a question (等于多少, "what's nine times eight");
  "一加一大于二" and "three times a day" stay. English "is" becomes "=" only when the sum opens its
  clause ("The answer to 2 + 2 is 4").
- Signed numbers: 负三 -> -3, "negative seven" -> -7 ("minus" after a number is subtraction:
  "ten minus three" stays as said). Kept as said: a record (胜三负二, 负三场), floors (负一楼), and
  "plus or minus 3%".
- Temperatures: Chinese keeps 零下/零上 and writes the degrees (零下五度 -> 零下5度, 负五度 -> -5度;
  a bare 五度 only with a word of temperature before it, so 三度夺冠 and 一度 stay); English
  "minus five degrees" -> -5 degrees, "five below zero" -> 5 below zero.
"""

from __future__ import annotations

import re
from dataclasses import replace
from typing import TYPE_CHECKING

from qasr.text.itn_spans import clause_before, grouped, text_after, text_before, text_of, zh_number

if TYPE_CHECKING:
    from qasr.text.itn_rules import Span

ZH_KINDS = {"score", "arithmetic", "signed", "temperature"}
_NEGATIVE_OPERAND = re.compile(r"([-+×÷])(-[\d.]+)")  # 3×(-2)

# --- Chinese ------------------------------------------------------------------------------------

_ZH_SCORE_TOPICS = ("比分", "比赛", "表决", "投票", "票数", "比例", "比率", "战绩")
_ZH_SCORE_BEFORE = re.compile(
    r"(?:以|打成|战成|扳成|踢成|比成|队|双方|比分是|比分为|结果是|结果为|赢|输|胜|战胜|击败)了?\Z"
)
_ZH_SCORE_AFTER = re.compile(
    r"(?:获胜|取胜|胜出|战胜|击败|打败|力克|胜|负|赢|输|战平|打平|平(?![方均时常安])|告负|落败|惜败|险胜|"
    r"大胜|小胜|完胜|横扫|淘汰|晋级|夺冠|卫冕|握手言和|领先|落后|逆转|拿下|结束|收场|通过|否决|"
    r"的比分|的票数|的比例|的优势|的成绩|的战绩)"
)
_ZH_COMPARED = re.compile(r"[大小多少高低长短快慢早晚还更要个号](?![胜负败])")  # 五比三大, but 四比零大胜
_ZH_DIGIT = "零〇一二两三四五六七八九十百千万"
_ZH_RECORD = re.compile(rf"[胜赢平][{_ZH_DIGIT}\d]+[场局盘轮次]?\Z")  # 胜三负二: 负 is a loss
_ZH_NOT_SIGNED = set("场局盘轮次楼层屏号")  # 负三场 (three losses), 负一楼 (basement)
_ZH_TEMPERATURE = ("气温", "温度", "体温", "室温", "水温", "高温", "低温", "零下", "零上", "降温", "升温")
_ZH_TEMPERATURE_END = re.compile(r"(?:[。！？；，、,.!?;]|左右|上下|以下|以上|到|至|了|\Z)")


def render_zh(source: bytes, span: Span) -> str | None:
    """The written form of a Chinese score, sum, signed number or temperature; None keeps it as said."""
    f, said = span.fields, text_of(source, span)
    if span.name == "arithmetic":
        return _NEGATIVE_OPERAND.sub(r"\1(\2)", f["e"]) + (f"={zh_number(f['r'])}" if "r" in f else f["q"])
    if span.name == "score":
        if _zh_is_score(source, span):
            return f"{f['v0']}:{f['v']}"
        left, right = said.split("比", 1)
        return f"{_zh_cardinal(f['v0'], left)}比{_zh_cardinal(f['v'], right)}"
    if span.name == "signed":
        return None if _zh_not_signed(source, span) else zh_number(f["v"])
    # temperature
    value, prefix = f["v"], f.get("s", "")
    if value.startswith("-") and _zh_not_signed(source, span):
        return None  # 正负五度
    after = text_after(source, span, 12)
    context = clause_before(source, span, "zh")
    said_as_temperature = any(cue in context for cue in _ZH_TEMPERATURE) and _ZH_TEMPERATURE_END.match(after)
    if prefix or value.startswith("-") or (said_as_temperature and value != "1"):
        return f"{prefix}{zh_number(value)}{f['u']}"
    written = _zh_cardinal(value, said[: -len(f["u"])])
    return None if written == said[: -len(f["u"])] else written + f["u"]


def _zh_not_signed(source: bytes, span: Span) -> bool:
    """负 that is not a minus sign: a loss (胜三负二, 负三场), a floor (负一楼), or ± (正负五)."""
    before, after = text_before(source, span, 30), text_after(source, span, 3)
    return bool(_ZH_RECORD.search(before)) or before.endswith("正") or after[:1] in _ZH_NOT_SIGNED


def _zh_is_score(source: bytes, span: Span) -> bool:
    if _ZH_COMPARED.match(text_after(source, span, 6)):
        return False  # 五比三大, 三比二个人: 比 compares, or the number counts something
    context = clause_before(source, span, "zh")
    return (
        any(topic in context for topic in _ZH_SCORE_TOPICS)
        or _ZH_SCORE_BEFORE.search(context) is not None
        or _ZH_SCORE_AFTER.match(text_after(source, span, 12)) is not None
    )


def _zh_cardinal(value: str, said: str) -> str:
    """What the cardinal rule writes: a lone digit stays as said (三), anything else in digits."""
    return said if re.fullmatch(r"\d", value) else zh_number(value)


# --- English ------------------------------------------------------------------------------------

_SCORE_CUES = {
    "won", "win", "wins", "winning", "beat", "beats", "beating", "defeated", "defeat", "defeats", "lost",
    "lose", "loses", "losing", "lead", "leads", "led", "leading", "trail", "trails", "trailed", "trailing",
    "score", "scored", "scores", "final", "vote", "votes", "voted", "voting", "passed", "approved",
    "rejected", "confirmed", "ruled", "carried", "tied", "drew", "draw", "drawn", "ended", "finished",
    "edged", "routed", "thrashed", "swept", "victory", "margin", "tally", "ballot",
}  # fmt: skip
_RESULT_NOUNS = {
    "win", "victory", "loss", "defeat", "lead", "decision", "vote", "verdict", "ruling", "margin",
    "majority", "draw", "tie", "result", "score", "scoreline", "final", "upset", "comeback", "rout",
}  # fmt: skip
# Words that may follow a score; any other word ("two to three games") makes it a range.
_AFTER_SCORE = _RESULT_NOUNS | {
    "in", "on", "at", "against", "over", "after", "before", "with", "for", "to", "and", "but", "last",
    "this", "yesterday", "today", "tonight", "thanks", "when", "as", "so", "overall", "again", "then",
    "that", "which", "since", "behind", "ahead", "away", "home",
}  # fmt: skip
# A range word just before ("from eight to eight", "at two to three") makes it a range or a time.
_RANGE_CUES = {"from", "between", "at", "until", "till", "around", "about", "roughly", "some"}
_DETERMINERS = {"a", "an", "the", "this", "that", "another", "any", "only", "no", "every"}
_SCORE_WORD = re.compile(r"(?: to |[ -])(nil|nothing|all)\b")
_OPERATORS = {
    " plus ": "+", " minus ": "-", " times ": "×", " multiplied by ": "×", " divided by ": "÷",
}  # fmt: skip
_EQUALS = {" equals ", " is equal to ", " equal ", " is ", " makes "}
_PROSE_EQUALS = {" is ", " makes "}  # "=" only where the sum opens its clause
_QUESTION = re.compile(r"(?:\bwhat's|\bwhats|\bwhat is|\bhow much is)\s*\Z", re.IGNORECASE)
_OPENERS = {"so", "and", "but", "then", "because", "since", "that", "well", "okay", "ok", "now", "yes", "no"}
_WORD = re.compile(r"[a-z']+")


def combine_en(
    source: bytes, spans: list[Span], written: list[str | None], usable: list[bool]
) -> list[tuple[Span, str | None]]:
    """Spans with their written forms after reading signs, scores and sums across neighbouring spans.

    `written` holds each span's own form (None: as said); `usable` is False for names and fragments,
    which never join an expression.
    """
    written = [_signed(source, spans, i, text) if usable[i] else text for i, text in enumerate(written)]
    out: list[tuple[Span, str | None]] = []
    i, last_score = 0, None
    while i < len(spans):
        merged = _arithmetic(source, spans, usable, i) if usable[i] else None
        if merged is None and usable[i]:
            # "won six to four, six to three": a score right after a score needs no cue of its own
            series = last_score is not None and source[last_score : spans[i].start] in (b", ", b" and ")
            merged = _score(source, spans, usable, i, series)
            last_score = merged[0].end if merged else last_score
        if merged is None:
            out.append((spans[i], written[i]))
            i += 1
        else:
            span, text, i = merged
            out.append((span, text))
    return out


def _signed(source: bytes, spans: list[Span], i: int, written: str | None) -> str | None:
    """A sign after a number is an operator ("ten minus three"); "plus or minus 3%" keeps its words."""
    span, said = spans[i], text_of(source, spans[i]).lower()
    if (
        span.name == "cardinal"
        and written is None
        and re.match(r" (?:degrees )?below zero\b", _after(source, span))
    ):
        return span.fields["v"]  # "five below zero"
    if not said.startswith(("minus ", "negative ")) or written is None:
        return written
    before = text_before(source, span, 20).lower()
    if (
        said.startswith("negative ")
        and said.endswith(("one", "ones"))
        and set(before.split()[-1:]) & _DETERMINERS
    ):
        return None  # "it was a negative one": a pronoun, not -1
    follows_number = i > 0 and spans[i - 1].end == span.start - 1 and _value(spans[i - 1]) is not None
    if follows_number or before.endswith("plus or "):
        unsigned = written.lstrip("-")
        small = span.name == "signed" and unsigned.isdigit() and int(unsigned) < 10
        return None if small else f"{text_of(source, span).split()[0]} {unsigned}"
    return written


def _after(source: bytes, span: Span) -> str:
    return text_after(source, span, 40).lower()


def _value(span: Span) -> str | None:
    """The number a cardinal, signed or plain decimal span stands for, as digits."""
    f = span.fields
    if span.name in ("cardinal", "signed"):
        return f["v"]
    if span.name == "decimal" and "quantity" not in f:
        fraction = f".{f['fractional_part']}" if "fractional_part" in f else ""
        return ("-" if f.get("negative") else "") + f.get("integer_part", "0") + fraction
    return None


def _number(value: str) -> str:
    return grouped(value.replace("-.", "-0.", 1))


def _arithmetic(source: bytes, spans: list[Span], usable: list[bool], i: int) -> tuple[Span, str, int] | None:
    """'two plus two equals four' -> '2 + 2 = 4', read from spans `i`, `i + 1`, ... and the words between."""
    first = _value(spans[i])
    if first is None:
        return None
    parts, j, result = [_number(first)], i, None
    while j + 1 < len(spans) and usable[j + 1] and (value := _value(spans[j + 1])) is not None:
        gap = source[spans[j].end : spans[j + 1].start].decode().lower()
        if gap in _OPERATORS:
            parts += [_OPERATORS[gap], _number(value) if value[0] != "-" else f"({_number(value)})"]
        elif (
            gap == " "
            and value.startswith("-")
            and text_of(source, spans[j + 1]).lower().startswith("minus ")
        ):
            parts += ["-", _number(value[1:])]
        elif gap in _EQUALS and len(parts) > 1:
            result = (gap, _number(value))
        else:
            break
        j += 1
        if result is not None:
            break
    if len(parts) < 3:
        return None
    context = clause_before(source, spans[i], "en")
    if result is None:
        if not _QUESTION.search(context):
            return None
        return replace(spans[i], name="arithmetic", end=spans[j].end), " ".join(parts), j + 1
    gap, value = result
    opens_clause = set(_WORD.findall(context.lower())) <= _OPENERS
    equals = "=" if gap not in _PROSE_EQUALS or opens_clause else gap.strip()  # "The answer to 2 + 2 is 4"
    return replace(spans[i], name="arithmetic", end=spans[j].end), " ".join([*parts, equals, value]), j + 1


def _score(
    source: bytes, spans: list[Span], usable: list[bool], i: int, series: bool
) -> tuple[Span, str, int] | None:
    """'won three to one' -> 'won 3-1', 'two nil' -> '2-0', 'drew one all' -> 'drew 1-1'."""
    left = spans[i]
    if left.name != "cardinal" or not left.fields["v"].isdigit():
        return None
    after = source[left.end :].decode(errors="ignore")
    word = _SCORE_WORD.match(after.lower())
    if word is not None:
        right = {"all": left.fields["v"]}.get(word.group(1), "0")
        end, nxt = left.end + word.end(), i + 1
    elif i + 1 < len(spans) and usable[i + 1] and spans[i + 1].name == "cardinal":
        gap = source[left.end : spans[i + 1].start].decode().lower()
        if gap not in (" to ", "-") or not spans[i + 1].fields["v"].isdigit():
            return None
        right, end, nxt = spans[i + 1].fields["v"], spans[i + 1].end, i + 2
    else:
        return None
    words = _WORD.findall(clause_before(source, left, "en").lower())
    if words[-1:] and words[-1] in _RANGE_CUES:
        return None
    context = set(words)
    following = _WORD.match(source[end:].decode(errors="ignore").lower().lstrip(" "))
    next_word = following.group(0) if following and source[end : end + 1] == b" " else None
    if next_word is not None and next_word not in _AFTER_SCORE:
        return None
    if not (
        series or context & _SCORE_CUES or next_word in _RESULT_NOUNS or (word and word.group(1) == "nil")
    ):
        return None
    return replace(left, name="score", end=end), f"{grouped(left.fields['v'])}-{grouped(right)}", nxt
