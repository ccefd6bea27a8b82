"""`qasr serve | transcribe`: parse arguments, build Settings, call the library."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from qasr.errors import QasrError
from qasr.settings import Settings


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    # A server logs its requests; a one-off transcription stays quiet unless asked.
    quiet = args.command == "transcribe" and not args.verbose
    logging.basicConfig(
        level=logging.WARNING if quiet else logging.INFO, format="%(levelname)s:     %(message)s"
    )
    try:
        settings = _settings(args)
        if args.command == "serve":
            return _serve(settings, args)
        return _transcribe(settings, args)
    except QasrError as exc:
        print(f"qasr: {exc.message}", file=sys.stderr)
        return 2
    except ValueError as exc:  # settings validation
        print(f"qasr: {exc}", file=sys.stderr)
        return 2


def _model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", help="local directory, Hugging Face id, or modelscope:<id> (QASR_MODEL)")
    p.add_argument("--device", help="auto, cpu, cuda, cuda:N (QASR_DEVICE)")
    p.add_argument("--dtype", choices=["auto", "float32", "bfloat16", "float16"], help="(QASR_DTYPE)")
    p.add_argument(
        "--quantize", choices=["none", "int8"], help="int8 dynamic quantization on CPU (QASR_QUANTIZE)"
    )
    p.add_argument("--threads", type=int, help="torch threads (QASR_THREADS)")
    p.add_argument(
        "--no-vad", dest="vad", action="store_false", default=None, help="no voice-activity gating"
    )
    p.add_argument(
        "--segment-max-s", type=float, help="longest segment sent to the model (QASR_SEGMENT_MAX_S)"
    )
    p.add_argument("-v", "--verbose", action="store_true")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qasr", description="Self-hosted Qwen3-ASR speech recognition.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("transcribe", help="transcribe files or URLs and print the results")
    t.add_argument("inputs", nargs="+", metavar="FILE_OR_URL")
    t.add_argument("--language", help="language code to force (zh, en, yue, ...); default: detect")
    ctx = t.add_mutually_exclusive_group()
    ctx.add_argument("--context", default="", help="context text: hotwords, names, domain terms")
    ctx.add_argument("--context-file", type=Path, help="read the context text from a file")
    t.add_argument("--format", choices=["text", "json", "srt", "vtt"], default="text")
    t.add_argument(
        "--itn", action="store_true", help="inverse text normalization (zh, en): numbers as digits"
    )
    _model_options(t)

    s = sub.add_parser("serve", help="run the HTTP API (DashScope and OpenAI compatible)")
    s.add_argument("--host", help="bind address (default 127.0.0.1)")
    s.add_argument("--port", type=int, help="port (default 8000)")
    s.add_argument("--api-key", action="append", dest="api_keys", help="accepted API key (repeatable)")
    s.add_argument(
        "--allow-local-dir", action="append", dest="allow_local_dirs", help="server dir callers may read"
    )
    s.add_argument(
        "--allow-url-host", action="append", dest="allow_url_hosts", help="private host callers may fetch"
    )
    s.add_argument(
        "--url-map", action="append", metavar="PREFIX=TARGET", help="mirror a URL prefix (repeatable)"
    )
    s.add_argument("--max-audio-bytes", type=int, help="largest audio input (default 10 MB)")
    s.add_argument("--max-audio-s", type=float, help="longest audio input (default 300 s)")
    s.add_argument("--public-base-url", help="URL clients reach this server at, when behind a proxy")
    s.add_argument("--max-batch-size", type=int)
    s.add_argument("--max-wait-ms", type=float)
    s.add_argument("--max-queue", type=int)
    s.add_argument("--max-hold-ms", type=float, help="wait for requests being decoded (default 200)")
    s.add_argument(
        "--allow-open-network",
        action="store_true",
        help="allow a non-loopback --host without API keys (anyone who can reach it can use it)",
    )
    _model_options(s)
    return parser


_SETTING_ARGS = [
    "model",
    "device",
    "dtype",
    "quantize",
    "threads",
    "vad",
    "segment_max_s",
    "host",
    "port",
    "api_keys",
    "allow_local_dirs",
    "allow_url_hosts",
    "max_audio_bytes",
    "max_audio_s",
    "public_base_url",
    "max_batch_size",
    "max_wait_ms",
    "max_queue",
    "max_hold_ms",
]


def _settings(args: argparse.Namespace) -> Settings:
    """Environment (QASR_*) first, then the command line on top."""
    base = Settings()
    overrides: dict[str, Any] = {
        k: getattr(args, k) for k in _SETTING_ARGS if getattr(args, k, None) is not None
    }
    if getattr(args, "url_map", None):
        mapping = dict(base.url_map)
        for item in args.url_map:
            prefix, sep, target = item.partition("=")
            if not sep or not prefix or not target:
                raise ValueError(f"--url-map needs PREFIX=TARGET, got {item!r}")
            mapping[prefix] = target
        overrides["url_map"] = mapping
    return base.model_copy(update=overrides)


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn

    from qasr.api.app import create_app

    loopback = settings.host in {"127.0.0.1", "localhost", "::1"}
    if not settings.api_keys and not loopback and not args.allow_open_network:
        print(
            f"qasr: refusing to listen on {settings.host} without API keys: pass --api-key KEY "
            "(or set QASR_API_KEYS), or --allow-open-network if that is really intended.",
            file=sys.stderr,
        )
        return 2
    from qasr.api.app import load_engine
    from qasr.engine.threads import in_passing_thread

    # Load before the server starts: a model that cannot be had is one clear line and exit code 2,
    # not a traceback inside uvicorn's start-up. In a thread that ends: see qasr.engine.threads.
    engine = in_passing_thread(lambda: load_engine(settings))
    # log_config=None: uvicorn logs through the same root handler as qasr, one format for both.
    uvicorn.run(create_app(settings, engine), host=settings.host, port=settings.port, log_config=None)
    return 0


def _transcribe(settings: Settings, args: argparse.Namespace) -> int:
    from qasr.text.languages import normalize_code
    from qasr.types import TranscribeOptions

    context = args.context_file.read_text(encoding="utf-8") if args.context_file else args.context
    options = TranscribeOptions(language=normalize_code(args.language), context=context, enable_itn=args.itn)
    return asyncio.run(_transcribe_all(settings, args.inputs, options, args.format))


async def _transcribe_all(settings: Settings, inputs: list[str], options: Any, fmt: str) -> int:
    from tqdm import tqdm

    from qasr.api.app import batch_policy, load_engine, pipeline_options
    from qasr.audio.sources import SourcePolicy
    from qasr.engine.batcher import Batcher
    from qasr.engine.threads import in_passing_thread
    from qasr.transcriber import Transcriber

    quiet = settings.model_copy(update={"warmup": False})
    engine = await asyncio.to_thread(in_passing_thread, lambda: load_engine(quiet))
    batcher = Batcher(engine, batch_policy(settings))
    batcher.start()
    # The local user may read any of their files; no duration or size limits apply to the CLI.
    policy = SourcePolicy(allow_any_local=True, timeout_s=settings.download_timeout_s)
    failed = 0
    try:
        transcriber = await asyncio.to_thread(Transcriber, batcher, None, pipeline_options(settings))
        bar = tqdm(total=len(inputs), unit="file", disable=len(inputs) < 2, file=sys.stderr)
        for source in inputs:
            bar.set_description(Path(source).name[:40])

            def progress(segments: int, seconds: float, bar: Any = bar) -> None:
                bar.set_postfix_str(f"{segments} segments, {seconds:.0f} s")

            try:
                transcript = await transcriber.transcribe(source, options, policy=policy, progress=progress)
            except QasrError as exc:
                failed += 1
                tqdm.write(f"qasr: {source}: {exc.message}", file=sys.stderr)
            else:
                tqdm.write(_render(source, transcript, fmt, several=len(inputs) > 1), file=sys.stdout)
            bar.update(1)
        bar.close()
    finally:
        batcher.close()
    return 1 if failed else 0


def _render(source: str, transcript: Any, fmt: str, several: bool) -> str:
    from qasr.text.subtitles import to_srt, to_vtt

    if fmt == "json":
        return json.dumps(
            {
                "input": source,
                "language": transcript.language,
                "text": transcript.text,
                "duration": round(transcript.duration_s, 3),
                "segments": [
                    {
                        "start": round(s.start_s, 3),
                        "end": round(s.end_s, 3),
                        "text": s.text,
                        "language": s.language,
                    }
                    for s in transcript.segments
                ],
            },
            ensure_ascii=False,
        )
    if fmt == "srt":
        body = to_srt(transcript.segments)
    elif fmt == "vtt":
        body = to_vtt(transcript.segments)
    else:
        body = transcript.text
    return f"==> {source} <==\n{body}" if several else body


if __name__ == "__main__":
    sys.exit(main())
