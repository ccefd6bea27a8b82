"""Where a batch's time goes: the profile behind the throughput numbers (bench/RESULTS.md).

For each batch size it times, on the same real-size random checkpoint as `throughput.py`:
- `prepare`: features and prompt ids per clip (qasr runs this in the batcher's preparation thread);
- the audio encoder, and the text decoder's prefill (the whole prompt at once);
- one decoding step, with transformers' default `DynamicCache` and with the `StaticCache` qasr
  uses, and the top operators of a step under torch's profiler for both;
- the whole batch through `engine.run` (what the batcher calls), with the output length fixed.

    python bench/profile_engine.py                       # 0.6B, bf16, 2 threads, batches 1 and 8
    python bench/profile_engine.py --batches 1,4,8,16 --quantize int8 --top 10

Everything runs in this process's main thread, one thing at a time; times are medians of
`--repeat` runs after one warm-up run at the same shape (oneDNN builds kernels per shape).
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable
from typing import Any

import torch

from qasr.engine.compat import cache_kwarg
from throughput import checkpoint, make_clips


def median_s(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up at this shape
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


class Stepper:
    """Decoding steps after a real prefill, with a chosen cache."""

    def __init__(self, model: Any, inputs: Any, static: bool, extra: int) -> None:
        from transformers import DynamicCache, StaticCache

        width = inputs["input_ids"].shape[1]
        if static:
            cache: Any = StaticCache(config=model.config, max_cache_len=width + extra)
        else:
            cache = DynamicCache(config=model.config.get_text_config(decoder=True))
        self.model, self.cache = model, cache
        self.mask = inputs["attention_mask"]
        self.cache_arg = cache_kwarg(model)
        out = model(**inputs, **{self.cache_arg: cache}, use_cache=True, logits_to_keep=1)
        self.ids = out.logits[:, -1:].argmax(-1)

    def step(self) -> None:
        batch = self.ids.shape[0]
        self.mask = torch.cat([self.mask, self.mask.new_ones(batch, 1)], dim=1)
        out = self.model(
            input_ids=self.ids,
            attention_mask=self.mask,
            **{self.cache_arg: self.cache},
            use_cache=True,
            logits_to_keep=1,
        )
        self.ids = out.logits[:, -1:].argmax(-1)


def top_ops(fn: Callable[[], object], steps: int, top: int) -> list[tuple[str, float, float]]:
    """(operator, ms per step, share of the step) for the `top` operators by self CPU time."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            fn()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events) or 1.0
    return [
        (e.key, e.self_cpu_time_total / 1000 / steps, e.self_cpu_time_total / total) for e in events[:top]
    ]


def profile_batch(engine: Any, batch: int, args: argparse.Namespace) -> dict[str, Any]:
    from qasr.engine.base import Job
    from qasr.types import EngineRequest

    model = engine.model
    requests = [EngineRequest(c) for c in make_clips(batch, args.seconds, seed=batch)]
    row: dict[str, Any] = {"batch": batch}
    row["prepare_ms"] = median_s(lambda: [engine.prepare(r) for r in requests], args.repeat) * 1000 / batch
    inputs = engine.build_inputs(requests)
    row["prompt_tokens"] = int(inputs["input_ids"].shape[1])
    with torch.inference_mode():
        encoder = median_s(
            lambda: model.model.get_audio_features(inputs["input_features"], inputs["input_features_mask"]),
            args.repeat,
        )
        prefill = median_s(lambda: model(**inputs, use_cache=True, logits_to_keep=1), args.repeat)
        row["encoder_s"], row["decoder_prefill_s"] = encoder, prefill - encoder
        for name, static in (("dynamic", False), ("static", True)):
            stepper = Stepper(model, inputs, static, extra=args.steps * (args.repeat + 2) + 4)
            row[f"step_{name}_ms"] = median_s(stepper.step, args.steps) * 1000
            row[f"ops_{name}"] = top_ops(stepper.step, args.repeat, args.top)
    prepared = [engine.prepare(r) for r in requests]
    row["run_s"] = median_s(
        lambda: engine.run([Job(r, prepared=p) for r, p in zip(requests, prepared, strict=True)]), 1
    )
    row["tokens_per_s"] = batch * args.tokens / row["run_s"]
    return row


def report(rows: list[dict[str, Any]], args: argparse.Namespace) -> str:
    import transformers

    lines = [
        f"Conditions: model {args.size} (random weights, real shapes), dtype {args.dtype}, quantize "
        f"{args.quantize}, {torch.get_num_threads()} threads, {platform.processor() or platform.machine()}; "
        f"clips of {args.seconds:g} s, {args.tokens} output tokens in the `run` column; torch "
        f"{torch.__version__}, transformers {transformers.__version__}.",
        "",
        "| batch | prompt tokens | prepare ms/clip | encoder s | decoder prefill s | step ms, DynamicCache "
        "| step ms, StaticCache | run s | output tok/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['batch']} | {r['prompt_tokens']} | {r['prepare_ms']:.1f} | {r['encoder_s']:.2f} | "
            f"{r['decoder_prefill_s']:.2f} | {r['step_dynamic_ms']:.0f} | {r['step_static_ms']:.0f} | "
            f"{r['run_s']:.2f} | {r['tokens_per_s']:.1f} |"
        )
    base = rows[0]
    for r in rows[1:]:
        lines.append(
            f"- batch {r['batch']} vs batch {base['batch']}: output tok/s "
            f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x; decoding step (static) "
            f"{r['step_static_ms'] / base['step_static_ms']:.2f}x the time for {r['batch'] // base['batch']}x rows; "
            f"prefill (encoder + decoder) {(r['encoder_s'] + r['decoder_prefill_s']) / (base['encoder_s'] + base['decoder_prefill_s']):.2f}x"
        )
    for r in rows:
        for name in ("dynamic", "static"):
            lines += ["", f"Top operators of one decoding step, batch {r['batch']}, {name} cache:", ""]
            lines += ["| operator | ms per step | share |", "|---|---|---|"]
            lines += [f"| `{op}` | {ms:.1f} | {share:.0%} |" for op, ms, share in r[f"ops_{name}"]]
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", default="0.6B", choices=["tiny", "0.6B", "1.7B"])
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--quantize", default="none", choices=["none", "int8"])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batches", default="1,8")
    p.add_argument("--seconds", type=float, default=10.0)
    p.add_argument("--tokens", type=int, default=40)
    p.add_argument("--steps", type=int, default=10, help="decoding steps timed per cache")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--top", type=int, default=6)
    args = p.parse_args()

    from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine

    torch.set_num_threads(args.threads)
    options = GenerationOptions(
        min_new_tokens=args.tokens, max_new_tokens_cap=args.tokens, guard_repetition=False
    )
    path = checkpoint(args.size, 0, "hf")
    engine = Qwen3ASREngine.load(
        str(path), device="cpu", dtype=args.dtype, quantize=args.quantize, options=options
    )
    rows = [profile_batch(engine, int(b), args) for b in args.batches.split(",")]
    print(report(rows, args))


if __name__ == "__main__":
    main()
