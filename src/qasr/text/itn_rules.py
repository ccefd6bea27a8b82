"""Finite-state taggers for inverse text normalization, built on WeTextProcessing's grammars.

This module imports pynini and WeTextProcessing (its `itn` and `tn` packages) at import time, so
`qasr.text.itn` imports it lazily. It owns everything that touches an FST:

- `build_tagger(language)` composes a tagger from WeTextProcessing's number, fraction, date, time and
  money grammars plus a few classes of our own (unit words kept as said, digit strings, ranges, scores,
  sums, signed numbers, temperatures, and fixed expressions and lunar dates to leave alone).
  WeTextProcessing's verbalizers are not used: they write conventions a reader does not expect in
  running text (`2024/03/15`, `75kg`, `3:30p.m.`) and join a date and the time after it into one token
  (`2024/03/153:30p.m.`), so `qasr.text.itn` writes each span itself.
- `load_tagger(language, cache_dir)` builds once and caches the FST on disk under a name that hashes
  this file and the library versions, so only the first start on a machine pays for compilation.
- `tag(fst, text)` returns the tagged spans with their byte offsets in `text`, read off the arcs of the
  best path, so the caller knows exactly which input each span replaces.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from importlib.resources import files
from pathlib import Path

import pynini
from itn.chinese.rules.cardinal import Cardinal as ZhCardinal
from itn.chinese.rules.fraction import Fraction as ZhFraction
from itn.english.rules.cardinal import Cardinal as EnCardinal
from itn.english.rules.date import Date as EnDate
from itn.english.rules.decimal import Decimal as EnDecimal
from itn.english.rules.money import Money as EnMoney
from itn.english.rules.ordinal import Ordinal as EnOrdinal
from itn.english.rules.time import Time as EnTime
from pynini import accep, closure, cross, difference, project, string_file, string_map, union
from pynini.lib import byte, utf8
from pynini.lib.pynutil import add_weight, delete, insert

VCHAR = utf8.VALID_UTF8_CHAR
VSIGMA = VCHAR.star
NO_STATE = -1  # pynini.NO_STATE_ID (not re-exported in pynini's stubs): the start of an empty FST
SKIP_WEIGHT = 100.0  # cost of leaving a character (zh) or word (en) untagged, so covering text wins


@dataclass(frozen=True)
class Span:
    """A tagged span: its class `name`, its `fields`, and the byte range `[start, end)` of the input."""

    name: str
    fields: dict[str, str]
    start: int
    end: int


def _data(relative: str) -> str:
    return str(files("itn").joinpath(relative))


def _token(name: str, body: pynini.FstLike, weight: float) -> pynini.Fst:
    return add_weight(insert(f"{name} {{ ") + body + insert(" } "), weight)


def _field(key: str, body: pynini.FstLike) -> pynini.Fst:
    return insert(f'{key}: "') + body + insert('" ')


def _keep(key: str, words: list[str]) -> pynini.Fst:
    """A field that copies one of `words` from the input."""
    return _field(key, union(*words))


def _numbers(pairs: dict[str, int]) -> pynini.Fst:
    return string_map([(word, str(value)) for word, value in pairs.items()])


def _inputs(fst: pynini.FstLike) -> pynini.Fst:
    """The unweighted deterministic acceptor of `fst`'s input side, as `difference` needs it."""
    return pynini.arcmap(project(fst, "input"), map_type="rmweight").optimize()


# --- Chinese ------------------------------------------------------------------------------------

ZH_DIGITS = "一二三四五六七八九"
# Units that convert even a single digit, as a reader expects ("5公里", "5块钱"); other units only
# follow numbers of 10 and more ("三个人" stays, "二十五个人" -> "25个人").
ZH_METRIC = [
    "公里", "千米", "米", "厘米", "毫米", "纳米", "公斤", "千克", "克", "毫克", "吨", "升", "毫升",
    "平方米", "平方公里", "平方千米", "立方米", "摄氏度", "华氏度", "英里", "英尺", "英寸", "公顷",
    "千瓦时", "千瓦", "瓦", "伏", "赫兹", "分贝", "千卡", "G", "GB", "MB", "KB", "TB", "个百分点",
]  # fmt: skip
ZH_CURRENCY = [
    "元", "块钱", "塊錢", "蚊", "美元", "美金", "欧元", "英镑", "日元", "韩元", "港币", "港元", "澳元",
    "加元", "卢布", "人民币", "毛钱",
]  # fmt: skip
# Fixed expressions that read like numbers but are words: 十分 (very), 十字 (cross), 十几 (a dozen or so).
ZH_KEEP = [
    "十分", "十字", "十几", "几十", "几百", "几千", "几万", "十来", "百分之百", "百分百", "一千零一夜",
    "九九八十一", "三七二十一", "万一", "千千万万", "一五一十", "三番五次", "十全十美", "十有八九",
    "十一长假", "十一假期", "十一黄金周", "十一期间", "十一放假", "国庆十一",
]  # fmt: skip
ZH_THIS_MONTH = ["这个月", "下个月", "上个月", "本月", "当月", "次月", "每月", "每个月"]
ZH_OPERATORS = {"加": "+", "加上": "+", "减": "-", "减去": "-", "乘": "×", "乘以": "×", "除以": "÷"}
ZH_TIME_OF_DAY = [
    "上午", "早上", "早晨", "清晨", "中午", "下午", "晚上", "傍晚", "凌晨", "半夜", "夜里", "夜晚",
    "今早", "明早", "今晚", "明晚", "昨晚", "上晝", "下晝", "朝早", "晏晝", "今朝",
]  # fmt: skip


def _zh_words(limit: int) -> dict[str, int]:
    """Chinese spellings of 1..limit as said in dates and clock times (十一, 二十三)."""
    words = {}
    for value in range(1, limit + 1):
        tens, ones = divmod(value, 10)
        head = "" if tens == 0 else ("十" if tens == 1 else f"{ZH_DIGITS[tens - 1]}十")
        words[head + ("" if ones == 0 else ZH_DIGITS[ones - 1])] = value
    return words


def _zh_units() -> list[str]:
    """Units and classifiers that may follow a number: WeTextProcessing's list and ours."""
    listed = Path(_data("chinese/data/measure/units_zh.tsv")).read_text("utf-8").split()
    return sorted({*listed, *ZH_METRIC, *ZH_CURRENCY, "分钟", "小时"})


@dataclass
class _ZhNumbers:
    any: pynini.Fst  # 0-9 included: 五 -> 5, 三点五 -> 3.5, 负十二 -> -12, 三千万 -> 3000万
    big: pynini.Fst  # standing alone, 0-9 stay words
    digit: pynini.Fst  # one digit of a digit string: 幺 -> 1, 〇 -> 0 (not 两)
    approx: pynini.Fst  # 三四, 十七八: approximate numbers, to keep as said
    cardinal: ZhCardinal


def _zh_numbers() -> _ZhNumbers:
    cardinal = ZhCardinal(enable_standalone_number=True, enable_0_to_9=False, enable_million=False)
    no_zheng = difference(VSIGMA, accep("正") + VSIGMA)  # 正 before a number means "exactly", not "+"
    # WeTextProcessing writes 三四 as "3~4" and 十七八 as "17-8"; those stay words (see `approx`).
    plain = closure(accep("-"), 0, 1) + closure(difference(VCHAR, union("~", "-", " ")))
    digit = string_file(_data("chinese/data/number/digit.tsv"))
    zero = string_file(_data("chinese/data/number/zero.tsv")) | cross("〇", "0")
    return _ZhNumbers(
        any=(no_zheng @ cardinal.number @ plain).optimize(),
        big=(no_zheng @ cardinal.number_exclude_0_to_9 @ plain).optimize(),
        digit=(difference(_inputs(digit), accep("两")) @ digit | zero).optimize(),
        approx=_inputs(cardinal.special_tilde | cardinal.special_dash),
        cardinal=cardinal,
    )


def _zh_amounts(n: _ZhNumbers) -> dict[str, pynini.Fst]:
    """Cardinals, digit strings, measures, money, ranges and percentages."""
    wan = union("万", "亿")
    amount = n.any + closure(wan, 0, 1)
    measure = _field("v", amount) + _keep("u", ZH_METRIC)
    measure |= _field("v", n.big + closure(wan, 0, 1)) + _keep("u", _zh_units())
    money = _field("v", amount) + _keep("u", ZH_CURRENCY)
    money |= _field("v", n.big) + _keep("u", ["块", "塊"])  # 一块 alone is "together" or "a piece"
    cents = n.digit + (delete(union("毛", "角")) + (n.digit + delete("分").ques).ques).ques  # 块九毛九
    money |= _field("v", amount) + _keep("u", ["块", "塊"]) + _field("j", cents)
    to = _keep("to", ["到", "至", "~"])
    per = cross("百分之", "%") | cross("千分之", "‰")
    percent = _field("s", cross(union("负", "负的"), "-")).ques + _field("p", per) + _field("v", n.any)
    percent += (to + delete(union("百分之", "千分之")).ques + _field("v2", n.any)).ques
    return {
        "cardinal": _field("v", n.big | n.any + wan),
        "digits": _field("v", n.digit + n.digit + n.digit.plus),
        "measure": measure,
        "money": money,
        "range": _field("v0", amount) + to + (measure | money),
        "percent": percent,
    }


def _zh_calendar(n: _ZhNumbers) -> dict[str, pynini.Fst]:
    """Dates, years, generations (九零后) and clock times."""
    two_digits = difference(_inputs(n.digit**2), n.approx) @ n.digit**2  # 九八年, not 五六年
    month = _field("m", _numbers(_zh_words(12))) + delete("月")
    day = _field("d", _numbers(_zh_words(31))) + _keep("ds", ["日", "号", "號"])
    # 六月七号到九号: the second day of a range shares the month.
    day += (
        _keep("to", ["到", "至"]) + _field("d2", _numbers(_zh_words(31))) + _keep("ds2", ["日", "号", "號"])
    ).ques
    date = _field("y", n.digit**4 | n.digit**3 | two_digits) + delete("年") + (month + day.ques).ques
    # A year said as a number (两千零一十年七月) is a year when a month follows; alone it is a count.
    spoken_year = n.big @ (accep("1") + byte.DIGIT**3 | accep("20") + byte.DIGIT**2)
    date |= _field("y", spoken_year) + delete("年") + month + day.ques
    date |= month + (day | _keep("ds", ["份"]))
    date |= _keep("mp", ZH_THIS_MONTH) + day  # 下个月三号: the month is named by a word

    oclock = delete(union("点", "點"))
    zero_x = {f"零{word}": value for word, value in zip(ZH_DIGITS, range(1, 10), strict=True)}
    minute = _numbers({w: v for w, v in _zh_words(59).items() if v >= 10}) + delete("分").ques
    minute |= _numbers(zero_x) + delete("分") | cross("半", "30") | cross("一刻", "15") | cross("三刻", "45")
    second = _field("sec", _numbers({**_zh_words(59), **zero_x}) + delete("秒"))
    hour = _numbers({**_zh_words(24), "零": 0, "两": 2}) + oclock
    when = _keep("noon", ZH_TIME_OF_DAY)
    # With minutes it is a clock time; a whole hour needs a time of day (八点 alone may be "8 points").
    time = when.ques + _field("h", hour) + _field("min", minute) + second.ques
    time |= when + _field("h", hour) + _keep("whole", ["整"]).ques
    time += (_keep("to", ["到", "至"]) + _field("h2", hour) + _field("m2", minute).ques).ques
    generation = _field("g", n.digit + (cross(union("零", "〇"), "0") | cross("五", "5"))) + delete("后")
    return {"date": date, "time": time, "generation": generation}


def _zh_expressions(n: _ZhNumbers) -> dict[str, pynini.Fst]:
    """Scores and votes (三比二), arithmetic (三加五等于八), signed numbers (负三), temperatures (零下五度).

    Single digits are read here too; `qasr.text.itn_expressions` writes them only where the context
    says what they are (比分三比二, but 五比三大 stays), and otherwise as the rules above would.
    """
    integer = n.any @ byte.DIGIT.plus
    score = _field("v0", integer) + delete("比") + _field("v", integer)
    expression = n.any + (string_map(ZH_OPERATORS.items()) + n.any).plus
    result = delete(union("等于", "是", "得")) + _field("r", n.any)
    question = _keep("q", [equals + what for equals in ("等于", "是") for what in ("多少", "几")])
    return {
        "score": score,
        "arithmetic": _field("e", expression) + (result | question),
        "signed": _field("v", (accep("负") + VSIGMA) @ n.any),
        "temperature": _keep("s", ["零下", "零上"]).ques + _field("v", n.any) + _keep("u", ["度"]),
    }


def _zh_tagger() -> pynini.Fst:
    numbers = _zh_numbers()
    amounts, calendar = _zh_amounts(numbers), _zh_calendar(numbers)
    expressions = _zh_expressions(numbers)
    # Lunar dates stay in characters (GB/T 15835): 农历八月十五, 正月十五, 腊月二十三, and the festivals
    # 八月十五 and 七月十五. Dearer than a year plus a cardinal: "二零二四年八月十五" is a solar date.
    lunar_day = accep("初").ques + union(*_zh_words(30)) + accep("日").ques
    months = union(*(f"{word}月" for word in _zh_words(12)))
    lunar_month = union("正月", "腊月", "臘月", "冬月")
    lunar = union("农历", "農曆", "阴历", "陰曆", "旧历") + (months | lunar_month) + lunar_day.ques
    lunar |= lunar_month + lunar_day | union("八月十五", "七月十五")
    whitelist = _inputs(string_file(_data("chinese/data/default/whitelist.tsv")))
    # An approximate number keeps the unit after it too: 二三十岁 must not become 二三10岁.
    keep = whitelist | union(*ZH_KEEP) | numbers.approx + union(*_zh_units(), "块", "塊").ques
    token = (
        _token("keep", delete(keep), 1.0)
        | _token("keep", delete(lunar), 1.07)
        | _token("arithmetic", expressions["arithmetic"], 1.03)
        | _token("score", expressions["score"], 1.04)
        | _token("temperature", expressions["temperature"], 1.045)
        | _token("signed", expressions["signed"], 1.055)
        | _token("date", calendar["date"], 1.02)
        | _token("generation", calendar["generation"], 1.02)
        | _token("percent", amounts["percent"], 1.03)
        | _token("range", amounts["range"], 1.04)
        | _token("money", amounts["money"], 1.04)
        | _token("time", calendar["time"], 1.05)
        | _token("measure", amounts["measure"], 1.05)
        | add_weight(ZhFraction(cardinal=numbers.cardinal).tagger, 1.05)
        | _token("cardinal", amounts["cardinal"], 1.06)
        | _token("digits", amounts["digits"], 1.07)
        | add_weight(delete(VCHAR), SKIP_WEIGHT)
    )
    return token.optimize().star.optimize()


# --- English ------------------------------------------------------------------------------------

EN_DIGITS = {
    "zero": 0, "oh": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9,
}  # fmt: skip
EN_HOURS = ["one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven", "twelve"]
EN_DENOMINATORS = {
    "half": 2, "halves": 2, "third": 3, "thirds": 3, "quarter": 4, "quarters": 4, "fourth": 4, "fourths": 4,
    "fifth": 5, "fifths": 5, "sixth": 6, "sixths": 6, "seventh": 7, "sevenths": 7, "eighth": 8, "eighths": 8,
    "ninth": 9, "ninths": 9, "tenth": 10, "tenths": 10, "twelfth": 12, "twelfths": 12, "sixteenth": 16,
    "sixteenths": 16, "hundredth": 100, "hundredths": 100, "thousandth": 1000, "thousandths": 1000,
}  # fmt: skip
_UNITS = [
    "meter", "metre", "kilometer", "kilometre", "centimeter", "centimetre", "millimeter", "millimetre",
    "mile", "yard", "inch", "foot", "gram", "kilogram", "milligram", "pound", "ounce", "ton", "tonne",
    "liter", "litre", "milliliter", "millilitre", "gallon", "degree", "byte", "kilobyte", "megabyte",
    "gigabyte", "terabyte", "watt", "kilowatt", "volt", "calorie", "acre", "hectare",
    "second", "minute", "hour", "day", "week", "month", "year",
]  # fmt: skip
_PLURALS = {"inch": "inches", "foot": "feet"}
EN_UNITS = [*_UNITS, *(_PLURALS.get(u, u + "s") for u in _UNITS), "hertz", "percent", "per cent"]
EN_UNITS += [
    f"{d} {scale}" for d in ("degree", "degrees") for scale in ("celsius", "fahrenheit", "centigrade")
]
EN_UNITS += [f"square {u}" for u in EN_UNITS if u.startswith(("meter", "kilometer", "mile", "foot", "feet"))]
EN_UNITS += [f"{u} per hour" for u in ("miles", "kilometers", "kilometres")]
EN_SEPARATORS = ' \t\n.,!?;:"()[]{}“”‘«»…'
DS = delete(" ")


def _en_digit_strings() -> pynini.Fst:
    """Digit by digit (codes, phone numbers); "eight hundred" inside one is 800. Commas may split the
    groups only when the whole is phone-length, so a list like "one, two, three" stays words."""
    word = _numbers(EN_DIGITS)
    digit = word | _numbers({w: v for w, v in EN_DIGITS.items() if v}) + DS + cross("hundred", "00")
    first = _numbers({w: v for w, v in EN_DIGITS.items() if w != "oh"})
    plain = first + DS + digit + DS + digit + (DS + digit).star
    gap = DS | delete(", ")
    grouped = cross("plus", "+").ques + gap.ques + first + (gap + digit).plus
    return plain | grouped @ (accep("+").ques + byte.DIGIT**7 + byte.DIGIT.star)


def _en_classes() -> pynini.Fst:
    cardinal = EnCardinal()
    ordinal = EnOrdinal(cardinal=cardinal)
    decimal = EnDecimal(cardinal=cardinal)
    minus = cross(union("minus", "negative"), "-") + DS
    point = delete("point") + DS + insert(".") + (_numbers(EN_DIGITS) + DS).star + _numbers(EN_DIGITS)
    real = closure(minus, 0, 1) + (cardinal.graph + (DS + point).ques) | point

    fraction = _field("n", cardinal.up_to_999) + DS + _field("d", _numbers(EN_DENOMINATORS))
    fraction |= (
        _field("i", cardinal.graph)
        + DS
        + delete("and a ")
        + _field("n", insert("1"))
        + _field("d", _numbers({"half": 2, "third": 3, "quarter": 4}))
    )
    # "five oh five a.m.": WeTextProcessing reads only "o" as the zero inside a time.
    suffix = string_file(_data("english/data/time/time_suffix.tsv"))
    hour = _field("hour", _numbers({word: h for h, word in enumerate(EN_HOURS, start=1)}))
    oh_time = hour + DS + delete("oh") + DS + _field("minute", insert("0") + _numbers(EN_DIGITS))
    oh_time += DS + _field("noon", suffix)
    # Years 1300-2099 only: "ten forty" and "twelve thirty" are clock times, "eight thousand" a count.
    not_a_year = union("0", "1" + union(*"012"), "2" + union(*"123456789"), *"3456789")
    date = EnDate(cardinal=cardinal, ordinal=ordinal).tagger @ _inputs(
        difference(VSIGMA, VSIGMA + 'year: "' + not_a_year + VSIGMA)
    )
    # "April the fifteenth", which WeTextProcessing does not read.
    day = ordinal.graph @ union(*(str(day) for day in range(1, 32)))
    months = string_file(_data("english/data/months.tsv"))
    month_the_day = _field("month", months) + DS + delete("the") + DS + _field("day", day)
    ordinals = ordinal.graph | string_map([("hundredth", "100"), ("thousandth", "1000")])
    # "minus five", "negative two point five": a sign makes even a small number a number.
    signed = minus + (cardinal.graph + (DS + point).ques | point)
    return (
        _token("fraction", fraction, 1.07)
        | add_weight(EnMoney(cardinal=cardinal, decimal=decimal).tagger, 1.08)
        | add_weight(date, 1.09)
        | _token("date", month_the_day, 1.09)
        | _token("ordinal", _field("v", ordinals), 1.09)
        | _token("measure", _field("v", real) + DS + _keep("u", EN_UNITS), 1.095)
        | add_weight(EnTime(cardinal=cardinal).tagger, 1.1)
        | _token("time", oh_time, 1.1)
        | _token("signed", _field("v", signed), 1.099)
        | add_weight(decimal.tagger, 1.1)
        | _token("cardinal", _field("v", closure(minus, 0, 1) + cardinal.graph), 1.1)
        | _token("digits", _field("v", _en_digit_strings()), 1.12)
    ).optimize()


def _en_tagger() -> pynini.Fst:
    """Spans start and end at word boundaries: whole words between separators, or skipped words."""
    separator = union(*(pynini.escape(char) for char in EN_SEPARATORS))
    word = add_weight(delete(difference(VCHAR, separator).plus), SKIP_WEIGHT)
    unit = _en_classes() | word
    gaps = delete(separator).star
    return (gaps + (unit + (delete(separator).plus + unit).star).ques + gaps).optimize()


# --- build, cache, tag --------------------------------------------------------------------------

_BUILDERS = {"zh": _zh_tagger, "en": _en_tagger}


def cache_name(language: str) -> str:
    """A file name that changes whenever this grammar or the libraries under it change."""
    digest = hashlib.sha256(Path(__file__).read_bytes()).hexdigest()[:16]
    return f"{language}-{digest}-wetext{version('WeTextProcessing')}-pynini{version('pynini')}.fst"


def build_tagger(language: str) -> pynini.Fst:
    """Compile the tagger for `language` ("zh" or "en"); about a second or two."""
    return _BUILDERS[language]()


def load_tagger(language: str, cache_dir: Path | None) -> pynini.Fst:
    """The tagger for `language`, read from `cache_dir` or else built and written there."""
    path = None if cache_dir is None else cache_dir / cache_name(language)
    if path is not None and path.is_file():
        fst = pynini.Fst.read(str(path))
    else:
        fst = build_tagger(language)
        if path is not None:
            _write_atomically(fst, path)
    # Sorted once, so composing with an input needs no sort per call.
    sorted_fst: pynini.Fst = fst.arcsort("ilabel")
    return sorted_fst


def _write_atomically(fst: pynini.Fst, path: Path) -> None:
    """A concurrent reader never sees half a file; an unwritable cache only costs the next start."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name, suffix=".tmp")
        os.close(fd)
        fst.write(tmp)
        os.chmod(tmp, 0o644)  # mkstemp makes it private; other users of a shared cache may read it
        os.replace(tmp, path)
    except OSError:
        return


_TOKEN = re.compile(rb"(\w+) \{ (.*?) \} ")
_FIELD = re.compile(r'(\w+): "([^"]*)"')


def tag(fst: pynini.Fst, text: str) -> list[Span]:
    """The tagged spans of `text`, in order, with byte offsets into `text.encode()`."""
    # escape() only protects [ ] \ from pynini's string syntax; the acceptor holds the original bytes.
    path = pynini.shortestpath(pynini.accep(pynini.escape(text)) @ fst)
    out, consumed_at = bytearray(), []
    consumed, state = 0, path.start()
    while state != NO_STATE:
        arc = next(iter(path.arcs(state)), None)
        if arc is None:
            break
        consumed += arc.ilabel != 0
        if arc.olabel:
            out.append(arc.olabel)
            consumed_at.append(consumed)
        state = arc.nextstate
    spans = []
    for match in _TOKEN.finditer(bytes(out)):
        fields = dict(_FIELD.findall(match.group(2).decode()))
        spans.append(
            Span(match.group(1).decode(), fields, consumed_at[match.start()], consumed_at[match.end() - 1])
        )
    return spans
