"""`qasr serve` and `qasr transcribe` print only qasr's own lines: no third-party warning, deprecation
or progress bar reaches a user (issue 11), with the locked dependency set."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.helpers import synthesize
from tests.server import live_server

# What a third party prints: Python warnings, transformers' and others' log records and bars.
_FOREIGN = re.compile(r"Warning|deprecat|Loading weights|it/s\]|UserWarning|FutureWarning", re.IGNORECASE)


def test_transcribe_prints_no_third_party_output(tiny_dir: Path, tmp_path: Path) -> None:
    clip = synthesize("Nothing but our own output.", tmp_path / "clip.wav")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "QASR_DTYPE": "float32"}
    for extra in ([], ["-v"]):
        done = subprocess.run(
            [sys.executable, "-m", "qasr", "transcribe", str(clip), "--model", str(tiny_dir), *extra],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr
        assert not _FOREIGN.search(done.stderr), done.stderr
        for line in done.stderr.splitlines():  # progress and, with -v, qasr's own log lines
            assert line.startswith(("qasr:", "INFO:")), line


def test_serve_prints_no_third_party_output(tiny_dir: Path, tmp_path: Path) -> None:
    # With warm-up: the first generation is where transformers used to warn (past_key_values).
    with live_server(tiny_dir, tmp_path, env={"QASR_WARMUP": "true"}) as server:
        assert httpx.get(server.url + "/health", timeout=10).status_code == 200
        log = server.log
    assert not _FOREIGN.search(log), log
    for line in log.splitlines():
        assert line.startswith("INFO:"), line
