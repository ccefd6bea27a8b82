"""Joining the text of consecutive segments."""

from __future__ import annotations

import pytest

from qasr.text.join import join_texts


@pytest.mark.parametrize(
    ("left", "right", "joined"),
    [
        ("Hello there.", "How are you?", "Hello there. How are you?"),
        ("你好。", "今天天气很好。", "你好。今天天气很好。"),
        ("我们用", "Qwen", "我们用Qwen"),
        ("It works", ", mostly.", "It works, mostly."),
        ("", "first", "first"),
        ("end ", "start", "end start"),
        ("こんにちは", "世界", "こんにちは世界"),
    ],
)
def test_join(left: str, right: str, joined: str) -> None:
    assert join_texts(left, right) == joined
