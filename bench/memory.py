"""Resident memory of a loaded model, per dtype: what a real checkpoint needs on a CPU machine.

    python bench/memory.py                       # 0.6B, float32 and bfloat16, one process each
    python bench/memory.py --size 1.7B --dtypes float32

Each dtype runs in its own process (memory is never given back to the OS reliably within one). The
subject is the real-size random-weight checkpoint `throughput.py` builds and caches: the same shapes,
so the same bytes, as the published weights. Reported: resident memory after loading, and the peak
after transcribing one 10 s clip (activations, KV cache, features).
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys

from throughput import checkpoint

_CHILD = r"""
import json, resource, sys, time
import numpy as np, torch
from qasr.engine.qwen3 import Qwen3ASREngine
from qasr.types import EngineRequest

def rss_mb():
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024

torch.set_num_threads(int(sys.argv[3]))
engine = Qwen3ASREngine.load(sys.argv[1], device="cpu", dtype=sys.argv[2])
loaded = rss_mb()
clip = (np.random.default_rng(0).standard_normal(160000) * 0.05).astype(np.float32)
start = time.monotonic()
engine.transcribe([EngineRequest(clip)])
print(json.dumps({"loaded_mb": loaded, "after_mb": rss_mb(),
                  "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                  "transcribe_s": time.monotonic() - start}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", default="0.6B", choices=["0.6B", "1.7B"])
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    path = checkpoint(args.size, seed=0, layout="hf")
    print(
        f"# {args.size} random weights, real shapes; {platform.processor() or platform.machine()}; "
        f"{args.threads} threads"
    )
    print("| dtype | resident after load (MB) | peak after one 10 s clip (MB) | that clip (s) |")
    print("|---|---|---|---|")
    for dtype in args.dtypes.split(","):
        out = subprocess.run(
            [sys.executable, "-c", _CHILD, str(path), dtype, str(args.threads)],
            capture_output=True,
            text=True,
            check=True,
        )
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {dtype} | {row['loaded_mb']:.0f} | {row['peak_mb']:.0f} | {row['transcribe_s']:.1f} |")


if __name__ == "__main__":
    main()
