"""The unmodified dashscope SDKs the end-to-end tests run, each in a child process.

The venv's own dashscope is 2.0.2; `make install-test` installs older releases without their
dependencies into `<venv>/sdk/dashscope-<version>` (requirements/sdk-<version>.txt), which run on the
main environment's dependencies: 1.24.6 (the oldest verified against the sync and realtime
protocols) and 1.25.2 (the oldest 1.x with `dashscope.audio.qwen_asr`, for file transcription)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

MAIN = "2.0.2"


def sdk_env(sdk: Path | None) -> dict[str, str]:
    """The environment of a child process that imports the SDK at `sdk` (None: the venv's own)."""
    env = {**os.environ, "NO_PROXY": "127.0.0.1,localhost"}
    env.pop("DASHSCOPE_API_REGION", None)
    if sdk is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(sdk), os.environ.get("PYTHONPATH")]))
    return env


def sdk_path(version: str) -> Path | None:
    """Where dashscope `version` is imported from (None: the venv's own), checked by importing it."""
    path = None
    if version != MAIN:
        path = Path(sys.prefix) / "sdk" / f"dashscope-{version}"
        if not (path / "dashscope").is_dir():
            pytest.fail(f"dashscope {version} is not in {path}; run `make install-test`", pytrace=False)
    check = "import dashscope.version; print(dashscope.version.__version__)"
    found = subprocess.run(
        [sys.executable, "-c", check], capture_output=True, text=True, env=sdk_env(path), timeout=60
    )
    assert (found.returncode, found.stdout.strip()) == (0, version), found.stderr
    return path
