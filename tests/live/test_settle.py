"""Splitting a live hypothesis into settled text and stash."""

from __future__ import annotations

from qasr.live.settle import split_hypothesis


def test_all_but_the_last_words_settle_at_a_word_boundary() -> None:
    assert split_hypothesis("", "the quick brown fox jumps", 2) == ("the quick brown", " fox jumps")
    assert split_hypothesis("the quick", "the quick brown fox jumps", 2) == ("the quick brown", " fox jumps")


def test_too_few_new_words_settle_nothing() -> None:
    assert split_hypothesis("the quick", "the quick brown", 2) == ("the quick", " brown")
    assert split_hypothesis("the quick", "the quick", 2) == ("the quick", "")


def test_characters_of_scripts_without_spaces_are_words() -> None:
    assert split_hypothesis("今天", "今天天气很好", 2) == ("今天天气", "很好")
    assert split_hypothesis("", "hello 世界 again", 1) == ("hello 世界", " again")


def test_a_hypothesis_that_does_not_continue_the_settled_text_settles_nothing() -> None:
    assert split_hypothesis("the quick", "a quick brown fox", 1) == ("the quick", "")


def test_punctuation_stays_with_its_word() -> None:
    assert split_hypothesis("", "Hello, world. How are", 2) == ("Hello, world.", " How are")
