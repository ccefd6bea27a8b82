"""`qasr serve | transcribe`: parse arguments, build Settings, call the library.

Options backed by a `Settings` field take their help text and default from that field (its docstring
and value), so `--help` and the environment variables can never disagree.
"""

from __future__ import annotations

import argparse
import asyncio
import errno
import json
import logging
import os
import socket
import sys
import typing
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from qasr import logs
from qasr.cli_transcribe import Progress, TranscribeRun
from qasr.errors import QasrError
from qasr.settings import Settings

log = logging.getLogger(__name__)
INTERRUPTED = 130
"""Exit code after Ctrl-C: the shell's 128 + SIGINT."""


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = _settings(args)
        # A server logs its requests; a one-off transcription stays quiet unless asked; -vv: debug.
        verbose = max(args.verbose, 1) if args.command == "serve" else args.verbose
        level = logging.DEBUG if verbose >= 2 else logging.INFO if verbose == 1 else logging.WARNING
        logs.configure(level, settings.log_format)
        if args.command == "serve":
            return _serve(settings, args)
        return _transcribe(settings, args)
    except QasrError as exc:
        print(f"qasr: {exc.message}", file=sys.stderr)
        return 2
    except ValidationError as exc:
        print(f"qasr: {_invalid_settings(exc)}", file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"qasr: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before or after a transcription's own report (loading, start-up)
        print("qasr: interrupted", file=sys.stderr)
        return INTERRUPTED


def version() -> str:
    """The installed distribution's version; the package's own when run from a source tree."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as dist_version

    try:
        return dist_version("qasr")
    except PackageNotFoundError:
        from qasr import __version__

        return __version__


# --- options -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Option:
    """A command-line option for one Settings field. Its help is the field's docstring; its default,
    choices and type come from the field; its own default stays None, so that QASR_* applies."""

    flag: str
    name: str
    """The Settings field."""
    lead: str = ""
    """Said before the field's docstring in --help."""
    metavar: str | None = None

    def add_to(self, p: argparse.ArgumentParser) -> None:
        info = Settings.model_fields[self.name]
        about = " ".join(f"{self.lead} {info.description or ''}".replace("`", "").split())
        shown = info.get_default(call_default_factory=True)
        kwargs = _argument_kind(info.annotation, shown)
        if kwargs.get("action") in ("store_false", "store_true"):
            shown = "on" if shown else "off"
        elif shown in (None, [], {}):
            shown = "none"
        help_text = f"{about} [default: {shown}; env QASR_{self.name.upper()}]"
        if self.metavar is not None:
            kwargs["metavar"] = self.metavar
        p.add_argument(self.flag, dest=self.name, help=help_text.replace("%", "%%"), **kwargs)


def _argument_kind(annotation: Any, default: Any) -> dict[str, Any]:
    """argparse's choices, type or action for a Settings field's type (and default, for a switch)."""
    origin = typing.get_origin(annotation)
    if origin is typing.Literal:
        return {"choices": typing.get_args(annotation)}
    if origin in (list, dict):
        return {"action": "append"}  # repeatable; a dict's items are KEY=VALUE (see _settings)
    if annotation is bool:  # a switch: the flag turns a default-on feature off, a default-off one on
        return {"action": "store_false" if default else "store_true", "default": None}
    scalars = [a for a in typing.get_args(annotation) or (annotation,) if a is not type(None)]
    return {"type": scalars[0]} if len(scalars) == 1 and scalars[0] in (int, float) else {}


_MODEL_OPTIONS = (
    _Option("--model", "model"),
    _Option("--device", "device"),
    _Option("--dtype", "dtype"),
    _Option("--quantize", "quantize"),
    _Option("--cpu-linear", "cpu_linear"),
    _Option("--threads", "threads"),
    _Option("--aligner", "aligner"),
    _Option("--no-vad", "vad", "Turn off voice-activity detection."),
    _Option("--segment-max-s", "segment_max_s"),
)
_SOURCE_OPTIONS = (  # where audio may come from: serve and transcribe alike
    _Option("--url-map", "url_map", "Repeatable; added to QASR_URL_MAP.", "PREFIX=TARGET"),
    _Option("--allow-url-host", "allow_url_hosts", "Repeatable.", "HOST"),
)
_SERVE_OPTIONS = (
    _Option("--host", "host"),
    _Option("--port", "port"),
    _Option("--api-key", "api_keys", "Repeatable.", "KEY"),
    _Option("--allow-local-dir", "allow_local_dirs", "Repeatable.", "DIR"),
    *_SOURCE_OPTIONS,
    _Option("--max-audio-bytes", "max_audio_bytes"),
    _Option("--max-audio-s", "max_audio_s"),
    _Option("--public-base-url", "public_base_url"),
    _Option("--max-batch-size", "max_batch_size"),
    _Option("--max-wait-ms", "max_wait_ms"),
    _Option("--max-queue", "max_queue"),
    _Option("--max-hold-ms", "max_hold_ms"),
    _Option("--max-queue-wait-s", "max_queue_wait_s"),
    _Option("--request-timeout-s", "request_timeout_s"),
    _Option("--max-connections", "max_connections"),
    _Option("--receive-timeout-s", "receive_timeout_s"),
    _Option("--drain-timeout-s", "drain_timeout_s"),
    _Option("--metrics-public", "metrics_public"),
    _Option("--log-format", "log_format"),
    _Option("--data-dir", "data_dir"),
    _Option("--upload-dir", "upload_dir"),
    _Option("--jobs-dir", "jobs_dir"),
    _Option("--jobs-concurrency", "jobs_concurrency"),
    _Option("--jobs-retention-s", "jobs_retention_s"),
    _Option("--jobs-max-tasks", "jobs_max_tasks"),
    _Option("--jobs-max-audio-s", "jobs_max_audio_s"),
    _Option("--jobs-max-audio-bytes", "jobs_max_audio_bytes"),
    _Option("--live-max-sessions", "live_max_sessions"),
    _Option("--live-max-session-s", "live_max_session_s"),
    _Option("--live-idle-timeout-s", "live_idle_timeout_s"),
    _Option("--live-max-append-bytes", "live_max_append_bytes"),
    _Option("--live-token-ttl-s", "live_token_ttl_s"),
    _Option("--live-max-utterance-s", "live_max_utterance_s"),
    _Option("--live-step-tokens", "live_step_tokens"),
)
_FLAGS = {o.name: o.flag for o in (*_SERVE_OPTIONS, *_MODEL_OPTIONS)}
"""Settings field -> its option, to name both in a validation error."""


def _model_options(p: argparse.ArgumentParser) -> None:
    for option in _MODEL_OPTIONS:
        option.add_to(p)
    p.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="log what qasr does (loading, requests); -vv: debug, which includes transcripts",
    )


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="qasr", description="Self-hosted Qwen3-ASR speech recognition.")
    parser.add_argument("--version", action="version", version=f"qasr {version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    _transcribe_parser(sub)
    _serve_parser(sub)
    return parser


def _transcribe_parser(sub: Any) -> None:
    t = sub.add_parser("transcribe", help="transcribe files or URLs and print the results")
    t.add_argument("inputs", nargs="+", metavar="FILE_OR_URL", help="local files, http(s) URLs, data: URIs")
    t.add_argument("--language", help="language code to force (zh, en, yue, ...) [default: detect]")
    ctx = t.add_mutually_exclusive_group()
    ctx.add_argument("--context", default="", help="context text: hotwords, names, domain terms")
    ctx.add_argument("--context-file", type=Path, help="read the context text from a file")
    t.add_argument(
        "--format", choices=["text", "json", "srt", "vtt"], default="text", help="output [default: text]"
    )
    t.add_argument(
        "--itn", action="store_true", help="inverse text normalization (zh, en): numbers as digits"
    )
    t.add_argument(
        "--timestamps",
        choices=["segment", "word"],
        help="word: json output gets segments[].words[], srt and vtt cues start at word times (needs "
        "--aligner; else segment-level, marked) [default: word for srt and vtt, segment otherwise]",
    )
    for option in _SOURCE_OPTIONS:
        option.add_to(t)
    _model_options(t)


def _serve_parser(sub: Any) -> None:
    s = sub.add_parser("serve", help="run the HTTP API (DashScope and OpenAI compatible)")
    for option in _SERVE_OPTIONS:
        option.add_to(s)
    s.add_argument(
        "--allow-open-network",
        action="store_true",
        help="allow a non-loopback --host without API keys (anyone who can reach it can use it)",
    )
    _model_options(s)


# --- settings ----------------------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    """Environment (QASR_*) first, then the command line on top; both go through validation."""
    overrides: dict[str, Any] = {
        k: v for k, v in vars(args).items() if k in Settings.model_fields and v is not None
    }
    if "url_map" in overrides:
        overrides["url_map"] = {**Settings().url_map, **_url_map(overrides["url_map"])}
    return Settings(**overrides)


def _url_map(items: list[str]) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for item in items:
        prefix, sep, target = item.partition("=")
        if not sep or not prefix or not target:
            raise ValueError(f"--url-map needs PREFIX=TARGET, got {item!r}")
        mapping[prefix] = target
    return mapping


def _invalid_settings(exc: ValidationError) -> str:
    """One line for the user, naming the option and the variable (not pydantic's multi-line report)."""
    problems = []
    for error in exc.errors():
        name = str(error["loc"][0]) if error["loc"] else ""
        where = " / ".join(x for x in (_FLAGS.get(name), f"QASR_{name.upper()}" if name else "") if x)
        problems.append(f"{where}: {error['msg'].removeprefix('Value error, ')}")
    return "invalid " + "; ".join(problems)


# --- serve -------------------------------------------------------------------------------------------


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    from qasr.api.app import create_app
    from qasr.api.server import serve

    loopback = settings.host in {"127.0.0.1", "localhost", "::1"}
    if not settings.api_keys and not loopback and not args.allow_open_network:
        print(
            f"qasr: refusing to listen on {settings.host} without API keys: pass --api-key KEY "
            "(or set QASR_API_KEYS), or --allow-open-network if that is really intended.",
            file=sys.stderr,
        )
        return 2
    problem = _cannot_listen(settings.host, settings.port)
    if problem is not None:  # found now, not after a model load of minutes
        print(f"qasr: {problem}", file=sys.stderr)
        return 2
    from qasr.engine.threads import in_passing_thread
    from qasr.runtime import load_aligner_engine, load_engine

    # Load before the server starts: a model that cannot be had is one clear line and exit code 2,
    # not a traceback inside uvicorn's start-up. In a thread that ends: see qasr.engine.threads.
    # The aligner first: the smaller load, so a bad --aligner is found before the model's minutes.
    aligner = in_passing_thread(lambda: load_aligner_engine(settings)) if settings.aligner != "none" else None
    engine = in_passing_thread(lambda: load_engine(settings))
    # After the load: a model that cannot be had stays one line on stderr.
    log.info("settings: %s", json.dumps(settings.effective(), ensure_ascii=False))
    serve(create_app(settings, engine, aligner), settings)
    return 0


def _cannot_listen(host: str, port: int) -> str | None:
    """Why uvicorn could not listen on host:port, or None. Binds and closes every address the host
    resolves to, as asyncio's create_server (under uvicorn) will: SO_REUSEADDR on POSIX, so a port in
    TIME_WAIT passes, and IPv6 sockets v6-only."""
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        return f"cannot listen on {where}: the host cannot be resolved ({exc.strerror})."
    for family, kind, proto, _, address in infos:
        with socket.socket(family, kind, proto) as sock:
            if os.name == "posix" and sys.platform != "cygwin":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6 and hasattr(socket, "IPPROTO_IPV6"):
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            try:
                sock.bind(address)
            except OSError as exc:
                if exc.errno == errno.EADDRINUSE:
                    return f"cannot listen on {where}: port {port} is already in use; pass another --port."
                return f"cannot listen on {where}: {exc.strerror or exc}."
    return None


# --- transcribe --------------------------------------------------------------------------------------


def _transcribe(settings: Settings, args: argparse.Namespace) -> int:
    from qasr.text.languages import normalize_code
    from qasr.types import TranscribeOptions

    context = args.context_file.read_text(encoding="utf-8") if args.context_file else args.context
    options = TranscribeOptions(
        language=normalize_code(args.language),
        context=context,
        enable_itn=args.itn,
        # Subtitles follow the words when an aligner is loaded, as the OpenAI API's srt and vtt do.
        timestamps=args.timestamps or ("word" if args.format in ("srt", "vtt") else "segment"),
    )
    run = TranscribeRun(args.inputs, options, args.format, Progress(len(args.inputs), sys.stderr))
    try:
        return asyncio.run(_transcribe_all(settings, run))
    except KeyboardInterrupt:
        # asyncio.run turned Ctrl-C into a cancellation, then re-raises it here once all has stopped.
        run.progress.close()
        if not run.reported:
            print("qasr: interrupted", file=sys.stderr)
        return INTERRUPTED
    finally:
        run.progress.close()


async def _transcribe_all(settings: Settings, run: TranscribeRun) -> int:
    from qasr.runtime import Runtime

    # Off the loop, in a thread that ends (qasr.engine.threads); no warm-up for a one-off run.
    quiet = settings.model_copy(update={"warmup": False})
    runtime = await asyncio.to_thread(Runtime.build, quiet)
    try:
        return await run.all(runtime.transcriber, runtime.local_policy())
    finally:
        runtime.close()


if __name__ == "__main__":
    sys.exit(main())
