"""A corpus of hostile inputs, built during the test run (issue 13): malformed and lying audio
containers, odd sample rates and channel counts, a decompression bomb, huge and deeply nested JSON,
and malformed multipart bodies. Every item is something a client can send; none may get a 5xx.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from fractions import Fraction

import av
import numpy as np

from tests.audio.fixtures import Clip, encode_tone, png_image, video_only_mp4, wav_header

BOUNDARY = "qasr-hostile-boundary"
MULTIPART = f"multipart/form-data; boundary={BOUNDARY}"
LONG = 100_000
"""Characters in the over-long values: an error message must not echo them whole."""


@dataclass(frozen=True)
class Body:
    """One request body and the Content-Type it is sent with (None: no Content-Type header)."""

    name: str
    content: bytes
    content_type: str | None


# --- audio ------------------------------------------------------------------------------------------


def wav(
    rate: int = 16_000,
    channels: int = 1,
    bits: int = 16,
    seconds: float = 1.0,
    format_tag: int = 1,
    declared_bytes: int | None = None,
) -> bytes:
    """A PCM WAV built by hand, so its header can say anything: noise at 16 bits, silence otherwise."""
    block = channels * bits // 8
    # Lying headers may overflow the fields that follow from the others: they wrap, as a forger's would.
    byte_rate, align = (rate * block) & 0xFFFFFFFF, block & 0xFFFF
    fmt = struct.pack("<HHIIHH", format_tag, channels, rate, byte_rate, align, bits)
    frames = round(rate * seconds)
    if bits == 16:
        rng = np.random.default_rng(channels)
        data = (rng.standard_normal(frames * channels) * 2000).astype("<i2").tobytes()
    else:
        data = bytes(frames * block)
    size = len(data) if declared_bytes is None else declared_bytes
    riff = 4 + 8 + len(fmt) + 8 + size
    return (
        b"RIFF"
        + struct.pack("<I", min(riff, 0xFFFFFFFF))
        + b"WAVE"
        + b"fmt "
        + struct.pack("<I", len(fmt))
        + fmt
        + b"data"
        + struct.pack("<I", size)
        + data
    )


def silent_flac(seconds: float, rate: int = 8_000) -> bytes:
    """`seconds` of digital silence as FLAC: about 180 bytes a second at 8 kHz, an hour in 650 KB."""
    buffer = io.BytesIO()
    with av.open(buffer, "w", format="flac") as out:
        stream = out.add_stream("flac", rate=rate, layout="mono")
        assert isinstance(stream, av.AudioStream)
        step = 1 << 16
        block = np.zeros((1, step), dtype=np.int16)
        total = round(seconds * rate)
        for start in range(0, total, step):
            frame = av.AudioFrame.from_ndarray(
                block[:, : min(step, total - start)], format="s16", layout="mono"
            )
            frame.sample_rate, frame.pts, frame.time_base = rate, start, Fraction(1, rate)
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return buffer.getvalue()


def flac_bomb(seconds: float = 3600.0) -> bytes:
    """A FLAC of `seconds` of silence whose STREAMINFO says "length unknown": nothing refuses it
    before decoding, so only the decoder's duration limit can stop it."""
    data = bytearray(silent_flac(seconds))
    assert data[:4] == b"fLaC" and data[4] & 0x7F == 0  # the first metadata block is STREAMINFO
    # STREAMINFO starts at byte 8; its 36-bit total sample count ends at byte 8 + 18.
    data[21] &= 0xF0
    data[22:26] = bytes(4)
    return bytes(data)


def audio_corpus() -> dict[str, bytes]:
    """Hostile audio files by name. Some are valid (odd but decodable), most are not."""
    mp3 = encode_tone(Clip("mp3", "libmp3lame", rate=22_050, channels=2), seconds=2.0)
    ogg = encode_tone(Clip("ogg", "libopus", rate=48_000), seconds=2.0)
    flac = encode_tone(Clip("flac", "flac", rate=11_025), seconds=2.0)
    corpus = {
        "zero-length": b"",
        "one byte": b"\x00",
        "RIFF magic only": b"RIFF",
        "wav header, no samples": wav_header(16_000, 0),
        "wav claims 10 hours, holds 1 s": wav(declared_bytes=10 * 3600 * 16_000 * 2),
        "wav claims 1 s, holds 0.1 s": wav(seconds=0.1, declared_bytes=32_000),
        "wav 0 channels": wav(channels=0),
        "wav 0 bits per sample": wav(bits=0),
        "wav 0 bits, 2 channels": wav(channels=2, bits=0),
        "wav 9 channels": wav(channels=9, seconds=0.5),
        "wav 32 channels": wav(channels=32, seconds=0.25),
        "wav 64 channels": wav(channels=64, seconds=0.25),
        "wav 65535 channels": wav(channels=65_535, seconds=0.0),
        "wav unknown format tag": wav(format_tag=0x1234),
        "wav 0 Hz": wav(rate=0, seconds=0.0) + bytes(3200),
        "wav 1 Hz": wav(rate=1, seconds=2.0),
        "wav 8 Hz": wav(rate=8, seconds=2.0),
        "wav 384 kHz": wav(rate=384_000, seconds=0.5),
        "wav 2^31-1 Hz": wav(rate=2**31 - 1, seconds=0.0) + bytes(3200),
        "mp3 truncated to half": mp3[: len(mp3) // 2],
        "mp3 truncated to 20 bytes": mp3[:20],
        "ogg truncated to half": ogg[: len(ogg) // 2],
        "ogg truncated to 40 bytes": ogg[:40],
        "flac truncated to half": flac[: len(flac) // 2],
        "flac truncated to 42 bytes": flac[:42],
        "flac bomb: an hour of silence, length unknown": flac_bomb(),
        "random bytes": np.random.default_rng(13).bytes(4096),
        "png image": png_image(),
        "video without audio": video_only_mp4(),
    }
    return corpus


# --- JSON ---------------------------------------------------------------------------------------------


def _json(name: str, value: object) -> Body:
    return Body(name, json.dumps(value).encode(), "application/json")


def _nested(depth: int, opener: bytes = b"[", closer: bytes = b"]") -> bytes:
    return opener * depth + closer * depth


def request(audio: str, role: str = "user", **extra: object) -> dict[str, object]:
    """A body both dialects read: DashScope's `input.messages` and OpenAI's `messages` side by side
    (each ignores the other's), so one hostile value reaches both parsers."""
    return {
        "model": "qwen3-asr-flash",
        "input": {"messages": [{"role": role, "content": [{"audio": audio}]}]},
        "messages": [{"role": role, "content": [{"type": "input_audio", "input_audio": {"data": audio}}]}],
        **extra,
    }


def json_corpus(audio: str) -> list[Body]:
    """Hostile JSON bodies for the JSON endpoints (DashScope generation, OpenAI chat completions).
    `audio` is a valid audio reference, so the bodies that are otherwise well formed get past it."""
    deep_objects = b'{"a":' * 5_000 + b"1" + b"}" * 5_000
    deep = _nested(3_000)
    valid = request(audio)
    return [
        Body("not JSON", b"{not json", "application/json"),
        Body("empty body", b"", "application/json"),
        Body("invalid UTF-8", b'{"model": "\xff\xfe"}', "application/json"),
        Body("arrays nested 1,000 deep", _nested(1_000), "application/json"),
        Body("arrays nested 100,000 deep", _nested(100_000), "application/json"),
        Body("objects nested 5,000 deep", deep_objects, "application/json"),
        Body(
            "deep nesting inside a valid body",
            b'{"model": "qwen3-asr-flash", "messages": ' + deep + b', "input": ' + deep + b"}",
            "application/json",
        ),
        Body("a 10 MB array", b"[" + b"0," * 5_000_000 + b"0]", "application/json"),
        Body("a 5,000-digit integer", b'{"model": ' + b"9" * 5_000 + b"}", "application/json"),
        Body(
            "NaN and Infinity",
            b'{"model": NaN, "input": Infinity, "messages": -Infinity}',
            "application/json",
        ),
        _json("null", None),
        _json("a list", [valid]),
        _json("a string", "qwen3-asr-flash"),
        _json("model is a list", {**valid, "model": ["qwen3-asr-flash"]}),
        _json(
            "messages are objects", {"model": "qwen3-asr-flash", "messages": {}, "input": {"messages": {}}}
        ),
        _json("a 100,000-character role", request(audio, role="r" * LONG)),
        _json("a lone surrogate as the role", request(audio, role="\ud800")),
        _json("a 100,000-character result_format", {**valid, "parameters": {"result_format": "f" * LONG}}),
        _json("an unknown URL scheme 100,000 characters long", request("s" * LONG + ":x")),
        _json("a server path 100,000 characters long", request("file:///" + "p" * LONG)),
        _json("a host name 100,000 characters long", request(f"http://{'h' * LONG}.example/a.wav")),
        _json("a data URI that is not base64", request("data:audio/wav," + "x" * LONG)),
        Body("the body as text/plain", json.dumps(valid).encode(), "text/plain"),
        Body("the body without a Content-Type", json.dumps(valid).encode(), None),
        Body("the body as a URL-encoded form", b"model=qwen3-asr-flash", "application/x-www-form-urlencoded"),
    ]


# --- multipart -----------------------------------------------------------------------------------------


def part(headers: str, content: bytes, boundary: str = BOUNDARY) -> bytes:
    return f"--{boundary}\r\n{headers}\r\n\r\n".encode() + content + b"\r\n"


def file_part(content: bytes, name: str = "file", filename: str = "a.wav") -> bytes:
    disposition = f'Content-Disposition: form-data; name="{name}"; filename="{filename}"'
    return part(f"{disposition}\r\nContent-Type: audio/wav", content)


def field_part(name: str, value: str) -> bytes:
    return part(f'Content-Disposition: form-data; name="{name}"', value.encode())


def end(boundary: str = BOUNDARY) -> bytes:
    return f"--{boundary}--\r\n".encode()


def multipart_corpus(audio: bytes) -> list[Body]:
    """Malformed multipart bodies for the form endpoints (DashScope's upload, OpenAI's transcriptions).
    Each carries a `model` field and `audio` where it has a file at all."""
    model = field_part("model", "qwen3-asr-flash")
    return [
        Body("two file parts", model + file_part(audio) + file_part(audio) + end(), MULTIPART),
        Body("no boundary parameter", model + file_part(audio) + end(), "multipart/form-data"),
        Body("an empty boundary", model + file_part(audio) + end(), "multipart/form-data; boundary="),
        Body("the wrong boundary", model + file_part(audio) + end(), "multipart/form-data; boundary=other"),
        Body(
            "a nameless part",
            model + part('Content-Disposition: form-data; filename="a.wav"', audio) + end(),
            MULTIPART,
        ),
        Body(
            "a part without Content-Disposition",
            model + part("Content-Type: audio/wav", audio) + end(),
            MULTIPART,
        ),
        Body(
            "a part without headers",
            model + f"--{BOUNDARY}\r\n\r\n".encode() + audio + b"\r\n" + end(),
            MULTIPART,
        ),
        Body("a header line without a colon", model + part("this is not a header", audio) + end(), MULTIPART),
        Body("cut off inside the file", model + file_part(audio)[:200], MULTIPART),
        Body("no closing boundary", model + file_part(audio), MULTIPART),
        Body("an empty body", b"", MULTIPART),
        Body("garbage", b"\x00\xff" * 512, MULTIPART),
        Body("too many fields", b"".join(field_part(f"f{k}", "x") for k in range(200)) + end(), MULTIPART),
        Body("the file as a text field", model + field_part("file", "not a file") + end(), MULTIPART),
        Body(
            "a file with a traversing name",
            model + file_part(audio, filename="../../etc/passwd") + end(),
            MULTIPART,
        ),
        Body("a file named with a NUL", model + file_part(audio, filename="a\x00b.wav") + end(), MULTIPART),
        Body("an unknown charset", model + file_part(audio) + end(), f"{MULTIPART}; charset=no-such-charset"),
        Body(
            "a 100,000-character field name",
            model + field_part("n" * LONG, "x") + file_part(audio) + end(),
            MULTIPART,
        ),
        Body("a URL-encoded form", b"model=qwen3-asr-flash&file=x", "application/x-www-form-urlencoded"),
        Body("JSON instead of a form", b'{"model": "qwen3-asr-flash"}', "application/json"),
    ]
