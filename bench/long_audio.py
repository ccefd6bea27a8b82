"""Long audio: VAD time per audio hour, total time and peak memory for long files, measured in one run.

Each case runs in its own process (so peak RSS is that case's alone) on generated speech: espeak-ng
sentences with pauses, as an 8 kHz WAV. Cases:
  - decode + VAD + segmentation only, per file length (the VAD's cost per audio hour);
  - the whole pipeline (`qasr transcribe`) on the tiny random model, per file length;
  - the whole pipeline on a real-size Qwen3-ASR-0.6B with random weights (real FLOPs; the output
    length is fixed at `--tokens-per-s` per second of speech so every run does the same work);
  - optionally (`--sweep`) the 0.6B cost per audio second for several maximum segment lengths, which
    is how the default `segment_max_s` was chosen.

    python bench/long_audio.py --short            # 2 and 10 minutes, tiny model, 0.6B on 2 minutes
    python bench/long_audio.py                    # 10 and 60 minutes, 0.6B on 10 minutes
    python bench/long_audio.py --sweep            # also the segment-length sweep on the 0.6B model
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import wave
from pathlib import Path

import numpy as np

CACHE = Path(os.environ.get("QASR_BENCH_CACHE", Path.home() / ".cache" / "qasr-bench"))
SENTENCES = [
    "The meeting started with a short review of last quarter's numbers.",
    "Everyone agreed that the new release needs more testing before launch.",
    "After a long pause, the chair asked for questions from the room.",
    "We will meet again next Tuesday at three in the afternoon.",
]


def make_file(minutes: float, out: Path, pauses_s: tuple[float, float] = (0.5, 4.0)) -> Path:
    """Speech with pauses of `pauses_s` seconds, repeated to `minutes`, written without holding it all
    in memory."""
    if out.exists():
        return out
    rng = np.random.default_rng(0)
    clips = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, text in enumerate(SENTENCES):
            wav = Path(tmp) / f"{i}.wav"
            subprocess.run(["espeak-ng", "-s", "160", "-w", str(wav), text], check=True)
            with wave.open(str(wav)) as w:
                pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
                clips.append(pcm[:: max(1, w.getframerate() // 8000)])
    total = int(minutes * 60 * 8000)
    written = 0
    with wave.open(str(out), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(8000)
        while written < total:
            clip = clips[int(rng.integers(len(clips)))]
            pause = np.zeros(int(rng.uniform(*pauses_s) * 8000), dtype=np.int16)
            block = np.concatenate([clip, pause])[: total - written]
            w.writeframesraw(block.tobytes())
            written += len(block)
    return out


def _child(code: str, *args: str) -> dict:
    """Run `code` in a fresh interpreter; return its JSON result plus its peak RSS."""
    done = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


VAD_ONLY = """
import json, sys, time
from pathlib import Path
from qasr.audio.decode import AudioStream
from qasr.audio.segment import SegmentationOptions, segment_stream
from qasr.audio.vad import VoiceActivityDetector
vad = VoiceActivityDetector()
t = time.perf_counter()
with AudioStream(Path(sys.argv[1])) as audio:
    n = sum(1 for _ in segment_stream(audio.chunks(10.0), vad, SegmentationOptions(max_segment_s=float(sys.argv[2]))))
    seconds = audio.decoded_s
import resource
print(json.dumps({"segments": n, "audio_s": seconds, "wall_s": time.perf_counter() - t,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""

PIPELINE = """
import asyncio, json, sys, time
from pathlib import Path
from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine
from qasr.runtime import Runtime
from qasr.settings import Settings
path, model, dtype, seg, tps = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), float(sys.argv[5])
options = None
if tps > 0:  # fixed output length: tps tokens per second of audio, no early stop
    options = GenerationOptions(base_new_tokens=0, new_tokens_per_s=tps, guard_repetition=False)
engine = Qwen3ASREngine.load(model, device="cpu", dtype=dtype, options=options)
engine.warmup()
settings = Settings(model=model, segment_max_s=seg, max_batch_size=8, max_wait_ms=10, warmup=False)
async def main():
    runtime = Runtime.build(settings, engine)
    try:
        t = time.perf_counter()
        out = await runtime.atranscribe(Path(path))
        return out, time.perf_counter() - t, list(runtime.scheduler.batch_sizes.elements())
    finally:
        runtime.close()
out, wall, sizes = asyncio.run(main())
import resource
print(json.dumps({"audio_s": out.duration_s, "segments": len(out.segments), "wall_s": wall,
                  "output_tokens": out.usage.output_tokens, "mean_batch": sum(sizes) / max(1, len(sizes)),
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def checkpoint(size: str) -> Path:
    """A random-weight checkpoint, built once: tiny with compact ids, real sizes with the real ids."""
    import torch

    from qasr.engine.testing import build_checkpoint

    path = CACHE / f"random-{size}-hf"
    if not (path / "model.safetensors").exists():
        tiny = size == "tiny"
        build_checkpoint(
            path,
            size=size,
            ids="compact" if tiny else "real",
            dtype=torch.float32 if tiny else torch.bfloat16,
        )
    return path


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--short", action="store_true", help="2 and 10 minute files; 0.6B on 2 minutes")
    parser.add_argument("--sweep", action="store_true", help="0.6B cost per audio second vs segment length")
    parser.add_argument("--sweep-only", action="store_true", help="only the segment-length sweep")
    parser.add_argument("--segment-max-s", type=float, default=20.0)
    parser.add_argument("--tokens-per-s", type=float, default=4.0, help="fixed output rate for the 0.6B runs")
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()

    CACHE.mkdir(parents=True, exist_ok=True)
    lengths = [2, 10] if args.short else [10, 60]
    real_minutes = 2 if args.short else 10
    print(
        f"# long audio, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, segment_max_s {args.segment_max_s}"
    )
    if args.sweep_only:
        sweep(args)
        return
    print(
        "\n| case | audio | wall s | x real time | segments | peak RSS MB | notes |\n|---|---|---|---|---|---|---|"
    )
    for minutes in lengths:
        f = make_file(minutes, CACHE / f"speech-{minutes}min.wav")
        r = _child(VAD_ONLY, str(f), str(args.segment_max_s))
        per_hour = r["wall_s"] / r["audio_s"] * 3600
        print(
            f"| decode+VAD+segment | {minutes} min | {r['wall_s']:.1f} | {r['audio_s'] / r['wall_s']:.0f} | {r['segments']} | {r['peak_rss_mb']:.0f} | VAD pipeline {per_hour:.1f} s per audio hour |"
        )
    tiny = checkpoint("tiny")
    for minutes in lengths:
        f = CACHE / f"speech-{minutes}min.wav"
        r = _child(PIPELINE, str(f), str(tiny), "float32", str(args.segment_max_s), "0")
        print(
            f"| pipeline, tiny model | {minutes} min | {r['wall_s']:.1f} | {r['audio_s'] / r['wall_s']:.1f} | {r['segments']} | {r['peak_rss_mb']:.0f} | mean batch {r['mean_batch']:.1f} |"
        )
    real = checkpoint("0.6B")
    f = make_file(real_minutes, CACHE / f"speech-{real_minutes}min.wav")
    r = _child(PIPELINE, str(f), str(real), args.dtype, str(args.segment_max_s), str(args.tokens_per_s))
    print(
        f"| pipeline, 0.6B random, {args.dtype} | {real_minutes} min | {r['wall_s']:.1f} | {r['audio_s'] / r['wall_s']:.2f} | {r['segments']} | {r['peak_rss_mb']:.0f} | {r['output_tokens']} output tokens, mean batch {r['mean_batch']:.1f} |"
    )
    if args.sweep:
        sweep(args)
    print(f"\nload at end {os.getloadavg()[0]:.2f}")


def sweep(args: argparse.Namespace) -> None:
    """0.6B cost per audio second against the segment cap, on near-continuous speech (pauses of
    0.2-0.7 s, shorter than the 1 s that always ends a segment), where the cap decides the cuts."""
    real = checkpoint("0.6B")
    f = make_file(3, CACHE / "speech-3min-continuous.wav", pauses_s=(0.2, 0.7))
    print(
        "\n| max segment s | segments | mean segment s | wall s | audio s per wall s |\n|---|---|---|---|---|"
    )
    for seg in (10.0, 15.0, 20.0, 25.0, 30.0, 40.0):
        r = _child(PIPELINE, str(f), str(real), args.dtype, str(seg), str(args.tokens_per_s))
        mean = r["audio_s"] / max(1, r["segments"])
        print(
            f"| {seg:.0f} | {r['segments']} | {mean:.1f} | {r['wall_s']:.1f} | {r['audio_s'] / r['wall_s']:.2f} |"
        )


if __name__ == "__main__":
    main()
