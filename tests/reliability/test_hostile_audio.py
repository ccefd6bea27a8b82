"""The audio layer under hostile input (issue 13), without a server: WAVs whose channel count
libswresample cannot downmix are averaged, forged headers are decode errors, and messages quote a
client's value briefly."""

from __future__ import annotations

import asyncio
import struct
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import numpy as np
import pytest

from qasr.audio.decode import MAX_SAMPLE_RATE_HZ, decode_audio
from qasr.audio.sources import SourcePolicy, fetch_source
from qasr.errors import (
    MAX_QUOTED_CHARS,
    AudioDecodeError,
    DownloadFailed,
    ForbiddenSource,
    QasrError,
    format_value,
)
from qasr.types import SAMPLE_RATE, AudioLimits
from tests.reliability.corpus import wav


def _pcm_wav(samples: np.ndarray, rate: int = SAMPLE_RATE, bits: int = 16) -> bytes:
    """A plain (not extensible) PCM WAV of float samples shaped (frames, channels)."""
    channels = samples.shape[1]
    if bits == 8:
        data = np.round(samples * 127 + 128).astype(np.uint8).tobytes()
    else:
        data = np.round(samples * 32767).astype("<i2").tobytes()
    block = channels * bits // 8
    fmt = struct.pack("<HHIIHH", 1, channels, rate, rate * block, block, bits)
    head = b"RIFF" + struct.pack("<I", 36 + len(data)) + b"WAVE" + b"fmt " + struct.pack("<I", 16) + fmt
    return head + b"data" + struct.pack("<I", len(data)) + data


def _channels_at_levels(channels: int, seconds: float = 0.5) -> tuple[np.ndarray, float]:
    """A 440 Hz tone, channel k at its own level; and the RMS its average has."""
    t = np.arange(round(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    levels = np.linspace(0.1, 0.6, channels)
    return np.sin(2 * np.pi * 440 * t)[:, None] * levels[None, :], float(levels.mean() / np.sqrt(2))


@pytest.mark.parametrize("channels", [9, 11, 13, 17, 32, 64])
@pytest.mark.parametrize("bits", [8, 16])
def test_channels_libswresample_cannot_downmix_are_averaged(channels: int, bits: int) -> None:
    samples, expected_rms = _channels_at_levels(channels)

    audio = decode_audio(_pcm_wav(samples, bits=bits))

    assert (audio.info.channels, len(audio.samples)) == (channels, len(samples))
    rms = float(np.sqrt(np.mean(np.square(audio.samples, dtype=np.float64))))
    assert rms == pytest.approx(expected_rms, rel=0.03)


def test_averaged_channels_are_resampled_like_any_other() -> None:
    t = np.arange(44_100 // 2) / 44_100
    levels = np.linspace(0.1, 0.6, 9)
    at_44k = np.sin(2 * np.pi * 440 * t)[:, None] * levels[None, :]

    audio = decode_audio(_pcm_wav(at_44k, rate=44_100))

    assert len(audio.samples) == pytest.approx(SAMPLE_RATE / 2, abs=2)
    rms = float(np.sqrt(np.mean(np.square(audio.samples, dtype=np.float64))))
    assert rms == pytest.approx(levels.mean() / np.sqrt(2), rel=0.03)


@pytest.mark.parametrize(
    "data",
    [wav(bits=0), wav(channels=2, bits=0), wav(format_tag=0x1234)],
    ids=["0 bits", "0 bits stereo", "unknown format tag"],
)
def test_a_track_without_a_known_codec_is_a_decode_error(data: bytes) -> None:
    with pytest.raises(AudioDecodeError, match="has no codec FFmpeg knows"):
        decode_audio(data)


@pytest.mark.parametrize("rate", [MAX_SAMPLE_RATE_HZ + 1, 2**31 - 1])
def test_a_forged_sample_rate_is_a_decode_error(rate: int) -> None:
    with pytest.raises(AudioDecodeError, match=f"sample rate of {rate} Hz"):
        decode_audio(wav(rate=rate, seconds=0.0) + bytes(3200))


def test_the_highest_sample_rate_still_decodes() -> None:
    audio = decode_audio(wav(rate=384_000, seconds=0.25))
    assert len(audio.samples) == pytest.approx(SAMPLE_RATE / 4, abs=2)


# --- quoting client values --------------------------------------------------------------------------------


def test_format_value_keeps_short_values_and_cuts_long_ones() -> None:
    assert format_value("qwen3-asr-flash") == "qwen3-asr-flash"
    assert format_value("x" * MAX_QUOTED_CHARS) == "x" * MAX_QUOTED_CHARS
    assert format_value("x" * 100_000) == "x" * MAX_QUOTED_CHARS + "…"


def test_format_value_escapes_what_utf8_cannot_carry() -> None:
    shown = format_value("a\ud800b")
    assert shown == "a\\ud800b"
    shown.encode("utf-8")  # a lone surrogate would fail here, and with it the whole error response


SERVER = SourcePolicy()
LOOPBACK = SourcePolicy(allow_url_hosts=("127.0.0.1",))


def _error(ref: str, policy: SourcePolicy = SERVER) -> QasrError:
    with pytest.raises(QasrError) as raised:
        asyncio.run(fetch_source(ref, policy, AudioLimits()))
    return raised.value


@pytest.mark.parametrize(
    "ref",
    [
        "s" * 100_000 + ":x",
        "/" + "p" * 100_000,
        "file:///" + "p" * 100_000,
        "http://" + "h" * 100_000 + ".example/",
    ],
    ids=["scheme", "path", "file URI", "host"],
)
def test_source_errors_quote_a_long_reference_briefly(ref: str) -> None:
    assert len(_error(ref).message) < 400


# --- redirects to URLs that are not http(s) -----------------------------------------------------------------


class _Redirector(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(302)
        self.send_header("Location", self.path[1:].replace("%20", " "))
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def redirector() -> Iterator[str]:
    """A server on loopback that redirects `/<location>` to `<location>`."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Redirector)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("location", "scheme"),
    [
        ("data:audio/wav;base64,UklGRg==", "data"),
        ("DATA:,x", "data"),
        ("mailto:a@b.c", "mailto"),
        ("c:x", "c"),
    ],
)
def test_a_redirect_to_another_scheme_is_refused(redirector: str, location: str, scheme: str) -> None:
    error = _error(redirector + location, LOOPBACK)
    assert isinstance(error, ForbiddenSource)
    assert error.message == f"Only http and https audio URLs are followed, not a '{scheme}:' URL."


def test_a_redirect_to_an_http_url_without_a_host_is_a_failed_download(redirector: str) -> None:
    error = _error(redirector + "http:a.wav", LOOPBACK)
    assert isinstance(error, DownloadFailed)
    assert error.message == "127.0.0.1 redirected the download to an invalid URL."


def test_an_allowed_host_port_opens_that_port_only() -> None:
    """`--allow-url-host HOST:PORT` trusts one port of a private host, not every port (issue 13)."""
    import asyncio

    import httpx

    from qasr.audio.sources import SourcePolicy, _checked_hop
    from qasr.errors import ForbiddenSource

    async def hop(url: str, *allowed: str) -> None:
        await _checked_hop(httpx.URL(url), SourcePolicy(allow_url_hosts=allowed))

    asyncio.run(hop("http://127.0.0.1:8080/a.wav", "127.0.0.1:8080"))
    asyncio.run(hop("http://127.0.0.1:9/a.wav", "127.0.0.1"))  # a bare host: every port
    asyncio.run(hop("http://[::1]:8080/a.wav", "[::1]:8080"))
    for url in ("http://127.0.0.1:22/a.wav", "http://127.0.0.1/a.wav", "http://[::1]:22/a.wav"):
        with pytest.raises(ForbiddenSource):
            asyncio.run(hop(url, "127.0.0.1:8080", "[::1]:8080"))
