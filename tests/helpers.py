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
    belongs in a user path (docs/DESIGN.md).
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


def rigged_checkpoint(source: Path, out: Path, text: str, language: str = "English") -> Path:
    """A copy of the tiny checkpoint at `source` whose greedy decoding writes `language <language>`
    then `text`, whatever the audio, through the unmodified serving path (docs/DESIGN.md, "Testing
    without model weights"): for end-to-end tests where no hook can reach the engine.

    Every decoder layer's `o_proj` and `down_proj` are zeroed, so a layer is the identity and the
    hidden state at a position is its token's embedding: the model is a bigram table. The chain's
    tokens get orthonormal (one-hot) embeddings and the output head maps each to the next: the
    prompt's last token (`\\n` after `assistant`, or `<asr_text>` when a language is forced) ->
    `language` -> ` <language>` -> `<asr_text>` -> the text's tokens -> `<|im_end|>`.
    """
    import itertools
    import shutil

    from safetensors.torch import load_file, save_file
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(source)
    header_and_text = tokenizer(f"language {language}<asr_text>{text}", add_special_tokens=False)
    chain = [
        *tokenizer("\n", add_special_tokens=False)["input_ids"],
        *header_and_text["input_ids"],
        tokenizer.convert_tokens_to_ids("<|im_end|>"),
    ]
    weights = load_file(str(source / "model.safetensors"))
    embed = weights["model.language_model.embed_tokens.weight"]
    if len(set(chain)) != len(chain) or len(chain) > embed.shape[1]:
        raise ValueError(f"{text!r}: the chain's {len(chain)} tokens must be distinct and fit the width")
    for name in weights:
        if name.startswith("model.language_model.layers.") and name.endswith(
            ("self_attn.o_proj.weight", "mlp.down_proj.weight")
        ):
            weights[name] = torch.zeros_like(weights[name])
    head = torch.zeros_like(weights["lm_head.weight"])
    for dim, (token, following) in enumerate(itertools.pairwise(chain)):
        embed[token] = 0.0
        embed[token, dim] = 1.0
        head[following, dim] = 10.0  # after the final RMS norm the one-hot is sqrt(width) tall
    weights["lm_head.weight"] = head
    shutil.copytree(source, out)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


class EngineWrapper:
    """The real engine behind the scheduler's interface, for test doubles that watch or hold what
    the model is asked to do (subclasses override `run`)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.name: str = inner.name

    def prepare(self, request: Any) -> object:
        return self.inner.prepare(request)

    def size(self, request: Any) -> int:
        return int(self.inner.size(request))

    def count_text_tokens(self, text: str) -> int:
        return int(self.inner.count_text_tokens(text))

    def describe(self) -> dict[str, str]:
        return dict(self.inner.describe())

    def run(self, jobs: Any) -> Any:
        return self.inner.run(jobs)


def two_utterances(first: str, second: str, out: Path, gap_s: float = 2.0) -> Path:
    """A wav of two espeak-ng utterances separated by `gap_s` of silence (two speech segments)."""
    import wave

    parts = [synthesize(text, out.with_name(f"{out.stem}-{k}.wav")) for k, text in enumerate((first, second))]
    frames = []
    for part in parts:
        with wave.open(str(part), "rb") as src:
            params = src.getparams()
            frames.append(src.readframes(src.getnframes()))
    silence = b"\x00" * (int(params.framerate * gap_s) * params.sampwidth * params.nchannels)
    with wave.open(str(out), "wb") as dst:
        dst.setparams(params)
        dst.writeframes(frames[0] + silence + frames[1])
    return out
