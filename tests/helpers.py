"""Test helpers shared across test modules."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path
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


def synthesize(text: str, out: Path, voice: str = "en", fmt: str = "wav", rate: int = 22050) -> Path:
    """Real speech from espeak-ng (a Debian package CI installs), re-encoded with PyAV to `fmt`."""
    import shutil
    import subprocess
    import tempfile
    from pathlib import Path

    if shutil.which("espeak-ng") is None:
        raise RuntimeError("espeak-ng is needed for speech fixtures: apt-get install espeak-ng")
    with tempfile.TemporaryDirectory() as tmp:
        wav = Path(tmp) / "speech.wav"
        subprocess.run(["espeak-ng", "-v", voice, "-w", str(wav), text], check=True, capture_output=True)
        if fmt == "wav":
            shutil.copy(wav, out)
        else:
            transcode(wav, out, fmt, rate)
    return out


def transcode(src: Path, out: Path, fmt: str, rate: int = 22050) -> None:
    import av

    codec = {"mp3": "mp3", "wav": "pcm_s16le", "flac": "flac"}[fmt]
    with av.open(str(src)) as inp, av.open(str(out), "w", format=fmt) as dst:
        stream = dst.add_stream(codec, rate=rate)
        resampler = av.AudioResampler(format=stream.codec_context.format or "s16", layout="mono", rate=rate)
        for frame in inp.decode(audio=0):
            for f in resampler.resample(frame):
                f.pts = None
                for packet in stream.encode(f):
                    dst.mux(packet)
        for packet in stream.encode(None):
            dst.mux(packet)
