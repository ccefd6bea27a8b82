"""SRT and WebVTT: exact format, round trips through the parsers, and how long texts become cues."""

from __future__ import annotations

import itertools
import unicodedata
from collections.abc import Callable, Sequence

import pytest

from qasr.text.subtitles import CueLimits, parse_srt, parse_vtt, to_cues, to_srt, to_vtt
from qasr.types import Segment

ENGLISH = (
    "Speech recognition systems convert spoken language into text. They work best when the audio is "
    "clean, the speaker is close to the microphone, and silence is removed first. Long recordings are "
    "cut into pieces of at most twenty-five seconds, and every piece keeps its place on the original "
    "timeline, so subtitles line up with the video."
)
CHINESE = (
    "今天天气很好，我们去公园散步吧。语音识别系统把说话转换成文字，它在安静的环境里效果最好。"
    "长的录音会被切成不超过二十五秒的片段，每个片段都保留它在原始时间轴上的位置，所以字幕能和视频对齐。"
)
JAPANESE = "音声認識システムは、話し言葉をテキストに変換します。静かな環境で最もよく機能します。"
LIMITS = CueLimits()


def ms(seconds: float) -> int:
    return round(seconds * 1000)


def check_cues(cues: list[Segment], segment: Segment, line_chars: int) -> None:
    """Cues tile the segment in order, and every cue keeps to the line and length limits."""
    assert ms(cues[0].start_s) == ms(segment.start_s)
    assert ms(cues[-1].end_s) == ms(segment.end_s)
    for cue in cues:
        assert ms(cue.start_s) < ms(cue.end_s)
        lines = cue.text.split("\n")
        assert 1 <= len(lines) <= 2
        assert all(0 < len(line) <= line_chars and line == line.strip() for line in lines)
    for left, right in itertools.pairwise(cues):
        assert ms(left.end_s) == ms(right.start_s)


def starts_with_punctuation(text: str) -> bool:
    return unicodedata.category(text[0]) in ("Po", "Pe", "Pf")


def test_srt_format_is_exact() -> None:
    segments = [
        Segment(0.0, 2.5, "Hello world."),
        Segment(3.0, 4.25, "  "),
        Segment(4.5, 6.0, "Second line\nof text."),
    ]
    assert to_srt(segments) == (
        "1\n00:00:00,000 --> 00:00:02,500\nHello world.\n\n2\n00:00:04,500 --> 00:00:06,000\nSecond line of text.\n"
    )


def test_vtt_format_is_exact_and_escapes_markup() -> None:
    segments = [Segment(1.0, 2.0, "Fish & <chips>"), Segment(2.0, 3.0, "")]
    assert to_vtt(segments) == "WEBVTT\n\n00:00:01.000 --> 00:00:02.000\nFish &amp; &lt;chips&gt;\n"
    assert parse_vtt(to_vtt(segments)) == [Segment(1.0, 2.0, "Fish & <chips>")]


def test_no_text_means_no_cues() -> None:
    segments = [Segment(0.0, 1.0, ""), Segment(1.0, 2.0, " \n\t ")]
    assert to_cues(segments) == []
    assert to_srt(segments) == ""
    assert to_vtt(segments) == "WEBVTT\n"
    assert parse_srt(to_srt(segments)) == []
    assert parse_vtt(to_vtt(segments)) == []


@pytest.mark.parametrize(
    ("seconds", "srt", "vtt"),
    [
        (0.0, "00:00:00,000", "00:00:00.000"),
        (0.0004, "00:00:00,000", "00:00:00.000"),
        (59.9996, "00:01:00,000", "00:01:00.000"),
        (3723.456, "01:02:03,456", "01:02:03.456"),
        (36_000.001, "10:00:00,001", "10:00:00.001"),
        (360_000.0, "100:00:00,000", "100:00:00.000"),
    ],
)
def test_timestamps_round_to_the_millisecond_and_hours_grow(seconds: float, srt: str, vtt: str) -> None:
    segment = Segment(seconds, seconds + 1.0, "x")
    assert f"\n{srt} --> " in to_srt([segment])
    assert f"\n{vtt} --> " in to_vtt([segment])


def test_round_trip_keeps_times_and_texts() -> None:
    segments = [
        Segment(0.001, 1.999, "First."),
        Segment(61.5, 63.0, "Hello, world!"),
        Segment(3599.999, 3601.234, "Across the hour — 跨过整点。"),
        Segment(7384.25, 7386.0, "Ça va? Très bien."),
        Segment(360_000.5, 360_002.0, "a --> b & c < d"),
    ]
    for parsed in (parse_srt(to_srt(segments)), parse_vtt(to_vtt(segments))):
        assert [(ms(s.start_s), ms(s.end_s), s.text) for s in parsed] == [
            (ms(s.start_s), ms(s.end_s), s.text) for s in segments
        ]


@pytest.mark.parametrize(("render", "parse"), [(to_srt, parse_srt), (to_vtt, parse_vtt)])
def test_parsers_read_back_exactly_the_cues(
    render: Callable[[Sequence[Segment]], str], parse: Callable[[str], list[Segment]]
) -> None:
    segments = [Segment(1.0, 21.0, ENGLISH), Segment(22.5, 40.0, CHINESE), Segment(41.0, 50.0, JAPANESE)]
    assert parse(render(segments)) == [Segment(c.start_s, c.end_s, c.text) for c in to_cues(segments)]


def test_latin_text_is_split_at_sentences_and_clauses() -> None:
    segment = Segment(1.0, 21.0, ENGLISH, language="en")

    cues = to_cues([segment])

    check_cues(cues, segment, LIMITS.latin_line_chars)
    assert len(cues) > 1
    assert " ".join(cue.text.replace("\n", " ") for cue in cues) == ENGLISH
    assert all(cue.text[-1] in ".," for cue in cues)  # every cue ends at punctuation here
    assert all(cue.language == "en" for cue in cues)
    assert all(cue.end_s - cue.start_s <= LIMITS.max_cue_s for cue in cues)


@pytest.mark.parametrize(
    "text", [CHINESE, JAPANESE, "我们用Python写代码，然后用Docker部署到服务器上面去运行它。"]
)
def test_cjk_text_uses_short_lines_and_keeps_punctuation_attached(text: str) -> None:
    segment = Segment(5.0, 5.0 + len(text) * 0.2, text)

    cues = to_cues([segment])

    check_cues(cues, segment, LIMITS.cjk_line_chars)
    assert len(cues) > 1
    assert "".join(cue.text.replace("\n", "") for cue in cues) == text  # nothing added or lost
    assert not any(starts_with_punctuation(line) for cue in cues for line in cue.text.split("\n"))
    assert all(cue.text[-1] in "。，、" for cue in cues[:-1])
    assert all("Python" in line or "Py" not in line for cue in cues for line in cue.text.split("\n"))


def test_time_is_shared_by_character_count() -> None:
    segment = Segment(10.0, 20.0, "aaaa bbbb, cccccccccccc ddddddddddd.")

    cues = to_cues([segment], CueLimits(latin_line_chars=12, max_cue_s=30.0))

    assert [cue.text for cue in cues] == ["aaaa bbbb,", "cccccccccccc\nddddddddddd."]
    # 9 of 33 non-space characters: 9/33 of the 10 s.
    assert [(ms(cue.start_s), ms(cue.end_s)) for cue in cues] == [(10_000, 12_727), (12_727, 20_000)]


def test_long_sparse_segment_is_split_to_the_cue_duration_limit() -> None:
    segment = Segment(100.0, 130.0, "Just a few words spoken here.")

    cues = to_cues([segment])

    check_cues(cues, segment, LIMITS.latin_line_chars)
    assert len(cues) >= 30 / LIMITS.max_cue_s
    # Only a cue of one word, which cannot be split further, may last longer.
    assert all(cue.end_s - cue.start_s <= LIMITS.max_cue_s or " " not in cue.text for cue in cues)
    assert " ".join(cue.text for cue in cues) == segment.text


def test_one_word_longer_than_a_line_is_cut_into_lines() -> None:
    url = "https://example.com/" + "very/long/path/" * 6
    segment = Segment(0.0, 3.0, f"see {url} now")

    cues = to_cues([segment])

    check_cues(cues, segment, LIMITS.latin_line_chars)
    assert url in "".join(line for cue in cues for line in cue.text.split("\n"))


def test_cues_of_many_segments_stay_inside_their_segments() -> None:
    segments = [Segment(0.0, 12.0, ENGLISH[:150]), Segment(12.0, 30.0, CHINESE), Segment(31.0, 31.5, "Ok.")]
    cues = to_cues(segments)
    for segment in segments:
        inside = [c for c in cues if segment.start_s <= c.start_s and c.end_s <= segment.end_s]
        line_chars = LIMITS.cjk_line_chars if segment.text is CHINESE else LIMITS.latin_line_chars
        check_cues(inside, segment, line_chars)
    assert [ms(c.start_s) for c in cues] == sorted(ms(c.start_s) for c in cues)
    for left, right in itertools.pairwise(cues):
        assert left.end_s <= right.start_s


def test_parsers_accept_common_variations() -> None:
    srt = "\ufeff1\r\n00:00:01,000 --> 00:00:02,000\r\nOne\r\ntwo\r\n\r\n2\r\n00:00:03.5 --> 00:00:04,000\r\n"
    with pytest.raises(ValueError, match="timing"):
        parse_srt(srt)
    srt = "\ufeff1\r\n00:00:01,000 --> 00:00:02,000\r\nOne\r\ntwo\r\n\r\n\r\n2\r\n00:00:03,500 --> 00:00:04,000\r\nThree\r\n"
    assert parse_srt(srt) == [Segment(1.0, 2.0, "One\ntwo"), Segment(3.5, 4.0, "Three")]

    vtt = (
        "WEBVTT - a title\nKind: captions\n\nNOTE a comment\nover two lines\n\nSTYLE\n::cue { color: red }\n\n"
        "intro\n00:01.000 --> 00:02.500 align:start position:10%\nHi &amp; bye\n\n"
        "01:00:00.000 --> 01:00:01.000\nLater\n"
    )
    assert parse_vtt(vtt) == [Segment(1.0, 2.5, "Hi & bye"), Segment(3600.0, 3601.0, "Later")]


def test_vtt_parser_requires_the_header() -> None:
    with pytest.raises(ValueError, match="WEBVTT"):
        parse_vtt("00:00:01.000 --> 00:00:02.000\nHi\n")
