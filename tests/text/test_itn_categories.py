"""ITN of what people often say (issue 12, point 6): dates with ordinal days and spoken years, scores
and votes, negative numbers and temperatures, spoken arithmetic; and, for each, what must stay as said.

These sentences are not the ones in bench/data/itn_*.tsv, so `bench/itn_eval.py` measures on pairs the
rules were not written against. The conventions are in `qasr.text.itn` and `qasr.text.itn_expressions`.
"""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip(
    "pynini"
)  # ITN is optional (issue 11); tests/text/test_itn_optional.py covers its absence

from qasr.text.itn import InverseNormalizer

pytestmark = pytest.mark.slow  # compiles both grammars once for this module

CHINESE = {
    "date": [
        ("他二零一九年十月八号入职。", "他2019年10月8号入职。"),
        ("两千零二十年一月二十三日武汉封城。", "2020年1月23日武汉封城。"),
        ("我们六月一号带孩子去公园。", "我们6月1号带孩子去公园。"),
        ("报告下个月五号之前交。", "报告下个月5号之前交。"),
        ("九九年十二月二十日澳门回归。", "99年12月20日澳门回归。"),
        ("开学时间是九月一日。", "开学时间是9月1日。"),
        ("每个月十号还信用卡。", "每个月10号还信用卡。"),
        ("放假时间是十月一号至七号。", "放假时间是10月1号至7号。"),
        ("我二零零八年八月八日在北京。", "我2008年8月8日在北京。"),
        ("五月二十号是他的生日。", "5月20号是他的生日。"),
        ("他们两千零一十年七月结婚。", "他们2010年7月结婚。"),
        ("下周一是三月十八号。", "下周一是3月18号。"),
        ("一九四五年八月十五日日本投降。", "1945年8月15日日本投降。"),
        ("这个月二十八号考试。", "这个月28号考试。"),
        ("明年一月一号起施行。", "明年1月1号起施行。"),
    ],
    "score": [
        ("上海队以三比一击败北京队。", "上海队以3:1击败北京队。"),
        ("全场比分二比零。", "全场比分2:0。"),
        ("他们最终一百一十二比一百零八取胜。", "他们最终112:108取胜。"),
        ("法案以五十二比四十八获得通过。", "法案以52:48获得通过。"),
        ("双方一比一握手言和。", "双方1:1握手言和。"),
        ("他以二十一比十九赢下第三局。", "他以21:19赢下第三局。"),
        ("比赛进行到第七十分钟，比分还是零比零。", "比赛进行到第70分钟，比分还是0:0。"),
        ("客队三比二逆转取胜。", "客队3:2逆转取胜。"),
        ("表决结果为九比零。", "表决结果为9:0。"),
        ("中国女排三比零横扫对手。", "中国女排3:0横扫对手。"),
        ("我们二比三输给了他们。", "我们2:3输给了他们。"),
        ("委员会以六比三的投票结果否决了提案。", "委员会以6:3的投票结果否决了提案。"),
        ("半场结束时主队二比一领先。", "半场结束时主队2:1领先。"),
        ("最终比分定格在四比二。", "最终比分定格在4:2。"),
        ("湖人队一百二十比一百一十五战胜了对手。", "湖人队120:115战胜了对手。"),
        ("他们打成了一比一平。", "他们打成了1:1平。"),
    ],
    "negative": [
        ("明天最低气温零下八度。", "明天最低气温零下8度。"),
        ("漠河昨晚零下四十度。", "漠河昨晚零下40度。"),
        ("这道题的答案是负五。", "这道题的答案是-5。"),
        ("夜里气温降到负三度。", "夜里气温降到-3度。"),
        ("死海湖面海拔负四百三十米。", "死海湖面海拔-430米。"),
        ("冷库温度保持在零下二十度。", "冷库温度保持在零下20度。"),
        ("利润增长率是负二点五。", "利润增长率是-2.5。"),
        ("室内温度只有三度。", "室内温度只有3度。"),
        ("x的值是负七。", "x的值是-7。"),
        ("最低温度零下十五度左右。", "最低温度零下15度左右。"),
        ("青藏高原夜间零下九度。", "青藏高原夜间零下9度。"),
        ("函数值为负一。", "函数值为-1。"),
        ("温度计显示零下两度。", "温度计显示零下2度。"),
        ("气温回升到四度以上。", "气温回升到4度以上。"),
        ("今年增速是负零点五。", "今年增速是-0.5。"),
        ("体感温度零下六度。", "体感温度零下6度。"),
    ],
    "arithmetic": [
        ("二加二等于四。", "2+2=4。"),
        ("九减五等于四。", "9-5=4。"),
        ("七乘八等于五十六。", "7×8=56。"),
        ("二十除以五等于四。", "20÷5=4。"),
        ("八加七是十五。", "8+7=15。"),
        ("六乘以六等于三十六。", "6×6=36。"),
        ("三十减去十二等于十八。", "30-12=18。"),
        ("五加三等于多少？", "5+3等于多少？"),
        ("四乘五是几？", "4×5是几？"),
        ("二减五等于负三。", "2-5=-3。"),
        ("零点五加零点五等于一。", "0.5+0.5=1。"),
        ("一百除以四等于二十五。", "100÷4=25。"),
        ("三加四加五等于十二。", "3+4+5=12。"),
        ("老师问八乘九等于几。", "老师问8×9等于几。"),
        ("两千减一千等于一千。", "2000-1000=1000。"),
        ("十二乘十二等于一百四十四。", "12×12=144。"),
        ("三乘负二等于负六。", "3×(-2)=-6。"),
    ],
}
CHINESE_UNCHANGED = {
    "date": [
        "腊月二十三是小年。",
        "七月十五是中元节。",
        "农历八月十五日是中秋节。",
        "请到二号窗口办理。",
        "下个月三号楼要装修。",
        "十一长假去哪儿玩？",
        "我们周三见。",
    ],
    "score": ["一年比一年好。", "三比二多一。", "这家店比那家贵。", "一个比一个高。", "他俩一比就知道了。"],
    "negative": [
        "他曾两度入选国家队。",
        "这场比赛他们三胜一负。",
        "他们胜四负一。",
        "负一层是停车场。",
        "他一度很失落。",
        "误差在正负三度以内。",
        "负数比正数小。",
    ],
    "arithmetic": ["加把劲就好了。", "加一个鸡蛋。", "他乘三路公交车。", "三加二大于四。", "减肥三个月了。"],
}
ENGLISH = {
    "date": [
        ("Our anniversary is on October the second.", "Our anniversary is on October 2."),
        (
            "The exam is on the nineteenth of June, twenty twenty-six.",
            "The exam is on the 19th of June, 2026.",
        ),
        ("He was born on February fourteenth, nineteen eighty-eight.", "He was born on February 14, 1988."),
        ("The shop closes on December twenty-fourth.", "The shop closes on December 24."),
        (
            "Our first date was on August eleventh, two thousand and ten.",
            "Our first date was on August 11, 2010.",
        ),
        ("We fly out on March the sixth.", "We fly out on March 6."),
        (
            "The treaty was signed on November eleventh, nineteen eighteen.",
            "The treaty was signed on November 11, 1918.",
        ),
        ("I started the job on January second, twenty twenty-two.", "I started the job on January 2, 2022."),
        (
            "The concert moved to Saturday, September the twentieth.",
            "The concert moved to Saturday, September 20.",
        ),
        (
            "She retired on the thirty-first of December, twenty twenty.",
            "She retired on the 31st of December, 2020.",
        ),
        ("The film premieres on July seventeenth.", "The film premieres on July 17."),
        (
            "The bridge opened on May twenty-seventh, nineteen thirty-seven.",
            "The bridge opened on May 27, 1937.",
        ),
        ("Applications open on April the fourth.", "Applications open on April 4."),
        (
            "The war began on the first of September, nineteen thirty-nine.",
            "The war began on the 1st of September, 1939.",
        ),
        ("My visa expires on June fifth, two thousand twenty-seven.", "My visa expires on June 5, 2027."),
    ],
    "score": [
        ("The Dodgers beat the Giants seven to two.", "The Dodgers beat the Giants 7-2."),
        ("Liverpool won three nil at Anfield.", "Liverpool won 3-0 at Anfield."),
        ("The Senate passed the bill sixty to forty.", "The Senate passed the bill 60-40."),
        ("The final score was twenty-seven to twenty-four.", "The final score was 27-24."),
        ("The Heat lost one hundred and five to one hundred and ten.", "The Heat lost 105-110."),
        ("She won the match six to three, six to two.", "She won the match 6-3, 6-2."),
        ("The board voted five to four to approve the plan.", "The board voted 5-4 to approve the plan."),
        ("The game ended one all.", "The game ended 1-1."),
        ("The council voted twelve to nothing.", "The council voted 12-0."),
        ("We were trailing two to one at the break.", "We were trailing 2-1 at the break."),
        ("It was a four to one victory.", "It was a 4-1 victory."),
        ("The Raiders edged the Broncos seventeen to fourteen.", "The Raiders edged the Broncos 17-14."),
        ("The court ruled seven to two in the case.", "The court ruled 7-2 in the case."),
        ("They drew two all with Chelsea.", "They drew 2-2 with Chelsea."),
        (
            "The measure passed by a vote of three hundred to one hundred and twenty.",
            "The measure passed by a vote of 300-120.",
        ),
        ("The Jets were leading fourteen to seven.", "The Jets were leading 14-7."),
        ("The result was two-nil.", "The result was 2-0."),
    ],
    "negative": [
        ("The low tonight is minus three.", "The low tonight is -3."),
        ("It's negative four degrees outside.", "It's -4 degrees outside."),
        ("The lake froze at minus eleven degrees Celsius.", "The lake froze at -11 degrees Celsius."),
        ("The account balance is negative forty.", "The account balance is -40."),
        ("Highs will struggle to reach minus one.", "Highs will struggle to reach -1."),
        ("The derivative is negative three point two.", "The derivative is -3.2."),
        ("Move the slider to minus six.", "Move the slider to -6."),
        ("It got down to eight below zero.", "It got down to 8 below zero."),
        ("The forecast says minus nine tonight.", "The forecast says -9 tonight."),
        ("It dropped from minus ten to minus twenty.", "It dropped from -10 to -20."),
        ("The Dow closed at minus two percent.", "The Dow closed at -2%."),
        (
            "Its boiling point is minus one hundred and ninety-six degrees.",
            "Its boiling point is -196 degrees.",
        ),
        ("The correlation was negative zero point four.", "The correlation was -0.4."),
        ("The margin of error is plus or minus two percent.", "The margin of error is plus or minus 2%."),
        ("Overnight it fell to minus twenty-five.", "Overnight it fell to -25."),
    ],
    "arithmetic": [
        ("Three plus four equals seven.", "3 + 4 = 7."),
        ("Twenty minus eight is twelve.", "20 - 8 = 12."),
        ("Five times six is thirty.", "5 × 6 = 30."),
        ("Eighteen divided by six equals three.", "18 ÷ 6 = 3."),
        ("What's seven times seven?", "What's 7 × 7?"),
        ("What is one hundred divided by four?", "What is 100 ÷ 4?"),
        ("Nine plus one makes ten.", "9 + 1 = 10."),
        ("Two times three plus four equals ten.", "2 × 3 + 4 = 10."),
        ("So six minus nine equals minus three.", "So 6 - 9 = -3."),
        ("One point five plus one point five equals three.", "1.5 + 1.5 = 3."),
        ("Fifty divided by two is twenty-five.", "50 ÷ 2 = 25."),
        ("Twelve times twelve is one hundred and forty-four.", "12 × 12 = 144."),
        ("And four plus four is eight.", "And 4 + 4 = 8."),
        ("The answer to six times seven is forty-two.", "The answer to 6 × 7 is 42."),
        ("How much is eight plus five?", "How much is 8 + 5?"),
        ("Seven multiplied by six equals forty-two.", "7 × 6 = 42."),
        ("Four minus minus four is eight.", "4 - (-4) = 8."),
    ],
}
ENGLISH_UNCHANGED = {
    "date": [
        "May the fourth be with you.",
        "Rent is due on the first of every month.",
        "She finished fifth in April.",
        "It's the second Tuesday in May.",
        "The third of them left in June.",
    ],
    "score": [
        "He works nine to five.",
        "We won two to three prizes every year.",
        "The vote was delayed two to three weeks.",
        "They won three of the four games.",
        "The odds are three to one.",
        "The score is love all.",
        "It's a one to one meeting.",
    ],
    "negative": [
        "The results were negative.",
        "Minus the fees, it's fine.",
        "That's a big minus.",
        "She got a C minus.",
        "It's plus or minus.",
    ],
    "arithmetic": [
        "I told you three times already.",
        "It's five times bigger.",
        "Plus, it's cheaper.",
        "She visited us two times last year.",
        "One plus one is a team.",
        "Three times a week is plenty.",
    ],
}


def cases(table: dict[str, list[tuple[str, str]]]) -> list[object]:
    return [
        pytest.param(spoken, written, id=f"{category}: {spoken}")
        for category, rows in table.items()
        for spoken, written in rows
    ]


def unchanged(table: dict[str, list[str]]) -> list[object]:
    return [
        pytest.param(text, id=f"{category}: {text}") for category, texts in table.items() for text in texts
    ]


@pytest.fixture(scope="module")
def normalizer(tmp_path_factory: pytest.TempPathFactory) -> InverseNormalizer:
    normalizer = InverseNormalizer(Path(tmp_path_factory.mktemp("itn-cache")))
    normalizer.warm_up()
    return normalizer


@pytest.mark.parametrize(("spoken", "written"), cases(CHINESE))
def test_chinese(normalizer: InverseNormalizer, spoken: str, written: str) -> None:
    assert normalizer.apply(spoken, "zh") == written


@pytest.mark.parametrize("text", unchanged(CHINESE_UNCHANGED))
def test_chinese_left_as_said(normalizer: InverseNormalizer, text: str) -> None:
    assert normalizer.apply(text, "zh") == text


@pytest.mark.parametrize(("spoken", "written"), cases(ENGLISH))
def test_english(normalizer: InverseNormalizer, spoken: str, written: str) -> None:
    assert normalizer.apply(spoken, "en") == written


@pytest.mark.parametrize("text", unchanged(ENGLISH_UNCHANGED))
def test_english_left_as_said(normalizer: InverseNormalizer, text: str) -> None:
    assert normalizer.apply(text, "en") == text


def test_written_forms_stay_written(normalizer: InverseNormalizer) -> None:
    """Applying ITN twice changes nothing: a written score, sum or temperature is not read again."""
    for language, table in (("zh", CHINESE), ("en", ENGLISH)):
        for rows in table.values():
            for _, written in rows:
                assert normalizer.apply(written, language) == written
