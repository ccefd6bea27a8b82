"""Async file jobs (issue 15) on CPU: a long recording through the job API, and what a running job
does to short synchronous requests, measured in one run against one server.

Subject: the real-size Qwen3-ASR-0.6B with random weights (real FLOPs), cached by bench/throughput.py,
with a fixed output length (`--tokens-per-s` per second of speech, no early stop) so every run does
the same work. The server is qasr's own app (`create_app` + `serve`, as `qasr serve` runs it) in a
child process around that engine; the recording is generated speech with pauses (bench/long_audio.py).

Phases, in order:
  1. baseline: `--sync` sequential 10 s synchronous requests (DashScope, JSON), nothing else running;
  2. the job is submitted; the same sync requests again while it runs (429s counted);
  3. the job runs on alone until SUCCEEDED; its wall time (scheduled -> end), the server's peak RSS
     (VmHWM) and the result's size are reported.

    flock /tmp/qasr-bench.lock .venv/bin/python bench/filetrans.py                 # 60 min recording
    flock /tmp/qasr-bench.lock .venv/bin/python bench/filetrans.py --minutes 5 --sync 6
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import wave
from pathlib import Path
from typing import Any

import httpx

from long_audio import make_file
from throughput import CACHE_DIR, checkpoint, free_port

SUBMIT = "/api/v1/services/audio/asr/transcription"
GENERATION = "/api/v1/services/aigc/multimodal-generation/generation"


def serve_child(argv: list[str]) -> None:
    """The server process: qasr's app around an engine with a fixed output length."""
    from qasr.api.app import create_app
    from qasr.api.server import serve
    from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine
    from qasr.settings import Settings

    model, dtype, tps, port, data_dir, allow, in_flight = argv
    options = GenerationOptions(base_new_tokens=0, new_tokens_per_s=float(tps), guard_repetition=False)
    engine = Qwen3ASREngine.load(model, device="cpu", dtype=dtype, options=options)
    engine.warmup()
    settings = Settings(
        model=model,
        device="cpu",
        dtype=dtype,  # type: ignore[arg-type]  # one of Settings' choices, from main's --dtype
        port=int(port),
        data_dir=Path(data_dir),
        allow_local_dirs=[Path(allow)],
        jobs_segments_in_flight=int(in_flight),
        warmup=False,
    )
    serve(create_app(settings, engine), settings)


def clips(recording: Path, count: int, seconds: float = 10.0) -> list[bytes]:
    """`count` different 10 s WAV windows of the recording (speech with pauses, so VAD passes them)."""
    out = []
    with wave.open(str(recording)) as src:
        rate = src.getframerate()
        for k in range(count):
            src.setpos(int((37.0 * k + 5.0) * rate) % max(1, src.getnframes() - int(seconds * rate)))
            frames = src.readframes(int(seconds * rate))
            buf = io.BytesIO()
            with wave.open(buf, "wb") as dst:
                dst.setparams(src.getparams())
                dst.writeframes(frames)
            out.append(buf.getvalue())
    return out


def sync_round(base: str, bodies: list[bytes]) -> tuple[list[float], int]:
    """Sequential sync requests: latencies (s) of the answered ones, and how many got 429."""
    latencies, refused = [], 0
    with httpx.Client(timeout=600) as client:
        for wav in bodies:
            uri = "data:audio/wav;base64," + base64.b64encode(wav).decode()
            body = {
                "model": "qwen3-asr-flash",
                "input": {"messages": [{"role": "user", "content": [{"audio": uri}]}]},
            }
            start = time.monotonic()
            response = client.post(base + GENERATION, json=body)
            if response.status_code == 429:
                refused += 1
                continue
            response.raise_for_status()
            latencies.append(time.monotonic() - start)
    return latencies, refused


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))] if ordered else float("nan")


def task(base: str, task_id: str) -> dict[str, Any]:
    """The task's whole answer (`output`, and `usage` once it succeeded)."""
    body: dict[str, Any] = httpx.get(f"{base}/api/v1/tasks/{task_id}", timeout=30).json()
    return body


def vm(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the job's recording")
    parser.add_argument("--sync", type=int, default=20, help="10 s sync requests per phase")
    parser.add_argument("--tokens-per-s", type=float, default=4.0)
    parser.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    parser.add_argument("--segments-in-flight", type=int, default=2, help="jobs_segments_in_flight")
    parser.add_argument("--model", type=Path, help="another checkpoint (a tiny one checks the script)")
    args = parser.parse_args()

    model = args.model or checkpoint("0.6B", 0, "hf")
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    recording = make_file(args.minutes, CACHE_DIR / f"speech-{args.minutes:g}min.wav")
    bodies = clips(recording, args.sync)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        cmd = [sys.executable, __file__, "_serve", str(model), args.dtype, str(args.tokens_per_s), str(port)]
        cmd += [data, str(CACHE_DIR), str(args.segments_in_flight)]
        log = open(Path(data) / "server.log", "wb")  # noqa: SIM115 (kept open for the child's life)
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            run(args, base, proc, recording, bodies)
        finally:
            proc.terminate()
            proc.wait(timeout=60)
            log.close()


def run(
    args: argparse.Namespace, base: str, proc: subprocess.Popen[bytes], recording: Path, bodies: list[bytes]
) -> None:
    deadline = time.monotonic() + 900
    while True:
        if proc.poll() is not None:
            raise RuntimeError("the server exited early")
        try:
            if httpx.get(base + "/health/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("the server did not come up")
        time.sleep(1)
    rss_loaded = vm(proc.pid, "VmRSS")
    print(
        f"# filetrans bench: {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, {args.model or '0.6B random'} {args.dtype}, "
        f"{args.tokens_per_s:g} tokens/s of speech, jobs_segments_in_flight {args.segments_in_flight}, "
        f"recording {args.minutes:g} min ({recording.stat().st_size / 2**20:.0f} MB), RSS after load {rss_loaded:.0f} MB"
    )
    alone, refused_alone = sync_round(base, bodies)
    body = {"model": "qwen3-asr-flash-filetrans", "input": {"file_url": str(recording)}}
    submitted = time.monotonic()
    response = httpx.post(base + SUBMIT, json=body, headers={"X-DashScope-Async": "enable"}, timeout=60)
    response.raise_for_status()
    task_id = response.json()["output"]["task_id"]
    while task(base, task_id)["output"]["task_status"] == "PENDING":
        time.sleep(0.2)
    during, refused_during = sync_round(base, bodies)
    progress_after_sync = task(base, task_id)["output"].get("progress")
    peak_sampled = 0.0
    while (status := task(base, task_id))["output"]["task_status"] in ("PENDING", "RUNNING"):
        peak_sampled = max(peak_sampled, vm(proc.pid, "VmRSS"))
        time.sleep(2)
    wall = time.monotonic() - submitted
    assert status["output"]["task_status"] == "SUCCEEDED", status
    document = httpx.get(status["output"]["result"]["transcription_url"], timeout=120).content
    doc = json.loads(document)
    sentences = sum(len(t["sentences"]) for t in doc["transcripts"])
    print("\n| phase | sync requests | p50 s | p95 s | max s | 429 |\n|---|---|---|---|---|---|")
    for name, values, refused in (
        ("alone", alone, refused_alone),
        ("during the job", during, refused_during),
    ):
        print(
            f"| {name} | {len(values)} | {statistics.median(values):.2f} | {quantile(values, 0.95):.2f} | {max(values):.2f} | {refused} |"
        )
    print(
        f"\np50 ratio (during / alone): {statistics.median(during) / statistics.median(alone):.2f}; "
        f"p95 ratio: {quantile(during, 0.95) / quantile(alone, 0.95):.2f}"
    )
    print(
        f"job: {args.minutes:g} min of audio, wall {wall:.0f} s from submit to SUCCEEDED "
        f"({args.minutes * 60 / wall:.2f} x real time, the sync phase included), usage {status.get('usage')}, "
        f"progress {progress_after_sync} when the sync phase ended; result {len(document) / 1024:.0f} KB, "
        f"{sentences} sentences"
    )
    print(
        f"server memory: peak RSS (VmHWM) {vm(proc.pid, 'VmHWM'):.0f} MB, sampled peak during the job "
        f"{peak_sampled:.0f} MB, after load {rss_loaded:.0f} MB; load at end {os.getloadavg()[0]:.2f}"
    )


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "_serve":
        serve_child(sys.argv[2:])
    else:
        main()
