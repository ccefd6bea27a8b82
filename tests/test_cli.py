"""`qasr transcribe` end to end on the tiny model, as a user runs it."""

from __future__ import annotations

import fcntl
import json
import os
import pty
import queue
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import wave
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from qasr.text.subtitles import parse_srt, parse_vtt
from tests.helpers import synthesize, transcode
from tests.server import free_port, live_server


def _command(*args: str, model: Path) -> list[str]:
    return [sys.executable, "-m", "qasr", "transcribe", *args, "--model", str(model), "--dtype", "float32"]


def _qasr(*args: str, model: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        _command(*args, model=model), capture_output=True, text=True, env=full_env, timeout=900
    )


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("cli")
    wav = synthesize("Hello from the command line. This is a test.", root / "hello.wav")
    files = {"wav": wav}
    for fmt in ("mp3", "flac"):
        files[fmt] = root / f"hello.{fmt}"
        transcode(wav, files[fmt], fmt)
    files["zh"] = synthesize("欢迎使用语音识别。", root / "zh.mp3", voice="zh", fmt="mp3")
    files["bad"] = root / "broken.mp3"
    files["bad"].write_bytes(b"ID3" + os.urandom(2000))
    return files


def test_several_formats_json_and_a_failure(inputs: dict[str, Path], tiny_dir: Path) -> None:
    order = ["wav", "mp3", "bad", "flac", "zh"]
    done = _qasr(*[str(inputs[k]) for k in order], "--format", "json", model=tiny_dir)
    assert done.returncode == 1  # one input failed...
    lines = [json.loads(line) for line in done.stdout.splitlines()]
    assert [Path(x["input"]).name for x in lines] == [
        "hello.wav",
        "hello.mp3",
        "hello.flac",
        "zh.mp3",
    ]  # ...the rest ran
    for item in lines:
        assert item["text"] and item["duration"] > 1.0 and item["segments"]
        assert set(item) == {"input", "language", "text", "duration", "segments"}
    assert "broken.mp3" in done.stderr and "not audio" in done.stderr
    # without a terminal, progress is plain lines: one at each input's first segment
    for position, name in [(1, "hello.wav"), (2, "hello.mp3"), (4, "hello.flac"), (5, "zh.mp3")]:
        assert re.search(
            rf"^qasr: \[{position}/5\] {name}: \d+ segments?, \d+ s of audio$", done.stderr, re.M
        )


def test_subtitles_and_text(inputs: dict[str, Path], tiny_dir: Path) -> None:
    srt = _qasr(str(inputs["wav"]), "--format", "srt", model=tiny_dir)
    assert srt.returncode == 0, srt.stderr
    cues = parse_srt(srt.stdout)
    assert cues and all(c.start_s < c.end_s for c in cues)
    vtt = _qasr(
        str(inputs["wav"]), "--format", "vtt", "--language", "en", "--context", "Qwen", model=tiny_dir
    )
    assert vtt.stdout.startswith("WEBVTT") and parse_vtt(vtt.stdout)
    text = _qasr(str(inputs["wav"]), model=tiny_dir)
    assert text.returncode == 0 and text.stdout.strip()
    # subtitles carry the same words as the plain text, only split into cues and lines
    assert "".join("".join(c.text for c in cues).split()) == "".join(text.stdout.split())


def test_clear_errors(tiny_dir: Path, tmp_path: Path) -> None:
    missing = _qasr(str(tmp_path / "nope.wav"), model=tiny_dir)
    assert missing.returncode == 1 and "nope.wav" in missing.stderr
    bad_lang = _qasr(str(tmp_path / "x.wav"), "--language", "xx", model=tiny_dir)
    assert bad_lang.returncode == 2 and "Unknown language" in bad_lang.stderr
    no_model = _qasr(str(tmp_path / "x.wav"), model=tmp_path / "no-model")
    assert no_model.returncode == 2 and "does not exist" in no_model.stderr


def _long_wav(path: Path, speech: Path, hours: float) -> None:
    """Speech, 3 s of silence, repeated for `hours`, written as an 8 kHz WAV without holding it in memory."""
    with wave.open(str(speech)) as src:
        rate, pcm = src.getframerate(), np.frombuffer(src.readframes(src.getnframes()), dtype=np.int16)
    voice = pcm[:: max(1, rate // 8000)]
    unit = np.concatenate([voice, np.zeros(3 * 8000, dtype=np.int16)]).tobytes()
    repeats = int(hours * 3600 * 8000 * 2 / len(unit))
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(8000)
        for _ in range(repeats):
            out.writeframesraw(unit)


def _peak_rss_mb(args: list[str], model: Path) -> tuple[float, subprocess.CompletedProcess[str]]:
    code = (
        "import resource, subprocess, sys; p = subprocess.run(sys.argv[1:], capture_output=True, text=True);"
        "sys.stdout.write(p.stdout); sys.stderr.write(p.stderr);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, file=sys.stderr); sys.exit(p.returncode)"
    )
    cmd = [sys.executable, "-c", code, sys.executable, "-m", "qasr.cli", "transcribe", *args]
    cmd += ["--model", str(model), "--dtype", "float32", "--format", "json"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    return int(done.stderr.strip().splitlines()[-1]) / 1024, done


@pytest.mark.slow
def test_two_hour_file_in_bounded_memory(inputs: dict[str, Path], tiny_dir: Path, tmp_path: Path) -> None:
    short, long = tmp_path / "short.wav", tmp_path / "long.wav"
    _long_wav(short, inputs["wav"], hours=60 / 3600)
    _long_wav(long, inputs["wav"], hours=2.0)
    short_mb, short_run = _peak_rss_mb([str(short)], tiny_dir)
    long_mb, long_run = _peak_rss_mb([str(long)], tiny_dir)
    assert short_run.returncode == 0 and long_run.returncode == 0, long_run.stderr
    result = json.loads(long_run.stdout)
    assert result["duration"] == pytest.approx(7200, abs=10)
    starts = [s["start"] for s in result["segments"]]
    assert starts == sorted(starts) and len(starts) > 500
    assert all(0 <= s["start"] < s["end"] <= result["duration"] + 0.01 for s in result["segments"])
    decoded_mb = 7200 * 16000 * 4 / 2**20  # what holding the decoded audio would cost: 439 MB
    print(
        f"\npeak RSS: 1-minute file {short_mb:.0f} MB, 2-hour file {long_mb:.0f} MB (decoded 2 h = {decoded_mb:.0f} MB)"
    )
    assert long_mb < short_mb + decoded_mb / 4  # memory does not grow with the duration


def test_serve_refusals_are_one_clear_line(tmp_path: Path) -> None:
    def serve(*args: str) -> subprocess.CompletedProcess[str]:
        cmd = [sys.executable, "-m", "qasr", "serve", "--port", str(free_port()), *args]
        return subprocess.run(
            cmd, capture_output=True, text=True, timeout=120, env={**os.environ, "HF_HUB_OFFLINE": "1"}
        )

    open_net = serve("--host", "0.0.0.0", "--model", str(tmp_path))
    assert open_net.returncode == 2 and "without API keys" in open_net.stderr
    offline = serve("--model", "Qwen/Qwen3-ASR-0.6B-hf")
    assert offline.returncode == 2 and "Traceback" not in offline.stderr
    assert offline.stderr.startswith(
        "qasr: Model Qwen/Qwen3-ASR-0.6B-hf is not in the local Hugging Face cache"
    )
    assert "`hf download Qwen/Qwen3-ASR-0.6B-hf`" in offline.stderr  # the command huggingface_hub ships


def test_one_file_shows_progress_and_stdout_stays_clean(inputs: dict[str, Path], tiny_dir: Path) -> None:
    done = _qasr(str(inputs["wav"]), model=tiny_dir)
    assert done.returncode == 0, done.stderr
    assert re.fullmatch(r"qasr: hello\.wav: \d+ segments?, \d+ s of audio\n", done.stderr)
    assert "qasr" not in done.stdout and "segment" not in done.stdout and done.stdout.strip()


def test_progress_bar_on_a_terminal(inputs: dict[str, Path], tiny_dir: Path) -> None:
    main, terminal = pty.openpty()
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))  # 24 rows, 100 columns
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = _command(str(inputs["wav"]), model=tiny_dir)
    process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=terminal, text=True, env=env)
    os.close(terminal)
    shown = _read_terminal(main)
    stdout, _ = process.communicate(timeout=300)
    assert process.returncode == 0
    assert re.search(r"hello\.wav: .*\d+ segments?, \d+ s of audio", shown)  # tqdm's bar, one input
    assert "1/1" in shown and stdout.strip() and "segment" not in stdout


def _read_terminal(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        chunks.append(chunk)
    os.close(fd)
    return b"".join(chunks).decode(errors="replace")


def test_transcribe_follows_url_maps_from_options_and_environment(
    inputs: dict[str, Path], tiny_dir: Path
) -> None:
    folder = inputs["wav"].parent
    env = {"QASR_URL_MAP": json.dumps({"https://env-mirror.example/": f"file://{folder}/"})}
    urls = ["https://mirror.example/cli/hello.wav", "https://env-mirror.example/hello.flac"]
    done = _qasr(*urls, "--url-map", f"https://mirror.example/cli/={folder}/", model=tiny_dir, env=env)
    assert done.returncode == 0, done.stderr
    local = _qasr(str(inputs["wav"]), str(inputs["flac"]), model=tiny_dir)
    # the same files, read from the mirrors: the same text under each URL's name
    assert done.stdout == local.stdout.replace(str(inputs["wav"]), urls[0]).replace(
        str(inputs["flac"]), urls[1]
    )


def test_ctrl_c_prints_what_is_done_and_exits_130(
    inputs: dict[str, Path], tiny_dir: Path, tmp_path: Path
) -> None:
    long = tmp_path / "long.wav"
    _long_wav(long, inputs["wav"], hours=900 / 3600)  # long enough to be still running at the signal
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    cmd = _command(str(inputs["wav"]), str(long), model=tiny_dir)
    with (
        (tmp_path / "stdout").open("w") as out,
        subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.PIPE, text=True, env=env, preexec_fn=_default_sigint
        ) as process,
    ):
        lines = _lines(process.stderr)
        seen = list(iter(lambda: lines.get(timeout=300), None))  # up to the long input's first segment
        process.send_signal(signal.SIGINT)
        process.wait(timeout=120)
        stderr = "".join([*seen, *iter(lambda: lines.get(timeout=60), None)])
    stdout = (tmp_path / "stdout").read_text()
    assert process.returncode == 130, stderr
    assert "Traceback" not in stderr and "terminate called" not in stderr
    segments = re.search(
        rf"^qasr: {re.escape(str(long))}: interrupted after (\d+) segments? \(\d+ s of audio\); "
        "their text is on stdout$",
        stderr,
        re.M,
    )
    assert segments and int(segments.group(1)) >= 1, stderr
    # the finished input in full, then the finished segments of the interrupted one
    first = _qasr(str(inputs["wav"]), model=tiny_dir).stdout
    assert stdout.startswith(f"==> {inputs['wav']} <==\n{first}==> {long} <==\n")
    assert stdout.split(f"==> {long} <==\n")[1].strip()


def _default_sigint() -> None:
    """In the child before exec: Ctrl-C's default action, whatever the test runner inherited (a shell
    runs background jobs with SIGINT ignored, and Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _lines(stream: Any, until: str = "[2/2] long.wav") -> queue.Queue[str | None]:
    """A stream's lines as they come, so a test can wait with a timeout: None after the first line
    containing `until`, and again at the end."""
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        for line in stream:
            lines.put(line)
            if until in line:
                lines.put(None)
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    return lines


def test_serve_validates_command_line_values(inputs: dict[str, Path], tiny_dir: Path, tmp_path: Path) -> None:
    """--allow-local-dir arrives as str; it must become a Path like QASR_ALLOW_LOCAL_DIRS does."""
    folder = inputs["wav"].parent
    with live_server(tiny_dir, tmp_path, "--allow-local-dir", str(folder)) as server:
        body = {
            "model": "qwen3-asr-flash",
            "input": {"messages": [{"role": "user", "content": [{"audio": f"file://{inputs['wav']}"}]}]},
        }
        answer = httpx.post(
            server.url + "/api/v1/services/aigc/multimodal-generation/generation", json=body, timeout=120
        )
    assert answer.status_code == 200, server.log
    assert answer.json()["output"]["choices"][0]["message"]["content"][0]["text"]
