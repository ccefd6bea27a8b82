"""The result document's shape (docs/spec/filetrans.md section 3), its atomic files and signed URLs."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from qasr.jobs.results import ChannelResult, ResultFiles, UrlSigner, result_document
from qasr.types import AudioInfo, Segment, Transcript, Word

INFO = AudioInfo(12.0, "mp3", "mp3", 22050, 1)
TASK = "8fab76d0-1111-4222-8333-944455556666"


def _aligned() -> Transcript:
    words = (
        Word("Hello,", 0.5, 0.9),
        Word("world.", 1.0, 1.4),
        Word("It", 1.6, 1.7),
        Word("costs", 1.7, 2.0),
        Word("3.5%", 2.0, 2.5),
        Word("today!", 2.6, 3.0),
    )
    segment = Segment(0.4, 3.2, "Hello, world. It costs 3.5% today!", "en", words, "word")
    plain = Segment(5.0, 9.0, "欢迎使用阿里云。今天天气很好。", "zh")
    return Transcript(
        "Hello, world. It costs 3.5% today! 欢迎使用阿里云。今天天气很好。", "en", 12.0, (segment, plain)
    )


def test_sentences_from_aligned_words_with_punctuation() -> None:
    doc = result_document("https://x/a.mp3", INFO, [ChannelResult(0, _aligned())], words=True)
    assert doc["file_url"] == "https://x/a.mp3"
    assert doc["audio_info"] == {"format": "mp3", "sample_rate": 22050}
    (transcript,) = doc["transcripts"]
    first, second, third = transcript["sentences"]
    assert first == {
        "sentence_id": 0,
        "begin_time": 500,
        "end_time": 1400,
        "language": "en",
        "text": "Hello, world.",
        "words": [
            {"begin_time": 500, "end_time": 900, "text": "Hello", "punctuation": ","},
            {"begin_time": 1000, "end_time": 1400, "text": "world", "punctuation": "."},
        ],
    }
    assert second["text"] == "It costs 3.5% today!" and (second["begin_time"], second["end_time"]) == (
        1600,
        3000,
    )
    assert [w["text"] for w in second["words"]] == [
        "It",
        "costs",
        "3.5%",
        "today",
    ]  # % is not punctuation here
    # The segment the aligner did not place: one sentence with the segment's times, no invented words.
    assert third == {
        "sentence_id": 2,
        "begin_time": 5000,
        "end_time": 9000,
        "language": "zh",
        "text": "欢迎使用阿里云。今天天气很好。",
    }
    assert transcript["word_timestamps"].startswith("partial")
    assert all("emotion" not in s for s in transcript["sentences"])


def test_no_words_unless_asked() -> None:
    doc = result_document("https://x/a.mp3", INFO, [ChannelResult(0, _aligned())], words=False)
    (transcript,) = doc["transcripts"]
    assert all("words" not in s for s in transcript["sentences"]) and "word_timestamps" not in transcript
    assert [s["text"] for s in transcript["sentences"]][:2] == ["Hello, world.", "It costs 3.5% today!"]


def test_each_channel_its_own_transcript() -> None:
    empty = Transcript("", None, 12.0)
    doc = result_document("u", INFO, [ChannelResult(0, _aligned()), ChannelResult(3, empty)], words=False)
    assert [(t["channel_id"], t["text"], len(t["sentences"])) for t in doc["transcripts"]] == [
        (0, _aligned().text, 3),
        (3, "", 0),
    ]


def test_result_files_written_whole(tmp_path: Path) -> None:
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / ".result-crashed.tmp").write_text("{half")
    files = ResultFiles(tmp_path / "r")
    assert not list((tmp_path / "r").glob("*.tmp"))  # what a crash left is removed at start
    files.write(f"{TASK}.json", {"a": "é"})
    assert json.loads(files.path(f"{TASK}.json").read_text()) == {"a": "é"}
    assert os.listdir(tmp_path / "r") == [f"{TASK}.json"]
    for bad in ("../x.json", "x.json", f"{TASK}.txt"):
        with pytest.raises(ValueError):
            files.path(bad)
    files.remove(f"{TASK}.json")
    assert not files.path(f"{TASK}.json").exists()


def test_signed_urls(tmp_path: Path) -> None:
    signer = UrlSigner.in_dir(tmp_path)
    assert (tmp_path / "result-signing.key").stat().st_mode & 0o777 == 0o600
    signature = signer.signature(TASK, 2000)
    assert signer.check(TASK, "2000", signature, now=1999.0)
    assert not signer.check(TASK, "2000", signature, now=2001.0)  # expired
    assert not signer.check(TASK, "2001", signature, now=1999.0)  # expiry changed
    assert not signer.check(TASK.replace("8", "9"), "2000", signature, now=1999.0)  # another task
    assert not signer.check(TASK, "2000", "0" * 64, now=1999.0)
    assert not signer.check(TASK, "-1", signature, now=0.0)
    again = UrlSigner.in_dir(tmp_path)  # the same key after a restart
    assert again.check(TASK, "2000", signature, now=1999.0)


def test_a_long_pause_ends_a_sentence_without_punctuation() -> None:
    words = (Word("so", 0.0, 0.3), Word("then", 0.3, 0.6), Word("we", 2.0, 2.2), Word("left", 2.2, 2.5))
    segment = Segment(0.0, 2.6, "so then we left", "en", words, "word")
    doc = result_document(
        "f", INFO, [ChannelResult(0, Transcript("so then we left", "en", 3.0, (segment,)))], words=False
    )
    sentences = doc["transcripts"][0]["sentences"]
    assert [(s["text"], s["begin_time"], s["end_time"]) for s in sentences] == [
        ("so then", 0, 600),
        ("we left", 2000, 2500),
    ]
    assert all("words" not in s for s in sentences)
