"""What word timestamps cost: the forced aligner against the recognizer on the same audio (issue 14),
and the aligner's peak memory for one 180 s clip, all measured in one run.

    flock /tmp/qasr-bench.lock python bench/alignment.py              # bf16, 2 threads (~6 min on 2 cores)
    flock /tmp/qasr-bench.lock python bench/alignment.py --clips 5,10,20 --batches 1,4 --rounds 3

Subjects: the real-size Qwen3-ASR 0.6B checkpoint with random weights that `throughput.py` builds and
caches, and a real-size random Qwen3-ForcedAligner 0.6B (24-layer x 1024 audio encoder, 28-layer x 1024
text model, 5000-way head) built here once and cached the same way. Random weights of the real size
have the real FLOPs and bytes (docs/DESIGN.md, "Measured costs").

A random recognizer writes until its token budget (it rarely picks an end token), which would make the
transcription look dearer than it is and the alignment cheaper. So each clip's output length is fixed
(`min_new_tokens` = the cap, no repetition guard) at what real speech gives, `--text-tokens-per-s`
plus the `language X<asr_text>` header and the end token, and the aligner gets as many units as that
speech has words (`--units-per-s`): two profiles, English-like words and Chinese characters (each a
unit of its own). The service's own budget for a random model (16 + 10 tokens per audio second) is also
estimated from the measured cost per token (each clip is also transcribed to 2 tokens: the encoder,
the prefill and one step), as the bound a recognizer never exceeds. Times are also given per audio
second and per output token, so other lengths can be worked out.

Every row runs once per round, the recognizer and the aligner in turn on the same clips. A shared
machine changes speed under a benchmark (other jobs), so each ratio is given twice: the median of the
per-round ratios, and the ratio of the fastest runs (the least disturbed).

Memory: each in its own process (the resident peak is never given back within one), the aligner is
loaded and warmed up on 1 s (as the server does: bf16 weights are mapped from the file and paged in
on first use), its resident memory read (VmRSS), then one 180 s clip with its units aligned and the peak
(`ru_maxrss`) read: once as qasr does it (the 5000-way head only at the `<timestamp>` positions), once
through the model's own forward (full `[1, length, 5000]` logits), for comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from throughput import CACHE_DIR, checkpoint, loadavg, log

SAMPLE_RATE = 16_000
HEADER_TOKENS = 4
"""`language English<asr_text>` in the published tokenizer: `language`, ` English`, `<asr_text>` and
the newline-free start; plus one end token, counted apart."""
PROFILES = {
    # Conversational English: ~150 words a minute, ~1.3 tokens per word with punctuation.
    "en": {"units_per_s": 2.5, "text_tokens_per_s": 3.3},
    # Mandarin: ~4 characters a second, each its own aligner unit; Qwen's vocabulary holds many
    # two-character words, ~0.8 tokens per character with punctuation.
    "zh": {"units_per_s": 4.0, "text_tokens_per_s": 3.2},
}
ENGLISH = [
    "so",
    "the",
    "meeting",
    "starts",
    "at",
    "nine",
    "and",
    "we",
    "need",
    "the",
    "numbers",
    "from",
    "last",
    "quarter",
    "before",
    "then",
    "because",
    "the",
    "board",
    "wants",
    "to",
    "see",
    "how",
    "the",
    "new",
    "product",
    "did",
    "in",
    "march",
    "and",
    "whether",
    "we",
    "should",
    "keep",
    "the",
    "price",
    "where",
    "it",
    "is",
    "or",
    "move",
    "it",
    "up",
    "a",
    "little",
    "next",
    "year",
]


def aligner_checkpoint(seed: int = 0) -> Path:
    """The cached real-size random aligner, built on first use (bf16 on disk)."""
    path = CACHE_DIR / f"aligner-0.6B-seed{seed}-bf16-hf"
    if not (path / ".complete").exists():
        import torch

        from qasr.engine.testing_aligner import build_aligner_checkpoint

        log(f"building {path} (once)")
        build_aligner_checkpoint(path, ids="real", size="0.6B", seed=seed, dtype=torch.bfloat16)
        (path / ".complete").write_text("ok\n")
    return path


def units(profile: str, seconds: float, rng: np.random.Generator) -> tuple[str, ...]:
    """As many aligner units as `seconds` of that speech has: English words or Chinese characters
    (from the test tokenizer's corpus, so each is about one token, as in Qwen's vocabulary)."""
    count = max(1, round(PROFILES[profile]["units_per_s"] * seconds))
    if profile == "en":
        return tuple(str(w) for w in rng.choice(ENGLISH, count))
    return tuple(chr(0x4E00 + 7 * int(i)) for i in rng.integers(0, 2500, count))


def output_tokens(profile: str | None, seconds: float) -> int:
    """What the recognizer writes for `seconds` of speech (header and end token included); None: the
    service's budget, what a random model writes."""
    if profile is None:
        return 16 + int(np.ceil(seconds * 10.0))
    return HEADER_TOKENS + round(PROFILES[profile]["text_tokens_per_s"] * seconds) + 1


def cpu_facts() -> str:
    model, flags = platform.machine(), set()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name") and model == platform.machine():
                model = line.split(":", 1)[1].strip()
            elif line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
    except OSError:
        pass
    shown = sorted(f for f in flags if f.startswith(("avx512_bf16", "amx", "avx512f", "avx2")))
    return f"{model} ({os.cpu_count()} cores; {' '.join(shown) or 'no AVX2'})"


# --- cost --------------------------------------------------------------------------------------------


def timed(fn: Any, *args: Any) -> float:
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


def cost(args: argparse.Namespace, asr_dir: Path, aligner_dir: Path) -> list[dict[str, Any]]:
    import torch

    from qasr.engine.aligner import AlignRequest, Qwen3AlignerEngine
    from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine
    from qasr.types import EngineRequest

    torch.set_num_threads(args.threads)
    log("loading the recognizer and the aligner")
    asr = Qwen3ASREngine.load(str(asr_dir), device="cpu", dtype=args.dtype, threads=args.threads)
    aligner = Qwen3AlignerEngine.load(str(aligner_dir), device="cpu", dtype=args.dtype, threads=args.threads)
    rng = np.random.default_rng(0)
    clip_s = [float(c) for c in args.clips.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    audio = {s: (rng.standard_normal(int(s * SAMPLE_RATE)) * 0.05).astype(np.float32) for s in clip_s}
    profiles = [p for p in args.profiles.split(",") if p]
    text = {(p, s): units(p, s, rng) for p in profiles for s in clip_s}

    def transcribe(seconds: float, batch: int, tokens: int) -> None:
        asr.options = replace(
            GenerationOptions(), min_new_tokens=tokens, max_new_tokens_cap=tokens, guard_repetition=False
        )
        results = asr.transcribe([EngineRequest(audio[seconds])] * batch)
        if any(r.output_tokens != tokens for r in results):
            raise RuntimeError(f"wrote {[r.output_tokens for r in results]} tokens, not {tokens}")

    def align(profile: str, seconds: float, batch: int) -> None:
        aligner.align([AlignRequest(audio[seconds], text[profile, seconds])] * batch)

    cases = [(s, b) for s in clip_s for b in batches]
    log("warming up every shape")
    for s, b in cases:
        transcribe(s, b, 8)
        for p in profiles:
            align(p, s, b)
    short_s: dict[tuple[float, int], list[float]] = {}
    asr_s: dict[tuple[str, float, int], list[float]] = {}
    align_s: dict[tuple[str, float, int], list[float]] = {}
    loads = [loadavg()]
    for r in range(args.rounds):
        log(f"round {r + 1}/{args.rounds} (load {loadavg():.2f})")
        for s, b in cases if r % 2 == 0 else reversed(cases):
            # 2 tokens (the encoder, the prefill and one step) against each profile's length: the
            # difference is the cost per token, which prices any other output length.
            short_s.setdefault((s, b), []).append(timed(transcribe, s, b, 2))
            for p in profiles:
                asr_s.setdefault((p, s, b), []).append(timed(transcribe, s, b, output_tokens(p, s)))
                align_s.setdefault((p, s, b), []).append(timed(align, p, s, b))
        loads.append(loadavg())
    rows = []
    for s, b in cases:
        for p in profiles:
            asr, aligned, short = asr_s[p, s, b], align_s[p, s, b], short_s[s, b]
            tokens = output_tokens(p, s)
            steps = [(t - f) / (tokens - 2) for t, f in zip(asr, short, strict=True)]
            step = statistics.median(steps)
            budget_s = statistics.median(short) + step * (output_tokens(None, s) - 2)
            prompt = aligner.prepare(AlignRequest(audio[s], text[p, s])).clip
            rows.append(
                {
                    "profile": p,
                    "clip_s": s,
                    "batch": b,
                    "units": len(text[p, s]),
                    "aligner_tokens": 0 if prompt is None else len(prompt.input_ids),
                    "asr_tokens": tokens,
                    "asr_s": statistics.median(asr),
                    "asr_min_s": min(asr),
                    "align_s": statistics.median(aligned),
                    "align_min_s": min(aligned),
                    "ratio": statistics.median([a / t for a, t in zip(aligned, asr, strict=True)]),
                    "ratio_of_mins": min(aligned) / min(asr),
                    "budget_tokens": output_tokens(None, s),
                    "budget_s": budget_s,
                    "ms_per_token": 1000 * step,
                    "fixed_s": statistics.median(short),
                }
            )
    rows.append({"loads": loads})
    return rows


# --- memory ------------------------------------------------------------------------------------------

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from qasr.engine.aligner import AlignRequest, Qwen3AlignerEngine, collate_right

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

path, dtype, threads, mode, seconds = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], float(sys.argv[5])
units = tuple(json.loads(sys.argv[6]))
engine = Qwen3AlignerEngine.load(path, device="cpu", dtype=dtype, threads=threads)
engine.warmup()  # as the server does; bf16 weights are mapped from the file and paged in on first use
loaded = rss_mb()
clip = (np.random.default_rng(0).standard_normal(int(seconds * 16000)) * 0.05).astype(np.float32)
request = AlignRequest(clip, units)
start = time.monotonic()
if mode == "qasr":
    spans = engine.align([request])[0].spans
    length = len(engine.prepare(request).clip.input_ids)
else:  # the model's own forward: logits at every position
    prepared = engine.prepare(request).clip
    inputs = collate_right([prepared], engine._pad_id)
    inputs["input_features"] = inputs["input_features"].to(engine.loaded.dtype)
    with torch.inference_mode():
        logits = engine.model(**inputs).logits
    length = logits.shape[1]
    spans = [None] * len(units)
print(json.dumps({"loaded_mb": loaded, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "align_s": time.monotonic() - start, "spans": len(spans), "length": length}))
"""


def memory(args: argparse.Namespace, aligner_dir: Path) -> list[dict[str, Any]]:
    rng = np.random.default_rng(1)
    rows = []
    for profile in [p for p in args.memory_profiles.split(",") if p]:
        said = units(profile, args.long_s, rng)
        for mode in ("qasr", "full-logits"):
            log(f"memory: {profile}, {mode}, {args.long_s:.0f} s")
            out = subprocess.run(
                [
                    sys.executable,
                    "-c",
                    _CHILD,
                    str(aligner_dir),
                    args.dtype,
                    str(args.threads),
                    mode,
                    str(args.long_s),
                    json.dumps(said),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            row = json.loads(out.stdout.strip().splitlines()[-1])
            rows.append({"profile": profile, "mode": mode, "units": len(said), **row})
    return rows


# --- report ------------------------------------------------------------------------------------------


def report(args: argparse.Namespace, rows: list[dict[str, Any]], mem: list[dict[str, Any]]) -> str:
    import torch
    import transformers

    loads = rows.pop()["loads"]
    lines = [
        f"# {cpu_facts()}; torch {torch.__version__}, transformers {transformers.__version__}; "
        f"{args.dtype}; {args.threads} threads; {args.rounds} rounds; load average "
        f"{min(loads):.2f}-{max(loads):.2f}",
        "",
        "| speech | clip (s) | batch | units | aligner input (tokens) | recognizer output (tokens) | "
        "recognize (s): median, min | align (s): median, min | **align / recognize**: median of rounds, "
        "of the mins | recognizer 2 tokens (s) | decode ms/token | at the random budget (estimated): "
        "tokens, s, align / recognize |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['profile']} | {r['clip_s']:.0f} | {r['batch']} | {r['units']} | {r['aligner_tokens']} | "
            f"{r['asr_tokens']} | {r['asr_s']:.2f}, {r['asr_min_s']:.2f} | {r['align_s']:.2f}, "
            f"{r['align_min_s']:.2f} | **{100 * r['ratio']:.0f}%, {100 * r['ratio_of_mins']:.0f}%** | "
            f"{r['fixed_s']:.2f} | {r['ms_per_token']:.0f} | {r['budget_tokens']}, {r['budget_s']:.1f}, "
            f"{100 * r['align_s'] / r['budget_s']:.0f}% |"
        )
    lines += [
        "",
        "Per audio second (batch 1, mins): "
        + "; ".join(
            f"{r['profile']} {r['clip_s']:.0f} s: recognize {1000 * r['asr_min_s'] / r['clip_s']:.0f} ms, "
            f"align {1000 * r['align_min_s'] / r['clip_s']:.0f} ms"
            for r in rows
            if r["batch"] == 1
        ),
        "",
        f"Aligner memory, one {args.long_s:.0f} s clip, one process each (MB):",
        "",
        "| speech | units | input (tokens) | path | resident after load and warm-up | peak | added by the clip | time (s) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in mem:
        lines.append(
            f"| {m['profile']} | {m['units']} | {m['length']} | {m['mode']} | {m['loaded_mb']:.0f} | "
            f"{m['peak_mb']:.0f} | {m['peak_mb'] - m['loaded_mb']:.0f} | {m['align_s']:.1f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--clips", default="10,20", help="clip lengths in seconds (segments are <= 20 s)")
    parser.add_argument("--batches", default="1,4")
    parser.add_argument("--profiles", default="en,zh")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--long-s", type=float, default=180.0, help="the clip for the memory test")
    parser.add_argument(
        "--memory-profiles", default="zh", help="speech for the memory test (zh: the most units)"
    )
    parser.add_argument("--skip-cost", action="store_true")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--asr", type=Path, help="another recognizer checkpoint (a smoke test)")
    parser.add_argument("--aligner", type=Path, help="another aligner checkpoint (a smoke test)")
    args = parser.parse_args()
    asr_dir = args.asr or checkpoint("0.6B", seed=0, layout="hf")
    aligner_dir = args.aligner or aligner_checkpoint()
    rows = [{"loads": [loadavg()]}] if args.skip_cost else cost(args, asr_dir, aligner_dir)
    mem = [] if args.skip_memory else memory(args, aligner_dir)
    print(report(args, rows, mem))


if __name__ == "__main__":
    main()
