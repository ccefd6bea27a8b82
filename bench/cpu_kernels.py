"""CPU kernels for the text decoder (issue 18): default torch Linear vs oneDNN-packed, and weight-only
int8, per CPU class, in one run.

Classes: `native` (this CPU as it is) and `avx2`, the same CPU with the math libraries held to AVX2
(`ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 ATEN_CPU_CAPABILITY=avx2`), standing in for
CPUs without AVX-512 and bf16 (the kernel oneDNN really ran is printed from its verbose log, so the
restriction is shown to take effect). Each class runs in its own process, one thing at a time.

Per class and kernel, on the real-size random-weight checkpoint (`throughput.py`):
- decoding step (StaticCache, after a real prefill of 10 s clips) at batch 1/4/8/16;
- 8 clips as 8 single `engine.run` calls vs one `engine.run` batch of 8 (in-process: what the batcher
  does with 8 concurrent clients, without HTTP), every clip writing exactly `--tokens` tokens; the
  single-call time gives the real-time factor of one 10 s clip;
- accuracy, packed vs default on the same process and weights: greedy transcripts of the clips at
  batch 1, 4 and 8 identical, and the max |logit| difference of one prefill over 4 clips.

    python bench/cpu_kernels.py                        # fp32, classes native and avx2, 0.6B
    python bench/cpu_kernels.py --classes native --dtype bfloat16 --no-int8
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
from pathlib import Path
from typing import Any

_CLASSES = {
    "native": {},
    "avx2": {"ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"},
}


def cpu_model() -> tuple[str, str]:
    """The CPU's model name and its vector and bf16 flags, from /proc/cpuinfo."""
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    name = next((line.split(":", 1)[1].strip() for line in text.splitlines() if "model name" in line), "?")
    flags = next(
        (line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), []
    )
    keep = [f for f in flags if f.startswith(("avx", "amx", "fma"))]
    return name, " ".join(keep)


# --- the child: one CPU class ----------------------------------------------------------------------


def child(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from profile_engine import Stepper
    from qasr.engine import cpu_kernels
    from qasr.engine.base import Job
    from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine
    from qasr.types import EngineRequest
    from throughput import checkpoint, make_clips

    torch.set_num_threads(args.threads)
    path = str(checkpoint(args.size, 0, "hf"))
    fixed = GenerationOptions(
        min_new_tokens=args.tokens, max_new_tokens_cap=args.tokens, guard_repetition=False
    )
    free = GenerationOptions(max_new_tokens_cap=args.tokens, guard_repetition=False)
    clips = make_clips(8, args.seconds, seed=1)
    out: dict[str, Any] = {"isa": isa_seen(), "aten": torch.backends.cpu.get_cpu_capability(), "rows": {}}

    def steps(engine: Any) -> dict[int, float]:
        res = {}
        for batch in args.batches:
            reqs = [EngineRequest(c) for c in make_clips(batch, args.seconds, seed=batch)]
            inputs = engine.build_inputs(reqs)
            with torch.inference_mode():
                stepper = Stepper(engine.model, inputs, static=True, extra=args.steps + 4)
                stepper.step()  # warm-up at this shape
                times = []
                for _ in range(args.steps):
                    start = time.perf_counter()
                    stepper.step()
                    times.append(time.perf_counter() - start)
            res[batch] = statistics.median(times) * 1000
        return res

    def throughput(engine: Any) -> dict[str, float]:
        engine.options = fixed
        prepared = [engine.prepare(EngineRequest(c)) for c in clips]
        jobs = [Job(EngineRequest(c), prepared=p) for c, p in zip(clips, prepared, strict=True)]
        engine.run(jobs[:1])  # warm-up
        singles = []
        for job in jobs:
            start = time.perf_counter()
            engine.run([job])
            singles.append(time.perf_counter() - start)
        start = time.perf_counter()
        engine.run(jobs)
        batch = time.perf_counter() - start
        seq = sum(singles)
        return {
            "seq_s": seq,
            "batch8_s": batch,
            "speedup": seq / batch,
            "rtf": statistics.median(singles) / args.seconds,
        }

    def transcripts(engine: Any) -> list[list[str]]:
        engine.options = free
        groups = [clips[:1], clips[1:2], clips[:4], clips]
        return [[r.text for r in engine.transcribe([EngineRequest(c) for c in g])] for g in groups]

    def logits(engine: Any) -> Any:
        inputs = engine.build_inputs([EngineRequest(c) for c in clips[:4]])
        with torch.inference_mode():
            return engine.model(**inputs, logits_to_keep=8).logits.float()

    def measure_all(engine: Any, name: str) -> None:
        row = {"steps_ms": steps(engine), **throughput(engine)}
        out["rows"][name] = row
        log(f"{name}: {json.dumps(row)}")

    engine = Qwen3ASREngine.load(path, device="cpu", dtype=args.dtype, cpu_linear="default", options=fixed)
    log(f"class {args.cls}: loaded {args.size} {args.dtype}")
    ref_text, ref_logits = transcripts(engine), logits(engine)
    measure_all(engine, "default")
    linears = cpu_kernels.text_linears(engine.model)
    default_ms, packed_ms = cpu_kernels.measure(linears)
    out["probe"] = {"default_ms": default_ms, "packed_ms": packed_ms}
    out["auto"] = "packed" if sum(packed_ms) < cpu_kernels._PROBE_MARGIN * sum(default_ms) else "default"
    cpu_kernels.replace_linears(engine.model, [n for n, _ in linears])
    text, new_logits = transcripts(engine), logits(engine)
    out["same_tokens"] = text == ref_text
    out["max_logit_diff"] = float((new_logits - ref_logits).abs().max())
    out["logit_std"] = float(ref_logits.std())
    out["clips_compared"] = sum(len(g) for g in ref_text)
    measure_all(engine, "packed")
    del engine
    if args.int8:
        for quantize in args.int8:
            engine = Qwen3ASREngine.load(
                path, device="cpu", dtype="float32", quantize=quantize, options=fixed
            )
            measure_all(engine, quantize)
            del engine
    return out


def isa_seen() -> str:
    """The oneDNN implementation that runs a small fp32 packed product here (from oneDNN's verbose log,
    written by the library to this process's stdout, so read through a pipe)."""
    import torch

    r, w = os.pipe()
    saved = os.dup(1)
    sys.stdout.flush()
    os.dup2(w, 1)
    try:
        with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
            from qasr.engine.cpu_kernels import _packed_call, pack_weight

            _packed_call(torch.ones(2, 64), pack_weight(torch.ones(32, 64)))
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(w)
    text = os.read(r, 1 << 16).decode(errors="replace")
    os.close(r)
    impls = [line.split(",")[6] for line in text.splitlines() if ",exec," in line and "reorder" not in line]
    return impls[-1] if impls else "?"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the parent: one child per class, then the report -----------------------------------------------


def report(results: dict[str, dict[str, Any]], args: argparse.Namespace) -> str:
    import torch

    name, flags = cpu_model()
    lines = [
        f"CPU: {name}, {os.cpu_count()} cores, flags {flags}; {args.threads} threads; model {args.size} "
        f"(random weights, real shapes), {args.dtype}; clips of {args.seconds:g} s, {args.tokens} output "
        f"tokens each; torch {torch.__version__}.",
    ]
    for cls, res in results.items():
        env = " ".join(f"{k}={v}" for k, v in _CLASSES[cls].items()) or "(no restriction)"
        lines += [
            "",
            f"### class `{cls}`: {env}; oneDNN ran `{res['isa']}`, ATen `{res['aten']}`",
            "",
            "| kernel | "
            + " | ".join(f"step ms, batch {b}" for b in args.batches)
            + f" | 8 single calls s | one batch of 8 s | batch-8 speedup | RTF, one {args.seconds:g} s clip |",
            "|---|" + "---|" * (len(args.batches) + 4),
        ]
        for kernel, row in res["rows"].items():
            steps = " | ".join(f"{_step(row, b):.0f}" for b in args.batches)
            lines.append(
                f"| {kernel} | {steps} | {row['seq_s']:.1f} | {row['batch8_s']:.1f} | {row['speedup']:.2f}x | "
                f"{row['rtf']:.2f} |"
            )
        base, packed = res["rows"]["default"], res["rows"]["packed"]
        ratios = ", ".join(f"batch {b} {_step(base, b) / _step(packed, b):.2f}x" for b in args.batches)
        probe = res["probe"]
        lines += [
            "",
            f"- packed vs default, decoding step: {ratios}; 8 clips batched: "
            f"{base['batch8_s'] / packed['batch8_s']:.2f}x; single stream: {base['rtf'] / packed['rtf']:.2f}x.",
            f"- accuracy: greedy transcripts of {res['clips_compared']} clip decodes (batches of 1, 1, 4, 8) "
            f"{'identical' if res['same_tokens'] else 'DIFFERENT'}; max |logit diff| "
            f"{res['max_logit_diff']:.2e} (logit std {res['logit_std']:.2f}).",
            f"- `auto` would choose `{res['auto']}` here (probe, ms per MLP weight at rows 1/8: default "
            f"{'/'.join(f'{t:.2f}' for t in probe['default_ms'])}, packed "
            f"{'/'.join(f'{t:.2f}' for t in probe['packed_ms'])}).",
        ]
    return "\n".join(lines)


def _step(row: dict[str, Any], batch: int) -> float:
    steps = row["steps_ms"]
    return float(steps[str(batch)] if str(batch) in steps else steps[batch])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="0.6B", choices=["tiny", "0.6B", "1.7B"])
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--classes", default="native,avx2")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,4,8,16")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=24)
    p.add_argument("--steps", type=int, default=5, help="decoding steps timed per batch size")
    p.add_argument(
        "--int8", default="int8-weight", help="quantized variants to add, comma-separated ('' for none)"
    )
    p.add_argument("--child", default="", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batches = [int(b) for b in args.batches.split(",")]
    args.int8 = [q for q in args.int8.split(",") if q]
    if args.child:
        args.cls = args.child
        print(json.dumps(child(args)))
        return
    results = {}
    for cls in args.classes.split(","):
        env = {**os.environ, **_CLASSES[cls]}
        cmd = [sys.executable, __file__, "--child", cls, *sys.argv[1:]]
        done = subprocess.run(cmd, env=env, stdout=subprocess.PIPE, text=True, check=True)
        results[cls] = json.loads(done.stdout.strip().splitlines()[-1])
    print(report(results, args))
    print(f"\nPlatform: {platform.platform()}")


if __name__ == "__main__":
    main()
