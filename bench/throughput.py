"""Throughput and latency of qasr against the same clips sent one at a time and against the official
`qwen-asr` toolkit, all measured in one run (docs/STYLE.md habit 14: ratios, with the conditions).

Subject: a real-size Qwen3-ASR checkpoint with random weights, built offline once and cached (a
random model of the real size has the real FLOPs; docs/DESIGN.md, "Measured costs"). Every clip generates
exactly `--tokens` tokens (`min_new_tokens` = `max_new_tokens`, no repetition guard), so the systems
do the same work whatever the random model writes.

Systems, all loaded at once and idle while another one runs:
- `engine`: qasr's scheduler driven in-process by N concurrent coroutines (the engine directly, the
  reference for HTTP overhead). One client is the sequential baseline: one clip at a time.
- `engine int8`: the same with `quantize="int8"` (`--compare-int8`).
- `http`: qasr's app (`create_app`) in its own process, through the DashScope endpoint with httpx:
  streamed (SSE) with N clients, and non-streamed with one client.
- `toolkit`: `qwen_asr.Qwen3ASRModel` (transformers backend) in its own venv and process: one call
  per clip, and one batched call over all the clips.

Shared machines change speed under a benchmark (other jobs; by several times on the machine this
was written on), so the work runs in rounds: each round runs every row once, in alternating order,
and each ratio is the median of its per-round ratios. A fixed matmul probe before each row shows how
fast the machine was at that moment.

Run `python bench/throughput.py --short` (a few minutes on 2 cores); see bench/README.md.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import io
import json
import os
import platform
import socket
import statistics
import subprocess
import sys
import time
import wave
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from qasr.engine.threads import in_passing_thread

SAMPLE_RATE = 16_000
CACHE_DIR = Path(os.environ.get("QASR_BENCH_CACHE", Path.home() / ".cache" / "qasr-bench"))
TOOLKIT_RUNNER = Path(__file__).with_name("toolkit_runner.py")
DASHSCOPE_PATH = "/api/v1/services/aigc/multimodal-generation/generation"


def loadavg() -> float:
    """The 1-minute load average."""
    return os.getloadavg()[0]


_PROBE: list[Any] = []


def probe_ms() -> float:
    """Median time of a fixed, memory-bound matmul (64 MB of fp32 weights, like a slice of one
    decoding step). Taken before each row: it shows whether the machine itself got slower."""
    return in_passing_thread(_probe)


def _probe() -> float:
    import torch

    if not _PROBE:
        gen = torch.Generator().manual_seed(0)
        _PROBE.extend([torch.randn(16, 2048, generator=gen), torch.randn(2048, 8192, generator=gen)])
    x, w = _PROBE
    times = []
    for _ in range(9):
        started = time.perf_counter()
        torch.mm(x, w)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), from /proc; None where there is none."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- subjects: checkpoints and clips ------------------------------------------------------------------


def checkpoint(size: str, seed: int, layout: Literal["hf", "original"]) -> Path:
    """The cached random-weight checkpoint, built on first use (bf16 on disk: half the bytes, and
    both layouts hold bit-identical weights)."""
    path = CACHE_DIR / f"{size}-seed{seed}-bf16-{layout}"
    if not (path / ".complete").exists():
        import torch

        from qasr.engine.testing import build_checkpoint

        log(f"building {path} (once)")
        build_checkpoint(path, size=size, ids="real", layout=layout, seed=seed, dtype=torch.bfloat16)
        (path / ".complete").write_text("ok\n")
    return path


def toolkit_copy(original: Path) -> Path:
    """The original-layout checkpoint as transformers 4.57 (the toolkit's pin) can read it.

    `build_checkpoint` saves the tokenizer with transformers 5, which writes `extra_special_tokens` as
    a list; 4.57 expects a dict and needs the audio tokens there. Weights are symlinked, not copied.
    """
    out = original.with_name(original.name + "-tf4")
    out.mkdir(exist_ok=True)
    for item in original.iterdir():
        link = out / item.name
        if item.name != "tokenizer_config.json" and not link.exists():
            link.symlink_to(item)
    config = json.loads((original / "tokenizer_config.json").read_text())
    if isinstance(config.get("extra_special_tokens"), list):
        names = ("audio_token", "audio_bos_token", "audio_eos_token")
        config["extra_special_tokens"] = {k: config[k] for k in names if k in config}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    return out


def make_clips(count: int, seconds: float, seed: int = 0) -> list[np.ndarray]:
    """Distinct noise clips (a random model transcribes noise as well as speech)."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE)
    return [(rng.standard_normal(n) * 0.1).astype(np.float32) for _ in range(count)]


def wav_data_uri(samples: np.ndarray) -> str:
    pcm = (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(SAMPLE_RATE)
        w.writeframes(pcm)
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


# --- measurements ---------------------------------------------------------------------------------------


@dataclass
class Sample:
    """One request as the client saw it."""

    audio_s: float
    latency_s: float
    ttft_s: float | None
    output_tokens: int | None


@dataclass
class Measured:
    """One row's work in one round."""

    wall_s: float
    samples: list[Sample]
    batches: list[int] = field(default_factory=list)

    @property
    def audio_per_s(self) -> float:
        return sum(s.audio_s for s in self.samples) / self.wall_s


@dataclass
class Row:
    """One line of the table: a system, a mode and a client count, over all rounds."""

    system: str
    mode: str
    clients: int
    run: Callable[[], Awaitable[Measured]]
    pid: int
    """The process that does the work (its CPU use is reported)."""
    rounds: list[Measured] = field(default_factory=list)
    cores: list[float] = field(default_factory=list)
    """CPU seconds per wall second of `pid` in each round: near the thread count when it computes."""
    probes_ms: list[float] = field(default_factory=list)
    loads: list[float] = field(default_factory=list)

    @property
    def samples(self) -> list[Sample]:
        return [s for m in self.rounds for s in m.samples]

    @property
    def audio_per_s(self) -> float:
        return sum(s.audio_s for s in self.samples) / sum(m.wall_s for m in self.rounds)

    @property
    def tokens_per_s(self) -> float | None:
        counts = [s.output_tokens for s in self.samples]
        if any(c is None for c in counts):
            return None
        return sum(c for c in counts if c is not None) / sum(m.wall_s for m in self.rounds)

    def latency(self, q: float) -> float:
        return quantile([s.latency_s for s in self.samples], q)

    def ttft(self, q: float) -> float | None:
        values = [s.ttft_s for s in self.samples if s.ttft_s is not None]
        return quantile(values, q) if values else None

    @property
    def batches(self) -> list[int]:
        return [b for m in self.rounds for b in m.batches]


def quantile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


def per_round(a: Row, b: Row, value: Callable[[Measured], float]) -> list[float]:
    """`value(a) / value(b)` in each round both ran in."""
    return [value(x) / value(y) for x, y in zip(a.rounds, b.rounds, strict=False)]


def throughput_ratio(a: Row, b: Row) -> list[float]:
    return per_round(a, b, lambda m: m.audio_per_s)


def mean_latency(m: Measured) -> float:
    return statistics.mean(s.latency_s for s in m.samples)


Send = Callable[[int], Awaitable[Sample]]


async def drive(send: Send, total: int, clients: int) -> Measured:
    """`clients` concurrent clients, each sending the next clip as soon as its previous one is answered."""
    next_index = iter(range(total))
    samples: list[Sample] = []

    async def client() -> None:
        for i in next_index:
            samples.append(await send(i))

    started = time.perf_counter()
    await asyncio.gather(*(client() for _ in range(clients)))
    return Measured(time.perf_counter() - started, samples)


# --- qasr in-process -------------------------------------------------------------------------------------


def load_engine(model_dir: Path, args: argparse.Namespace, quantize: str) -> Any:
    """qasr's engine with the benchmark's fixed output length, warmed up."""
    from qasr.engine.qwen3 import GenerationOptions, Qwen3ASREngine

    options = GenerationOptions(
        min_new_tokens=args.tokens, max_new_tokens_cap=args.tokens, guard_repetition=False
    )
    engine = Qwen3ASREngine.load(
        str(model_dir),
        device="cpu",
        dtype=args.dtype,
        quantize=quantize,
        threads=args.threads,
        options=options,
    )
    engine.warmup()
    return engine


class InProcess:
    """qasr's engine behind its scheduler, in a `Runtime` built as the server builds it, driven by
    coroutines.

    Each row gets a fresh runtime (and so a fresh scheduler), closed at its end, so that only one
    thread in this process computes at a time (see `in_passing_thread`) even with the int8 engine
    loaded beside this one."""

    def __init__(
        self, model_dir: Path, args: argparse.Namespace, quantize: str, clips: list[np.ndarray]
    ) -> None:
        from qasr.settings import Settings

        self.engine = in_passing_thread(lambda: load_engine(model_dir, args, quantize))
        self.settings = Settings(
            model=str(model_dir),
            max_batch_size=args.max_batch,
            max_wait_ms=args.max_wait_ms,
            max_hold_ms=args.max_hold_ms,
            max_queue=1024,
            vad=False,
            warmup=False,  # load_engine warmed it up
        )
        self.clips = clips
        self.scheduler: Any = None

    async def measure(self, total: int, clients: int) -> Measured:
        from qasr.runtime import Runtime

        runtime = Runtime.build(self.settings, self.engine)
        self.scheduler = runtime.scheduler
        try:
            measured = await drive(self.send, total, clients)
        finally:
            runtime.close()
        measured.batches = sorted(self.scheduler.batch_sizes.elements())
        return measured

    async def send(self, index: int) -> Sample:
        from qasr.types import EngineRequest

        clip = self.clips[index % len(self.clips)]
        first: list[float] = []
        started = time.perf_counter()

        def on_delta(delta: Any) -> None:
            if delta.text and not first:
                first.append(time.perf_counter())

        result = await self.scheduler.submit(EngineRequest(clip), on_delta=on_delta)
        done = time.perf_counter()
        ttft = first[0] - started if first else None
        return Sample(len(clip) / SAMPLE_RATE, done - started, ttft, result.output_tokens)


# --- qasr over HTTP ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_settings(model_dir: Path, args: argparse.Namespace, port: int) -> Any:
    """The server's settings, matching the in-process engine's conditions."""
    from qasr.settings import Settings

    return Settings(
        model=str(model_dir),
        device="cpu",
        dtype=args.dtype,
        threads=args.threads,
        host="127.0.0.1",
        port=port,
        max_batch_size=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_hold_ms=args.max_hold_ms,
        max_queue=1024,
        # The clips are noise: VAD would (rightly) send nothing to the model. The engine rows skip
        # VAD too, so both paths do the same model work.
        vad=False,
    )


def serve_child(argv: list[str]) -> int:
    """The server process: qasr's own app factory (`create_app(settings, engine=...)`) around an engine
    loaded like the in-process one, so every clip writes exactly `--tokens` tokens. `qasr serve` has no
    setting for a fixed output length (see bench/README.md for the hook that would let it)."""
    import uvicorn

    from qasr.api.app import create_app

    args = parse_args(argv)
    settings = server_settings(args.hf_dir, args, args.port)
    engine = in_passing_thread(lambda: load_engine(args.hf_dir, args, "none"))
    record_batches(engine, server_batches_file(args.port))
    uvicorn.run(create_app(settings, engine=engine), host="127.0.0.1", port=args.port, log_level="warning")
    return 0


def server_batches_file(port: int) -> Path:
    return CACHE_DIR / f"server-{port}-batches.txt"


def record_batches(engine: Any, path: Path) -> None:
    """Append each model batch's size to `path` (the benchmark reads the server's batches from it)."""
    path.write_text("")
    run = engine.run

    def recorded(jobs: Any) -> Any:
        with open(path, "a") as out:
            out.write(f"{len(jobs)}\n")
        return run(jobs)

    engine.run = recorded


def read_batches(path: Path) -> list[int]:
    with contextlib.suppress(OSError):
        return [int(line) for line in path.read_text().split()]
    return []


@contextlib.contextmanager
def qasr_server(model_dir: Path, args: argparse.Namespace) -> Iterator[tuple[str, int]]:
    """A qasr server on a free loopback port, in its own process, configured like the in-process engine."""
    port = args.port_used = free_port()
    cmd = [sys.executable, str(Path(__file__).resolve()), "_serve", *args.argv]
    cmd += ["--hf-dir", str(model_dir), "--port", str(port)]
    log("starting " + " ".join(cmd))
    logfile = CACHE_DIR / "server.log"
    with open(logfile, "wb") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_until_up(proc, base, timeout_s=900, logfile=logfile)
        yield base, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()


def _wait_until_up(proc: subprocess.Popen[bytes], base: str, timeout_s: float, logfile: Path) -> None:
    import httpx

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"the qasr server exited with {proc.returncode}; see {logfile}")
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(base + "/health", timeout=2).status_code == 200:
                return
        time.sleep(1)
    raise RuntimeError(f"the qasr server did not come up in {timeout_s:.0f} s; see {logfile}")


class HttpClient:
    """DashScope requests with httpx, streamed (SSE) or not."""

    def __init__(self, base: str, clips: list[np.ndarray], tokens: int | None) -> None:
        """`tokens`: the output length the server was started with, if known. DashScope's `usage`
        counts the tokens of the returned text (re-tokenized), not the tokens generated."""
        import httpx

        self.tokens = tokens

        self.url = base + DASHSCOPE_PATH
        self.clips = clips
        self.bodies = [self._body(wav_data_uri(c)) for c in clips]
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=256)
        self.client = httpx.AsyncClient(timeout=httpx.Timeout(900.0), limits=limits)

    @staticmethod
    def _body(uri: str) -> bytes:
        body = {
            "model": "qwen3-asr-flash",
            "input": {"messages": [{"role": "user", "content": [{"audio": uri}]}]},
            "parameters": {"result_format": "message", "incremental_output": True},
        }
        return json.dumps(body).encode()

    def _clip(self, index: int) -> tuple[float, bytes]:
        i = index % len(self.clips)
        return len(self.clips[i]) / SAMPLE_RATE, self.bodies[i]

    async def send_plain(self, index: int) -> Sample:
        audio_s, body = self._clip(index)
        started = time.perf_counter()
        response = await self.client.post(
            self.url, content=body, headers={"Content-Type": "application/json"}
        )
        done = time.perf_counter()
        response.raise_for_status()
        response.json()
        return Sample(audio_s, done - started, None, self.tokens)

    async def send_stream(self, index: int) -> Sample:
        audio_s, body = self._clip(index)
        headers = {"Content-Type": "application/json", "X-DashScope-SSE": "enable"}
        first: float | None = None
        started = time.perf_counter()
        async with self.client.stream("POST", self.url, content=body, headers=headers) as response:
            response.raise_for_status()
            async for line in response.aiter_lines():
                if not line.startswith("data:"):
                    continue
                chunk = json.loads(line[5:])
                if "output" not in chunk:
                    raise RuntimeError(f"error event: {line[:300]}")
                if first is None and _text(chunk):
                    first = time.perf_counter()
        done = time.perf_counter()
        ttft = None if first is None else first - started
        return Sample(audio_s, done - started, ttft, self.tokens)

    async def close(self) -> None:
        await self.client.aclose()


def _text(chunk: dict[str, Any]) -> str:
    try:
        return str(chunk["output"]["choices"][0]["message"]["content"][0]["text"])
    except (KeyError, IndexError, TypeError):
        return ""


# --- the official toolkit ------------------------------------------------------------------------------------


class ToolkitWorker:
    """`bench/toolkit_runner.py` running in the toolkit's venv, answering one command at a time."""

    def __init__(self, model_dir: Path, clips: list[np.ndarray], args: argparse.Namespace) -> None:
        clips_file = CACHE_DIR / "clips.npy"
        np.save(clips_file, np.stack(clips))
        self.audio_s = len(clips[0]) / SAMPLE_RATE
        cmd = [args.toolkit_python, str(TOOLKIT_RUNNER), "--model", str(toolkit_copy(model_dir))]
        cmd += ["--clips", str(clips_file), "--tokens", str(args.tokens), "--dtype", args.dtype]
        cmd += ["--batch-size", str(args.toolkit_batch)]
        if args.threads:
            cmd += ["--threads", str(args.threads)]
        log("starting " + " ".join(cmd))
        self.logfile = CACHE_DIR / "toolkit.log"
        with open(self.logfile, "wb") as err:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True
            )
        self.info: dict[str, Any] = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the toolkit runner exited with {self.proc.wait()}; see {self.logfile}")
        return dict(json.loads(line))

    def _call(self, op: str, clips: list[int], batch_size: int | None = None) -> dict[str, Any]:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"op": op, "clips": clips, "batch_size": batch_size}) + "\n")
        self.proc.stdin.flush()
        return self._read()

    async def run(self, op: str, clips: list[int], batch_size: int | None = None) -> Measured:
        out = await asyncio.to_thread(self._call, op, clips, batch_size)
        log(f"toolkit {op}: load {out['loadavg'][0]:.2f}, rusage {out['rusage']}")
        tokens = out["output_tokens"]
        samples = [
            Sample(self.audio_s, lat, None, n) for lat, n in zip(out["latencies_s"], tokens, strict=True)
        ]
        return Measured(out["wall_s"], samples, out["batch_sizes"])

    def close(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self._call_quit()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()

    def _call_quit(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write('{"op": "quit"}\n')
        self.proc.stdin.close()


# --- the plan: which rows, in rounds -------------------------------------------------------------------------


async def engine_rows(name: str, engine: InProcess, args: argparse.Namespace, levels: list[int]) -> list[Row]:
    await engine.measure(1, 1)  # the first full-length clip after loading is slower; not measured

    def make(clients: int) -> Callable[[], Awaitable[Measured]]:
        return lambda: engine.measure(requests(args, clients), clients)

    return [Row(name, "sequential" if n == 1 else "batcher", n, make(n), os.getpid()) for n in levels]


async def http_rows(client: HttpClient, args: argparse.Namespace, server_pid: int) -> list[Row]:
    await client.send_stream(0)  # warm the connection and the server's decode path
    await client.send_plain(0)

    batches = server_batches_file(args.port_used)

    def make(send: Send, clients: int) -> Callable[[], Awaitable[Measured]]:
        async def run() -> Measured:
            before = len(read_batches(batches))
            measured = await drive(send, requests(args, clients), clients)
            measured.batches = read_batches(batches)[before:]
            return measured

        return run

    rows = [Row("http", "non-streamed", 1, make(client.send_plain, 1), server_pid)]
    rows += [Row("http", "SSE", n, make(client.send_stream, n), server_pid) for n in args.levels]
    return rows


def toolkit_rows(worker: ToolkitWorker, args: argparse.Namespace) -> list[Row]:
    sequential = list(range(requests(args, 1)))
    everything = list(range(args.clips))

    def make(op: str, clips: list[int], batch_size: int | None = None) -> Callable[[], Awaitable[Measured]]:
        return lambda: worker.run(op, clips, batch_size)

    pid = worker.proc.pid
    rows = [
        Row("toolkit", "one call per clip", 1, make("per_clip", sequential), pid),
        Row(
            "toolkit", f"one batched call ({args.clips} clips)", args.clips, make("batched", everything), pid
        ),
    ]
    if args.clips > args.max_batch:  # also at qasr's batch size, for a like-for-like batch
        mode = f"one batched call ({args.clips} clips, batches of {args.max_batch})"
        rows.append(Row("toolkit", mode, args.max_batch, make("batched", everything, args.max_batch), pid))
    return rows


def requests(args: argparse.Namespace, clients: int) -> int:
    """Requests per row per round: the sequential rows take fewer (their rate is steady sooner)."""
    return args.seq_clips if clients == 1 else max(args.clips, clients)


async def run_rounds(rows: list[Row], rounds: int) -> None:
    for r in range(rounds):
        # Alternate the order (ABBA) so a drift in machine speed does not favour one row.
        for row in rows if r % 2 == 0 else reversed(rows):
            row.loads.append(loadavg())
            row.probes_ms.append(probe_ms())
            cpu_start = cpu_seconds(row.pid)
            measured = await row.run()
            cpu_end = cpu_seconds(row.pid)
            if cpu_start is not None and cpu_end is not None:
                row.cores.append((cpu_end - cpu_start) / measured.wall_s)
            row.rounds.append(measured)
            log(
                f"round {r + 1}/{rounds} {row.system} {row.mode} x{row.clients}: "
                f"{measured.audio_per_s:.2f} audio s/s in {measured.wall_s:.1f} s "
                f"(probe {row.probes_ms[-1]:.1f} ms, {row.cores[-1] if row.cores else 0:.2f} cores busy)"
            )


# --- report ---------------------------------------------------------------------------------------------------


def _spread(values: Sequence[float], fmt: str = "{:.2f}") -> str:
    if not values:
        return "-"
    med = fmt.format(statistics.median(values))
    if len(values) == 1:
        return med
    return f"{med} ({fmt.format(min(values))}-{fmt.format(max(values))})"


def table(rows: list[Row], baseline: Row | None) -> str:
    lines = [
        "| system | mode | clients | requests | audio s/s | x sequential | latency p50 / p95 (s) | TTFT p50 (s) "
        "| output tok/s | cores busy | probe ms | load avg |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if not r.rounds:
            continue
        ratio = _spread(throughput_ratio(r, baseline)) if baseline and baseline.rounds else "-"
        ttft = r.ttft(0.5)
        tps = r.tokens_per_s
        lines.append(
            f"| {r.system} | {r.mode} | {r.clients} | {len(r.samples)} | {r.audio_per_s:.2f} | {ratio} "
            f"| {r.latency(0.5):.2f} / {r.latency(0.95):.2f} | {'-' if ttft is None else f'{ttft:.2f}'} "
            f"| {'-' if tps is None else f'{tps:.1f}'} | {_spread(r.cores)} | {_spread(r.probes_ms, '{:.1f}')} "
            f"| {_spread(r.loads)} |"
        )
    return "\n".join(lines)


def findings(rows: list[Row], args: argparse.Namespace) -> list[str]:
    def find(system: str, clients: int | None = None, mode: str = "") -> Row | None:
        for r in rows:
            if r.system == system and r.rounds and r.mode.startswith(mode) and clients in (None, r.clients):
                return r
        return None

    top = 8 if 8 in args.levels else max(args.levels)
    seq, best = find("engine", 1), find("engine", top)
    http_best, http_plain = find("http", top, "SSE"), find("http", 1, "non")
    int8_seq, int8_best = find("engine int8", 1), find("engine int8", top)
    tk_clip, tk_batch = find("toolkit", mode="one call"), find("toolkit", mode="one batched")
    out = []

    def ratio(label: str, a: Row | None, b: Row | None, target: str = "") -> None:
        if a and b:
            out.append(f"{label}: {_spread(throughput_ratio(a, b))}x audio s/s{target}")

    ratio(f"engine, {top} clients vs sequential", best, seq, " (target >= 3)")
    ratio(f"engine, {top} clients vs toolkit batched call", best, tk_batch, " (target >= 1)")
    tk_same = next((r for r in rows if r.system == "toolkit" and "batches of" in r.mode and r.rounds), None)
    ratio(f"engine, {top} clients vs toolkit batched call in batches of {args.max_batch}", best, tk_same)
    ratio(f"HTTP, {top} clients vs toolkit batched call", http_best, tk_batch)
    ratio(f"HTTP vs engine, {top} clients", http_best, best)
    ratio("engine sequential vs toolkit one call per clip", seq, tk_clip)
    ratio(f"engine int8 vs bf16/fp32, {top} clients", int8_best, best)
    ratio("engine int8 vs bf16/fp32, sequential", int8_seq, seq)
    ratio(f"engine int8, {top} clients vs toolkit batched call", int8_best, tk_batch)
    if http_plain and seq:
        overhead = per_round(http_plain, seq, mean_latency)
        out.append(
            f"HTTP (non-streamed) / engine single-request latency: {_spread(overhead, '{:.3f}')} (target <= 1.05)"
        )
    for row in (best, http_best):
        if row and row.batches:
            sizes = sorted(set(row.batches), reverse=True)
            summary = ", ".join(f"{row.batches.count(k)}x size {k}" for k in sizes)
            out.append(f"{row.system} {row.mode}, {top} clients: model batches {summary}")
    for r in rows:
        counts_ = [s.output_tokens for s in r.samples if s.output_tokens is not None]
        if counts_ and set(counts_) != {args.tokens}:
            out.append(
                f"WARNING {r.system} {r.mode}: output tokens {sorted(set(counts_))}, expected {args.tokens}"
            )
    return out


def conditions(args: argparse.Namespace, toolkit: dict[str, Any] | None) -> str:
    import torch
    import transformers

    cpu = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    text = (
        f"model {args.size} (random weights, real shapes), dtype {args.dtype}, threads "
        f"{args.threads or torch.get_num_threads()}, {os.cpu_count()} CPUs ({cpu}); {args.clips} distinct clips of "
        f"{args.clip_s:g} s, {args.tokens} output tokens each; {args.rounds} rounds; batcher max batch "
        f"{args.max_batch}, max wait {args.max_wait_ms:g} ms, max hold {args.max_hold_ms:g} ms; qasr on torch {torch.__version__}, transformers {transformers.__version__}"
    )
    if toolkit:
        text += (
            f"; toolkit qwen-asr {toolkit['qwen_asr']} on torch {toolkit['torch']}, transformers "
            f"{toolkit['transformers']}, {toolkit['threads']} threads"
        )
    return text


def row_json(r: Row) -> dict[str, Any]:
    return {
        "system": r.system,
        "mode": r.mode,
        "clients": r.clients,
        "rounds": [
            {
                "wall_s": m.wall_s,
                "audio_per_s": m.audio_per_s,
                "latencies_s": [s.latency_s for s in m.samples],
            }
            for m in r.rounds
        ],
        "audio_per_s": r.audio_per_s,
        "latency_p50_s": r.latency(0.5),
        "latency_p95_s": r.latency(0.95),
        "ttft_p50_s": r.ttft(0.5),
        "batches": r.batches,
        "probes_ms": r.probes_ms,
        "cores_busy": r.cores,
        "loads": r.loads,
    }


# --- main -------------------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--short", action="store_true", help="a few minutes on 2 cores: 1 and 8 clients, fewer clips"
    )
    p.add_argument("--size", default="0.6B", choices=["0.6B", "1.7B"])
    p.add_argument("--seed", type=int, default=0, help="weights seed (same for qasr and the toolkit)")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])
    p.add_argument(
        "--threads", type=int, default=None, help="torch threads everywhere (default: one per core)"
    )
    p.add_argument("--concurrency", default=None, help="client counts (default 1,4,8,16; --short 1,8)")
    p.add_argument(
        "--clips", type=int, default=None, help="distinct clips; requests per row (default 16; short 8)"
    )
    p.add_argument(
        "--seq-clips", type=int, default=None, help="requests per sequential row (default 8; short 4)"
    )
    p.add_argument("--clip-s", type=float, default=10.0, help="clip length in seconds")
    p.add_argument("--tokens", type=int, default=None, help="output tokens per clip (default 40; --short 16)")
    p.add_argument("--rounds", type=int, default=None, help="rounds (default 3; --short 2)")
    p.add_argument(
        "--max-batch", type=int, default=8, help="scheduler max_batch_size (the server's default: 8)"
    )
    p.add_argument(
        "--max-wait-ms", type=float, default=10.0, help="scheduler max_wait_ms (the server's default: 10)"
    )
    p.add_argument(
        "--max-hold-ms", type=float, default=200.0, help="scheduler max_hold_ms (the server's default: 200)"
    )
    p.add_argument("--systems", default="engine,http,toolkit", help="which of engine,http,toolkit to run")
    p.add_argument("--compare-int8", action="store_true", help="add engine rows with quantize=int8")
    p.add_argument("--server-url", default=None, help="a running qasr server instead of starting one")
    p.add_argument("--toolkit-python", default=str(CACHE_DIR / "toolkit-venv" / "bin" / "python"))
    p.add_argument("--toolkit-batch", type=int, default=32, help="the toolkit's max_inference_batch_size")
    p.add_argument("--json", type=Path, default=None, help="also write the rows as JSON here")
    p.add_argument("--hf-dir", type=Path, default=None, help=argparse.SUPPRESS)  # for the server process
    p.add_argument("--port", type=int, default=0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.port_used = 0
    args.levels = [int(x) for x in (args.concurrency or ("1,8" if args.short else "1,4,8,16")).split(",")]
    args.tokens = args.tokens or (16 if args.short else 40)
    args.clips = args.clips or (8 if args.short else 16)
    args.seq_clips = args.seq_clips or min(args.clips, 4 if args.short else 8)
    args.rounds = args.rounds or (2 if args.short else 3)
    args.systems = set(args.systems.split(","))
    return args


async def main_async(args: argparse.Namespace) -> int:
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    load_start = os.getloadavg()
    hf_dir = checkpoint(args.size, args.seed, "hf")
    clips = make_clips(args.clips, args.clip_s)
    rows: list[Row] = []
    notes: list[str] = []
    with contextlib.ExitStack() as stack:
        if "engine" in args.systems or "http" in args.systems:
            engine = InProcess(hf_dir, args, "none", clips)  # also the engine-direct reference for HTTP
            if "engine" in args.systems:
                rows += await engine_rows("engine", engine, args, args.levels)
            else:
                rows += await engine_rows("engine", engine, args, [1])
        if args.compare_int8:
            int8 = InProcess(hf_dir, args, "int8", clips)
            top = 8 if 8 in args.levels else max(args.levels)
            rows += await engine_rows("engine int8", int8, args, sorted({1, top}))
        client = None
        if "http" in args.systems:
            try:
                base, pid = (
                    (args.server_url, 0)
                    if args.server_url
                    else stack.enter_context(qasr_server(hf_dir, args))
                )
                client = HttpClient(base, clips, None if args.server_url else args.tokens)
                rows += await http_rows(client, args, pid)
            except Exception as exc:  # report what can be measured; the failure becomes a note
                log(f"no HTTP rows: {exc!r}")
                notes.append(f"no HTTP rows: {type(exc).__name__}: {exc}")
        toolkit_info = None
        if "toolkit" in args.systems:
            try:
                worker = ToolkitWorker(checkpoint(args.size, args.seed, "original"), clips, args)
                stack.callback(worker.close)
                toolkit_info = worker.info
                rows += toolkit_rows(worker, args)
            except Exception as exc:
                log(f"no toolkit rows: {exc!r}")
                notes.append(f"no toolkit rows: {type(exc).__name__}: {exc} (see bench/README.md)")
        try:
            await run_rounds(rows, args.rounds)
        finally:
            if client is not None:
                await client.close()

    baseline = next((r for r in rows if r.system == "engine" and r.clients == 1), None)
    print(f"\nConditions: {conditions(args, toolkit_info)}")
    print(
        f"Load average (1/5/15 min) at start {_fmt_load(load_start)}, at end {_fmt_load(os.getloadavg())}.\n"
    )
    print(table(rows, baseline))
    print()
    for line in [*notes, *findings(rows, args)]:
        print(f"- {line}")
    if args.json:
        args.json.write_text(json.dumps([row_json(r) for r in rows], indent=2))
    return 0


def _fmt_load(load: tuple[float, float, float]) -> str:
    return " / ".join(f"{x:.2f}" for x in load)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["_serve"]:
        return serve_child(argv[1:])
    return asyncio.run(main_async(parse_args(argv)))


if __name__ == "__main__":
    raise SystemExit(main())
