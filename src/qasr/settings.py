"""One Settings object for the whole service. Every field can be set as `QASR_<NAME>` in the
environment or by the matching `qasr` command-line option; defaults live here and nowhere else.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import unquote, urlsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from qasr.types import AudioLimits

DEFAULT_MODEL = "Qwen/Qwen3-ASR-0.6B-hf"


def _split_list(value: object) -> object:
    """Accept a JSON list, or a comma-separated string, for list settings given in the environment."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("["):
            import json

            return json.loads(text)
        return [part.strip() for part in text.split(",") if part.strip()]
    return value


def _mirror_dir(target: str) -> Path | None:
    """The local directory a `url_map` target names (a path or `file://` URI); None for an http(s) URL."""
    if re.match(r"^https?://", target, re.IGNORECASE):
        return None
    if target.lower().startswith("file:"):
        # Read as qasr.audio.sources reads file URIs: netloc + path, `localhost` meaning this machine.
        parts = urlsplit(target)
        netloc = "" if parts.netloc.lower() == "localhost" else parts.netloc
        return Path(unquote(netloc + parts.path))
    return Path(target)


def _check_url_map(url_map: dict[str, str]) -> dict[str, str]:
    """Refuse at start a mirror that could never serve a file, rather than on every request it maps."""
    for prefix, target in url_map.items():
        directory = _mirror_dir(target)
        if directory is not None and not directory.expanduser().is_dir():
            raise ValueError(
                f"the target {target} (for {prefix}) is not an existing directory; "
                "map a URL prefix to a local directory or to another http(s) URL prefix"
            )
    return url_map


def _default_data_dir() -> Path:
    """`$XDG_DATA_HOME/qasr` (an absolute path only, as the XDG spec says), else `~/.local/share/qasr`."""
    xdg = os.environ.get("XDG_DATA_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~/.local/share"))
    return base / "qasr"


class Settings(BaseSettings):
    """qasr configuration. Sizes in bytes, times in seconds or milliseconds as the name says."""

    # Attribute docstrings become field descriptions: the CLI's --help shows them (qasr.cli).
    model_config = SettingsConfigDict(env_prefix="QASR_", extra="ignore", use_attribute_docstrings=True)

    # --- model -------------------------------------------------------------------------------------
    model: str = DEFAULT_MODEL
    """Local directory, Hugging Face hub id, or `modelscope:<id>`."""
    device: str = "auto"
    """`auto` (CUDA when present, else CPU), `cpu`, `cuda`, `cuda:1`, ..."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """`auto`: bf16 on CUDA and on CPUs with AVX512_BF16/AMX, else fp32."""
    quantize: Literal["none", "int8", "int8-weight"] = "none"
    """`int8`: dynamic int8 quantization of Linear layers (CPU only; speed measured in bench/).
    `int8-weight`: weight-only int8 (8-bit weights, fp32 activations; CPU only). Accuracy of both
    is unmeasured without the real weights (README)."""
    threads: int | None = None
    """torch intra-op threads; None keeps torch's default (one per core)."""
    warmup: bool = True
    """Run one short generation at start-up so the first request is not slow."""
    aligner: str = "none"
    """Forced aligner for word timestamps: a local directory, `Qwen/Qwen3-ForcedAligner-0.6B-hf`, the
    original `Qwen/Qwen3-ForcedAligner-0.6B`, or `modelscope:<id>`; `none` turns it off. Off by default:
    it is a second 0.9 B-parameter model (memory, load time). Without it word timestamps fall back to
    segment-level times, marked as such."""
    aligner_max_batch_size: int = 16
    """Most clips the aligner places in one forward pass (16 keeps its peak memory low)."""
    served_model_name: str = "qwen3-asr-flash"
    """The name `/v1/models` lists; `qwen3-asr-flash*` and the model id are accepted too."""

    # --- CPU kernels -------------------------------------------------------------------------------
    cpu_linear: Literal["auto", "packed", "default"] = "auto"
    """Kernel for the text decoder's Linear layers on CPU (unquantized; the forced aligner's too):
    `packed` (oneDNN, weights reordered once at load), `default` (torch's), or `auto`: measure both
    at load (about a second) and keep the faster (models under 64 MB of decoder weights keep `default`). Measured per fp32
    1024 -> 3072 product at 1-16 rows on a 2-core EPYC: packed 2.4-3.5x faster, 1.5-2.8x with the
    math libraries held to AVX2 (bench/RESULTS.md, "CPU kernels", issue 18)."""

    # --- batching ----------------------------------------------------------------------------------
    max_batch_size: int = 8
    """Most clips decoded together in one model batch."""
    max_wait_ms: float = 10.0
    """How long the scheduler waits for more requests before running a partial batch."""
    max_queue: int = 64
    """Requests waiting for the model beyond this are refused with 429."""
    max_hold_ms: float = 200.0
    """How long a partial batch may wait for requests already being decoded (see `qasr.engine.scheduler`)."""

    # --- server ------------------------------------------------------------------------------------
    host: str = "127.0.0.1"
    """Address `serve` listens on; anything but loopback needs API keys (or `--allow-open-network`)."""
    port: int = 8000
    """TCP port `serve` listens on."""
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Accepted `Authorization: Bearer` keys. Empty: no auth, and `serve` binds to loopback only."""
    public_base_url: str | None = None
    """Base URL clients reach this server at (behind a proxy), used for upload hosts and result URLs."""
    incremental_output_default: bool = False
    """DashScope streams: cumulative text (False, the SDK's view of the cloud) or deltas (True)."""
    request_timeout_s: float = 600.0
    """Wall-clock limit for one synchronous request."""
    max_queue_wait_s: float = 30.0
    """Longest an interactive request's audio may wait for the model before it is refused (429 with
    Retry-After): under overload a quick refusal serves a client better than an answer a minute late."""
    max_connections: int = 1000
    """Open connections served; beyond it a few more may reach /health (`health_connections`) and get
    503 for anything else, and the rest are closed at once."""
    health_connections: int = 16
    """Connections kept for /health beyond `max_connections`, so load balancers can still look."""
    receive_timeout_s: float = 60.0
    """A request's headers and body must arrive within this of its first byte (else 408 and close)."""
    max_header_bytes: int = 64 * 1024
    """Largest request head (request line and headers)."""
    drain_timeout_s: float = 30.0
    """On SIGTERM: how long requests in flight may take to finish (new ones get 503); a second
    signal stops at once."""
    metrics_public: bool = False
    """Serve /metrics without an API key (it reveals traffic; off: /metrics needs a key when keys
    are configured)."""
    log_format: Literal["text", "json"] = "text"
    """Log lines as text or as one JSON object per line (for log shippers). Transcripts are logged only
    at debug level (-v -v); API keys and audio never."""

    # --- inputs and limits ---------------------------------------------------------------------------
    max_audio_bytes: int = 10 * 1024 * 1024
    """Largest audio input for the synchronous APIs (the cloud's 10 MB)."""
    max_audio_s: float = 300.0
    """Longest audio for the synchronous APIs (the cloud's 5 minutes)."""
    max_body_bytes: int = 16 * 1024 * 1024
    """Largest HTTP request body (a base64 data URI of `max_audio_bytes` is 4/3 as large)."""
    download_timeout_s: float = 30.0
    """Connect + read limit for fetching audio URLs."""
    allow_local_dirs: Annotated[list[Path], NoDecode] = Field(default_factory=list)
    """Server-side directories remote callers may name with `file://` or a path (none by default)."""
    allow_url_hosts: Annotated[list[str], NoDecode] = Field(default_factory=list)
    """Hosts fetched even though they resolve to private, loopback or link-local addresses. Prefer
    `host:port`, which allows that port only; a bare `host` allows every port of it."""
    url_map: dict[str, str] = Field(default_factory=dict)
    """URL prefix -> local directory or other URL (air-gapped mirrors), e.g. `{"https://x/": "/srv/m/"}`."""

    # --- temporary uploads (the SDK's local-file flow) ----------------------------------------------
    data_dir: Path = Field(default_factory=_default_data_dir)
    """Where qasr keeps what must outlive a restart (uploads and their signing key); the default is
    `$XDG_DATA_HOME/qasr`, else `~/.local/share/qasr`."""
    upload_dir: Path | None = None
    """Where uploaded files are kept; None: `<data_dir>/uploads`. Files and unexpired policies survive a
    restart. Give each server its own directory."""
    upload_ttl_s: float = 48 * 3600.0
    """How long an uploaded file stays usable (the cloud keeps them 48 hours)."""
    upload_max_bytes: int = 100 * 1024 * 1024
    """Largest accepted upload (the policy's `max_file_size_mb`)."""
    upload_max_bytes_per_key: int = 2 * 1024**3
    """Most bytes of unexpired uploads one API key may keep (without API keys, all callers share this
    quota); beyond it an upload gets 429 until older ones expire."""
    upload_max_objects_per_key: int = 2000
    """Most unexpired uploaded files one API key may keep (without API keys, all callers together)."""
    upload_max_total_bytes: int = 10 * 1024**3
    """Most bytes of unexpired uploads kept for all keys together."""
    upload_max_total_objects: int = 10_000
    """Most unexpired uploaded files kept for all keys together."""
    upload_policy_ttl_s: float = 300.0
    """How long an upload policy may be used after it is issued."""
    upload_secret: str | None = None
    """Key that signs upload policies; None: a random key made on the first start and kept in the
    upload directory (`policy-signing.key`, mode 0600), so unexpired policies survive a restart."""

    # --- long audio --------------------------------------------------------------------------------
    segment_max_s: float = 20.0
    """Longest segment sent to the model; long audio is cut at pauses into segments up to this. 20 s:
    in the 20-30 s range where the model keeps tens of seconds of context, the cheapest measured on CPU
    (shorter segments batch better and attention grows with length; bench/RESULTS.md)."""
    vad: bool = True
    """Voice-activity detection: silence is never sent to the model. Off: fixed windows, no gating."""

    # --- live sessions (the realtime WebSocket API, issue 16) ----------------------------------------
    live_max_sessions: int = 64
    """Live recognition sessions (`/api-ws/v1/realtime`) open at once; one more gets an `error` event
    (`too_many_sessions`) and is closed."""
    live_max_session_s: float = 2 * 3600.0
    """Longest live session: then the utterance in progress is finished, an `error` event
    (`session_expired`) says why, and the session is closed."""
    live_idle_timeout_s: float = 60.0
    """A live session from which no event arrives for this long is ended the same way (`idle_timeout`)."""
    live_max_append_bytes: int = 15 * 1024 * 1024
    """Largest `audio` (base64 characters) of one `input_audio_buffer.append` (the cloud's 15 MiB)."""
    live_token_ttl_s: float = 60.0
    """How long a browser token from `POST /api/v1/realtime/tokens` may be used to open one session."""

    # --- live decoding (the recognizer behind live sessions, issue 16) -----------------------------
    live_max_utterance_s: float = Field(default=30.0, ge=5.0, le=120.0)
    """Longest live utterance: a longer one is cut (at its quietest point) and goes on as a new one.
    Each interim step re-reads the open utterance (its 8 s encoder windows are cached, the prompt is
    not), so this bounds the work per step and the memory per session (bench/RESULTS.md, "Live")."""
    live_step_tokens: int = Field(default=8, ge=1, le=64)
    """Most new tokens one interim (`text`/`stash`) step decodes, past the settled text forced as
    its start: about a second of speech plus the words held back. Finals are not capped by it."""

    # --- async file jobs (the filetrans API, issue 15) -----------------------------------------------
    jobs_dir: Path | None = None
    """Where async file jobs live (the SQLite task store `tasks.sqlite3`, result documents, the
    result-URL signing key, inputs being worked on); None: `<data_dir>/jobs`. Tasks survive a restart."""
    jobs_concurrency: int = 1
    """Jobs transcribed at once; the rest wait in submission order. 1 suits a CPU (a job already keeps
    the model busy); raise it on a GPU, where batches of several jobs cost little more than one."""
    jobs_segments_in_flight: int = 2
    """Segments of one job queued for the model at once. Low, so a job's batch (which an interactive
    request may have to wait for) stays small; bench/filetrans.py measures the effect."""
    jobs_retention_s: float = 24 * 3600.0
    """How long a finished task and its result are kept (the cloud keeps them 24 hours)."""
    jobs_max_tasks: int = 10_000
    """Most tasks stored, of all statuses and callers; beyond it a submit is refused (429) until old
    tasks expire."""
    jobs_max_tasks_per_key: int = 1_000
    """Most tasks one API key may have stored (without API keys, all callers share `jobs_max_tasks`)."""
    jobs_max_audio_s: float = 12 * 3600.0
    """Longest recording a job accepts (the cloud's 12 hours)."""
    jobs_max_audio_bytes: int = 2 * 1024**3
    """Largest input file a job accepts (the cloud's 2 GB); downloads stream to disk, never memory."""
    jobs_download_timeout_s: float = 3600.0
    """Limit for a job's whole download (a 2 GB file takes minutes)."""
    jobs_result_url_ttl_s: float = 24 * 3600.0
    """How long a result URL works after the task is polled (the cloud's last 24 hours); it never
    outlives the result itself."""

    @field_validator("api_keys", "allow_url_hosts", mode="before")
    @classmethod
    def _lists(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("allow_local_dirs", mode="before")
    @classmethod
    def _dirs(cls, value: object) -> object:
        return _split_list(value)

    @field_validator("url_map")
    @classmethod
    def _mirrors(cls, value: dict[str, str]) -> dict[str, str]:
        return _check_url_map(value)

    def effective(self) -> dict[str, object]:
        """Every setting as it is in force, secrets masked: logged at start-up so an operator sees
        the limits the server runs with."""
        secret = {"api_keys", "upload_secret"}
        out: dict[str, object] = {}
        for name, value in self.model_dump(mode="json").items():
            if name in secret and value:
                value = f"<{len(value)} keys>" if isinstance(value, list) else "<set>"
            out[name] = value
        return out

    @property
    def sync_limits(self) -> AudioLimits:
        """The limits the synchronous HTTP APIs apply to one input."""
        return AudioLimits(max_bytes=self.max_audio_bytes, max_duration_s=self.max_audio_s)
