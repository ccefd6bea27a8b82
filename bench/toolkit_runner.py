"""Time the official `qwen-asr` toolkit (transformers backend) on the benchmark's clips.

Runs inside the toolkit's own virtual environment (it pins transformers 4.57.6), started by
`bench/throughput.py` as a long-lived subprocess, so its calls can be interleaved with qasr's on the
same machine state. It loads the model, makes one untimed call, prints `{"ready": ...}`, then answers
one JSON line on stdout per command line on stdin:

    {"op": "per_clip", "clips": [0, 1, 2, 3]}   one `transcribe` call per clip, timed one by one
    {"op": "batched", "clips": [0, ..., 7]}     one `transcribe` call with all of them
    {"op": "batched", "clips": [...], "batch_size": 8}   the same, the toolkit cutting it into batches of 8
    {"op": "quit"}

Standalone, `--once` runs per_clip and batched over all the clips and prints one JSON object:

    ~/.cache/qasr-bench/toolkit-venv/bin/python bench/toolkit_runner.py --once \\
        --model DIR --clips clips.npy --tokens 40 --dtype bfloat16 --threads 2

The output length is fixed as qasr's benchmark fixes it: `min_new_tokens` = `max_new_tokens` =
`--tokens`, passed through the toolkit's `generate` (it forwards extra kwargs to the thinker's
`generate`). The tokens actually generated are counted and reported, not assumed.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import sys
import time
from typing import Any

SAMPLE_RATE = 16_000


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", required=True, help="original-layout checkpoint directory")
    parser.add_argument("--clips", required=True, help=".npy file: float32 [n_clips, n_samples] at 16 kHz")
    parser.add_argument("--tokens", type=int, default=40, help="output tokens per clip (fixed)")
    parser.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32, help="the toolkit's max_inference_batch_size")
    parser.add_argument("--once", action="store_true", help="run per_clip and batched once, print, exit")
    return parser.parse_args(argv)


class _CountingGenerate:
    """Wraps the model's `generate`: forces the output length and records what was generated."""

    def __init__(self, model: Any, tokens: int) -> None:
        self.inner = model.generate
        self.tokens = tokens
        self.generated: list[int] = []
        self.batch_sizes: list[int] = []

    def __call__(self, **kwargs: Any) -> Any:
        kwargs["max_new_tokens"] = self.tokens
        out = self.inner(min_new_tokens=self.tokens, **kwargs)
        rows, length = out.sequences.shape
        self.batch_sizes.append(int(rows))
        self.generated.extend([int(length - kwargs["input_ids"].shape[1])] * int(rows))
        return out

    def take(self) -> dict[str, list[int]]:
        counts = {"output_tokens": self.generated, "batch_sizes": self.batch_sizes}
        self.generated, self.batch_sizes = [], []
        return counts


class Toolkit:
    """The loaded toolkit model and the two ways of calling it."""

    def __init__(self, args: argparse.Namespace) -> None:
        import numpy as np
        import torch

        if args.threads:
            torch.set_num_threads(args.threads)
        from qwen_asr import Qwen3ASRModel

        self.clips = np.load(args.clips)
        started = time.perf_counter()
        self.asr = Qwen3ASRModel.from_pretrained(
            args.model,
            dtype=getattr(torch, args.dtype),
            device_map="cpu",
            max_inference_batch_size=args.batch_size,
            max_new_tokens=args.tokens,
        )
        self.load_s = time.perf_counter() - started
        self.counter = _CountingGenerate(self.asr.model, args.tokens)
        self.asr.model.generate = self.counter
        # The first generate after loading is slow (allocation, kernel selection): one untimed call.
        self.sample_text = self.asr.transcribe([(self.clips[0], SAMPLE_RATE)])[0].text[:60]
        self.counter.take()

    def per_clip(self, indices: list[int]) -> dict[str, Any]:
        latencies = []
        for i in indices:
            started = time.perf_counter()
            self.asr.transcribe([(self.clips[i], SAMPLE_RATE)])
            latencies.append(time.perf_counter() - started)
        return {"latencies_s": latencies, "wall_s": sum(latencies), **self.counter.take()}

    def batched(self, indices: list[int], batch_size: int | None = None) -> dict[str, Any]:
        default = self.asr.max_inference_batch_size
        self.asr.max_inference_batch_size = batch_size or default
        try:
            started = time.perf_counter()
            self.asr.transcribe([(self.clips[i], SAMPLE_RATE) for i in indices])
            wall = time.perf_counter() - started
        finally:
            self.asr.max_inference_batch_size = default
        return {"latencies_s": [wall] * len(indices), "wall_s": wall, **self.counter.take()}

    def info(self) -> dict[str, Any]:
        import torch
        import transformers

        return {
            "qwen_asr": _dist_version("qwen-asr"),
            "transformers": transformers.__version__,
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "load_s": self.load_s,
            "sample_text": self.sample_text,
        }


def _dist_version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    with contextlib.suppress(PackageNotFoundError):
        return version(name)
    return "unknown"


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    # stdout carries only our JSON lines: libraries print progress and warnings there too.
    answer = sys.stdout
    sys.stdout = sys.stderr

    def reply(obj: dict[str, Any]) -> None:
        usage = resource.getrusage(resource.RUSAGE_SELF)
        faults = {
            "minor": usage.ru_minflt,
            "major": usage.ru_majflt,
            "cpu_s": usage.ru_utime + usage.ru_stime,
        }
        answer.write(json.dumps({**obj, "loadavg": os.getloadavg(), "rusage": faults}) + "\n")
        answer.flush()

    toolkit = Toolkit(args)
    everything = list(range(len(toolkit.clips)))
    if args.once:
        reply(
            {
                "info": toolkit.info(),
                "per_clip": toolkit.per_clip(everything),
                "batched": toolkit.batched(everything),
            }
        )
        return 0
    reply({"ready": toolkit.info()})
    for line in sys.stdin:
        command = json.loads(line)
        if command["op"] == "quit":
            break
        clips = command.get("clips", everything)
        if command["op"] == "per_clip":
            reply(toolkit.per_clip(clips))
        else:
            reply(toolkit.batched(clips, command.get("batch_size")))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
