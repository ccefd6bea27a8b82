"""Inverse text normalization: the exact written form of representative spoken forms in every category,
text that must stay as said, languages without ITN, the grammar cache and concurrent first use."""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import pytest

# ITN needs WeTextProcessing (pynini), which has wheels for Linux x86_64 only; where it is missing,
# tests/text/test_itn_optional.py covers the clear error instead.
pytest.importorskip("pynini")

from qasr.text import itn, itn_rules
from qasr.text.itn import InverseNormalizer, apply_itn, grammar_for

pytestmark = pytest.mark.slow  # compiles both grammars once per session (a few seconds on 2 cores)

CHINESE = {
    "cardinal": [
        ("我们班有三十二个学生。", "我们班有32个学生。"),
        ("体育馆能容纳一万两千人。", "体育馆能容纳12000人。"),
        ("这座城市有三千万人口。", "这座城市有3000万人口。"),
        ("全年销售额超过了五亿。", "全年销售额超过了5亿。"),
        ("答案是负十二。", "答案是-12。"),
        ("大概有一百多人参加。", "大概有100多人参加。"),
    ],
    "decimal": [("圆周率约等于三点一四。", "圆周率约等于3.14。"), ("价格涨了两点五倍。", "价格涨了2.5倍。")],
    "fraction": [
        ("三分之一的人投了反对票。", "1/3的人投了反对票。"),
        ("成本降低了十分之一。", "成本降低了1/10。"),
    ],
    "percent": [
        ("增长了百分之三点五。", "增长了3.5%。"),
        ("增速为负百分之二。", "增速为-2%。"),
        ("收取千分之五的手续费。", "收取5‰的手续费。"),
    ],
    "money": [
        ("这件衣服一百二十三块五。", "这件衣服123.5块。"),
        ("总共花了五块钱。", "总共花了5块钱。"),
        ("公司融资了三千万美元。", "公司融资了3000万美元。"),
        ("奖金是五万元。", "奖金是5万元。"),
        ("一共三百九十九块九毛九。", "一共399.99块。"),
        ("苹果一百块一斤。", "苹果100块一斤。"),
    ],
    "date": [
        ("我二零二四年三月十五日出发。", "我2024年3月15日出发。"),
        ("我们三月五号见。", "我们3月5号见。"),
        ("一月份的销量很好。", "1月份的销量很好。"),
    ],
    "time": [
        ("我们下午三点半开会。", "我们下午3:30开会。"),
        ("现在是十点零五分。", "现在是10:05。"),
        ("比赛在十二点三十分二十秒结束。", "比赛在12:30:20结束。"),
        ("他早上八点出门。", "他早上8点出门。"),
        ("下午两点到四点开会。", "下午2点到4点开会。"),
    ],
    "phone": [
        ("我的手机号是一三八零零一三八零零零。", "我的手机号是13800138000。"),
        ("报警电话是幺幺零。", "报警电话是110。"),
        ("邮编是一零零零零零。", "邮编是100000。"),
    ],
    "measure": [
        ("他体重七十五公斤。", "他体重75公斤。"),
        ("我们走了五公里。", "我们走了5公里。"),
        ("体温三十八点五摄氏度。", "体温38.5摄氏度。"),
    ],
    "ordinal": [("这是第二十三届运动会。", "这是第23届运动会。"), ("她拿了第一名。", "她拿了第一名。")],
    "year": [
        ("一九九八年我上小学。", "1998年我上小学。"),
        ("我九八年毕业的。", "我98年毕业的。"),
        ("他是九零后。", "他是90后。"),
        ("二〇二五年的计划。", "2025年的计划。"),
    ],
    "range": [
        ("每天跑五到十公里。", "每天跑5到10公里。"),
        ("涨幅在百分之十到百分之二十之间。", "涨幅在10%到20%之间。"),
        ("成功率大约百分之三十到四十。", "成功率大约30%到40%。"),
    ],
    # WeTextProcessing's own verbalizer writes this as "2024/03/153:30p.m.": date and time run together.
    "date and time": [
        ("会议在二零二四年三月十五日下午三点半开始。", "会议在2024年3月15日下午3:30开始。"),
        ("活动在十二月三十一日二十三点五十九分结束。", "活动在12月31日23:59结束。"),
    ],
}
CHINESE_UNCHANGED = [
    "我们要一心一意地工作。",
    "万一下雨怎么办？",
    "我十分感谢你的帮助。",
    "他把事情一五一十地说了。",
    "这是我第一次来。",
    "张三和李四是好朋友。",
    "我们去三亚旅游。",
    "来了三四个人。",
    "过了十几分钟。",
    "大概需要一两天。",
    "在十字路口左转。",
    "千万不要迟到。",
    "我们三个人一起去。",
    "我有3个苹果。",
    "会议在2024年3月15日举行。",
    "我们一块去吧。",
    "他八点出门。",
    "他们是二三十岁的人。",
    "花了两三百块。",
]
CANTONESE = [
    ("呢件衫三百蚊。", "呢件衫300蚊。"),
    ("我哋十二月二十五號見。", "我哋12月25號見。"),
    ("我哋聽日下晝三點半見。", "我哋聽日下晝3:30見。"),
    ("佢哋一齊去食飯。", "佢哋一齊去食飯。"),
]
ENGLISH = {
    "cardinal": [
        ("We have twenty-five people on the team.", "We have 25 people on the team."),
        ("The stadium holds fifty thousand fans.", "The stadium holds 50,000 fans."),
        ("The population is about three million.", "The population is about 3 million."),
        ("There are eleven players on each side.", "There are 11 players on each side."),
        ("The reading dropped to minus fifteen.", "The reading dropped to -15."),
        ("I have three apples.", "I have three apples."),
    ],
    "decimal": [
        ("Pi is about three point one four.", "Pi is about 3.14."),
        ("It's zero point five.", "It's 0.5."),
    ],
    "fraction": [
        ("About two thirds of the voters agreed.", "About 2/3 of the voters agreed."),
        ("The recipe needs two and a half cups.", "The recipe needs 2 1/2 cups."),
    ],
    "percent": [
        ("Prices rose by three point five percent.", "Prices rose by 3.5%."),
        ("It fell five percent.", "It fell 5%."),
    ],
    "money": [
        ("The ticket costs twenty-five dollars and fifty cents.", "The ticket costs $25.50."),
        ("They raised three million dollars.", "They raised $3 million."),
        ("The fee is ten euros.", "The fee is €10."),
        ("I paid fifty cents for it.", "I paid 50 cents for it."),
        ("I bought three pounds of apples.", "I bought 3 pounds of apples."),
    ],
    "date": [
        ("The meeting is on January fifth, twenty twenty-four.", "The meeting is on January 5, 2024."),
        ("It happened on the twenty-first of May.", "It happened on the 21st of May."),
    ],
    "time": [
        ("The meeting starts at three thirty pm.", "The meeting starts at 3:30 PM."),
        ("I wake up at seven a.m.", "I wake up at 7 AM."),
        ("Let's meet at ten o'clock.", "Let's meet at 10 o'clock."),
        ("The train leaves at eight fifteen.", "The train leaves at 8:15."),
    ],
    "phone": [
        ("Call me at five five five, one two three, four five six seven.", "Call me at 555-123-4567."),
        ("In an emergency, dial nine one one.", "In an emergency, dial 911."),
    ],
    "measure": [
        ("He weighs seventy-five kilograms.", "He weighs 75 kilograms."),
        ("The speed limit is sixty-five miles per hour.", "The speed limit is 65 miles per hour."),
        ("He is six feet tall.", "He is 6 feet tall."),
    ],
    "ordinal": [
        ("We live in the twenty-first century.", "We live in the 21st century."),
        ("This is my second attempt.", "This is my second attempt."),
    ],
    "year": [
        ("I was born in nineteen ninety-eight.", "I was born in 1998."),
        ("It happened in two thousand eight.", "It happened in 2008."),
        ("The style is from the nineteen eighties.", "The style is from the 1980s."),
        ("The company has two thousand five hundred employees.", "The company has 2,500 employees."),
    ],
    "range": [
        ("We run five to ten kilometers a day.", "We run 5 to 10 kilometers a day."),
        ("Prices rose between five and ten percent.", "Prices rose between 5% and 10%."),
        ("Tickets cost one hundred to two hundred dollars.", "Tickets cost $100 to $200."),
    ],
}
ENGLISH_UNCHANGED = [
    "She is one of the best players.",
    "No one knows the answer.",
    "At first, I didn't like it.",
    "She was on cloud nine.",
    "It's a nine to five job.",
    "One day, I will travel the world.",
    "We watched Ocean's Eleven last night.",
    "They live on Fifth Avenue.",
    "The Fourth of July is a holiday.",
    "He won the Formula One race.",
    "I paid $25.50 yesterday.",
    "The meeting is at 3:30 PM.",
    "There were a hundred and twenty people.",
    "It was the first quarter of the year.",
    "We met at a quarter past three.",
]
LANGUAGE_CODES = [
    ("zh", "zh"), ("yue", "zh"), ("zh-CN", "zh"), ("cmn", "zh"), ("zh_HK", "zh"), ("Chinese", "zh"),
    ("Cantonese", "zh"), ("en", "en"), ("EN", "en"), ("English", "en"), ("ja", None), (None, None),
]  # fmt: skip


def cases(table: dict[str, list[tuple[str, str]]]) -> list[tuple[str, str]]:
    return [
        pytest.param(spoken, written, id=f"{category}: {spoken}")
        for category, rows in table.items()
        for spoken, written in rows
    ]


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("itn-cache")


@pytest.fixture(scope="module")
def normalizer(cache_dir: Path) -> InverseNormalizer:
    normalizer = InverseNormalizer(cache_dir)
    normalizer.warm_up()
    return normalizer


@pytest.mark.parametrize(("spoken", "written"), cases(CHINESE))
def test_chinese(normalizer: InverseNormalizer, spoken: str, written: str) -> None:
    assert normalizer.apply(spoken, "zh") == written


@pytest.mark.parametrize("text", CHINESE_UNCHANGED)
def test_chinese_left_as_said(normalizer: InverseNormalizer, text: str) -> None:
    assert normalizer.apply(text, "zh") == text


@pytest.mark.parametrize(("spoken", "written"), CANTONESE)
def test_cantonese(normalizer: InverseNormalizer, spoken: str, written: str) -> None:
    assert normalizer.apply(spoken, "yue") == written


@pytest.mark.parametrize(("spoken", "written"), cases(ENGLISH))
def test_english(normalizer: InverseNormalizer, spoken: str, written: str) -> None:
    assert normalizer.apply(spoken, "en") == written


@pytest.mark.parametrize("text", ENGLISH_UNCHANGED)
def test_english_left_as_said(normalizer: InverseNormalizer, text: str) -> None:
    assert normalizer.apply(text, "en") == text


def test_text_outside_spans_is_copied_exactly(normalizer: InverseNormalizer) -> None:
    spoken = '他说"三百"块[备注]\\ok 🎉\n第二行二十个'
    assert normalizer.apply(spoken, "zh") == '他说"300"块[备注]\\ok 🎉\n第二行20个'
    assert normalizer.apply('He said "twenty-five" [twice]\n  ok', "en") == 'He said "25" [twice]\n  ok'


def test_text_that_cannot_be_tagged_is_returned_as_is(normalizer: InverseNormalizer) -> None:
    assert normalizer.apply("\x00二十\x00", "zh") == "\x0020\x00"  # NUL is OpenFst's epsilon
    assert normalizer.apply("abc\ud800二十", "zh") == "abc\ud800二十"  # a lone surrogate has no UTF-8


def test_written_text_is_a_fixed_point(normalizer: InverseNormalizer) -> None:
    for language, table in (("zh", CHINESE), ("en", ENGLISH)):
        for rows in table.values():
            for _, written in rows:
                assert normalizer.apply(written, language) == written


def test_long_transcript_is_the_sum_of_its_sentences(normalizer: InverseNormalizer) -> None:
    sentence = "会议在二零二四年三月十五日下午三点半开始，预计有一百二十三人参加。"
    assert normalizer.apply(sentence * 30, "zh") == normalizer.apply(sentence, "zh") * 30


@pytest.mark.parametrize("text", ["", " ", "\n"])
@pytest.mark.parametrize("language", ["zh", "yue", "en"])
def test_empty_text(normalizer: InverseNormalizer, text: str, language: str) -> None:
    assert normalizer.apply(text, language) == text


@pytest.mark.parametrize("language", ["fr", "de", "ja", "ko", "ru", "xx", "", None])
def test_other_languages_unchanged_without_loading_a_grammar(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, language: str | None
) -> None:
    def no_grammar(*args: object) -> None:
        raise AssertionError("no grammar may load for a language without ITN")

    monkeypatch.setattr(itn_rules, "load_tagger", no_grammar)
    text = "Il y a vingt-cinq personnes. 二十五个人. Twenty five."
    assert InverseNormalizer(tmp_path).apply(text, language) == text
    assert apply_itn(text, language) == text


@pytest.mark.parametrize(("language", "grammar"), LANGUAGE_CODES)
def test_language_codes(language: str | None, grammar: str | None) -> None:
    assert grammar_for(language) == grammar


def test_grammars_are_cached_on_disk(
    normalizer: InverseNormalizer, cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert sorted(path.name.split("-")[0] for path in cache_dir.glob("*.fst")) == ["en", "zh"]

    def no_build(language: str) -> None:
        raise AssertionError("a cached grammar must not be compiled again")

    monkeypatch.setattr(itn_rules, "build_tagger", no_build)
    again = InverseNormalizer(cache_dir)
    assert again.apply("他养了十只猫。", "zh") == "他养了10只猫。"
    assert again.apply("He sold twelve cars.", "en") == "He sold 12 cars."
    assert again.warm_up(("zh", "en", "fr")) == {"en": 0.0, "zh": 0.0}


def test_unwritable_cache_still_works(tmp_path: Path) -> None:
    blocked = tmp_path / "file"
    blocked.write_text("not a directory")
    assert InverseNormalizer(blocked / "itn").apply("我们走了五公里。", "zh") == "我们走了5公里。"


def test_first_use_from_many_threads(cache_dir: Path) -> None:
    shared = InverseNormalizer(cache_dir)
    spoken = {"zh": "我二零二四年三月十五日出发。", "en": "It costs twenty-five dollars."}
    written = {"zh": "我2024年3月15日出发。", "en": "It costs $25."}
    results: list[bool] = []

    def work(language: str) -> None:
        results.extend(shared.apply(spoken[language], language) == written[language] for _ in range(20))

    threads = [threading.Thread(target=work, args=(language,)) for language in ["zh", "en"] * 4]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [True] * 160


def test_module_functions_use_one_shared_normalizer(cache_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(itn.ITN_CACHE_ENV, str(cache_dir))
    monkeypatch.setattr(itn, "_default", None)
    assert list(itn.warm_up(("en", "de"))) == ["en"]
    assert itn.default_normalizer().cache_dir == cache_dir
    assert apply_itn("今天是二零二五年一月一日。", "zh") == "今天是2025年1月1日。"
    assert itn.default_normalizer() is itn.default_normalizer()


def test_importing_qasr_itn_stays_light() -> None:
    code = "import sys, qasr.text.itn; sys.exit('pynini' in sys.modules or 'itn' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0
