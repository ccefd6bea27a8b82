"""Test helpers shared across test modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch

from qasr.types import SAMPLE_RATE


def noise(seconds: float, seed: int = 0, level: float = 0.1) -> np.ndarray:
    """Deterministic noise at 16 kHz; a random model transcribes it to (meaningless) text."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(int(seconds * SAMPLE_RATE)) * level).astype(np.float32)


class ScriptedLogits:
    """A logits processor that makes the real generate loop write a known token sequence.

    Test-only: it drives the model to a known text so protocol tests can pin exact output. It never
    belongs in a user path (DESIGN.md).
    """

    def __init__(self, script: list[int], end_id: int, prompt_len: int) -> None:
        self.script = script
        self.end_id = end_id
        self.prompt_len = prompt_len

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        step = input_ids.shape[1] - self.prompt_len
        token = self.script[step] if step < len(self.script) else self.end_id
        forced = torch.full_like(scores, float("-inf"))
        forced[:, token] = 0.0
        return forced


@contextlib.contextmanager
def scripted_output(engine: Any, text: str) -> Iterator[None]:
    """Make every generate call of `engine` write `text` (e.g. "language English<asr_text>hi")."""
    from transformers import LogitsProcessorList

    tokenizer = engine.tokenizer
    script = tokenizer(text, add_special_tokens=False)["input_ids"]
    end_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    original = engine.model.generate

    def generate(**kwargs: Any) -> Any:
        prompt_len = kwargs["input_ids"].shape[1]
        kwargs["logits_processor"] = LogitsProcessorList([ScriptedLogits(script, end_id, prompt_len)])
        return original(**kwargs)

    engine.model.generate = generate
    try:
        yield
    finally:
        engine.model.generate = original
