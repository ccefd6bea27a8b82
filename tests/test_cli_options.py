"""The `qasr` command's options and start-up checks: what a user sees before any model is loaded."""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from qasr.cli import _parser
from qasr.settings import DEFAULT_MODEL, Settings

MIRROR_EXAMPLE = "https://dashscope.oss-cn-beijing.aliyuncs.com/audios/=/srv/mirror/audios/"
"""The README's --url-map example: a directory that does not exist here."""


def _run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "qasr", *args], capture_output=True, text=True, env=full_env, timeout=120
    )


def _subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    (sub,) = (a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(sub.choices)


def test_python_m_qasr_prints_the_version() -> None:
    done = _run("--version")
    assert done.returncode == 0
    assert done.stdout == f"qasr {importlib.metadata.version('qasr')}\n"


def test_every_option_has_a_help_text() -> None:
    for name, sub in _subcommands().items():
        for action in sub._actions:
            assert action.help and action.help != argparse.SUPPRESS, f"{name} {action.option_strings}"


@pytest.mark.parametrize("command", ["serve", "transcribe"])
def test_help_shows_the_settings_defaults_and_variables(command: str) -> None:
    """Each option backed by a Settings field shows that field's default and its QASR_ variable."""
    backed = [a for a in _subcommands()[command]._actions if a.dest in Settings.model_fields]
    from qasr import cli

    tables = (
        (cli._SERVE_OPTIONS, cli._MODEL_OPTIONS)
        if command == "serve"
        else (cli._SOURCE_OPTIONS, cli._MODEL_OPTIONS)
    )
    assert len(backed) == sum(len(table) for table in tables)
    for action in backed:
        field = Settings.model_fields[action.dest]
        default = field.get_default(call_default_factory=True)
        if isinstance(default, bool):
            default = "on" if default else "off"
        elif default in (None, [], {}):
            default = "none"
        assert f"[default: {default}; env QASR_{action.dest.upper()}]" in action.help
        first_words = " ".join((field.description or "").replace("`", "").split()[:3])
        assert first_words in action.help


def test_serve_help_names_the_default_model() -> None:
    done = _run("serve", "--help")
    shown = " ".join(done.stdout.split())
    assert done.returncode == 0
    assert f"[default: {DEFAULT_MODEL}; env QASR_MODEL]" in shown
    assert "[default: 8000; env QASR_PORT]" in shown
    assert "--dtype {auto,float32,bfloat16,float16}" in shown  # choices from the Settings type


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["serve", "--url-map", MIRROR_EXAMPLE], {}),
        (["transcribe", "x.wav", "--url-map", MIRROR_EXAMPLE], {}),
        (
            ["transcribe", "x.wav"],
            {"QASR_URL_MAP": json.dumps({"https://a.example/": "/srv/mirror/audios/"})},
        ),
    ],
    ids=["serve", "transcribe", "environment"],
)
def test_a_url_map_to_a_missing_directory_is_refused_at_start(args: list[str], env: dict[str, str]) -> None:
    done = _run(*args, env=env)
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert done.stderr.startswith("qasr: invalid --url-map / QASR_URL_MAP: the target /srv/mirror/audios/")
    assert "is not an existing directory" in done.stderr


def test_url_map_targets_may_be_urls_or_existing_directories(tmp_path: Path) -> None:
    mapping = {
        "https://a.example/": "https://mirror.example/a/",
        "https://b.example/": f"{tmp_path}/",
        "https://c.example/": f"file://{tmp_path}/",
    }
    assert Settings(url_map=mapping).url_map == mapping


def test_command_line_values_are_validated_like_the_environment(tmp_path: Path) -> None:
    args = _parser().parse_args(["serve", "--allow-local-dir", str(tmp_path), "--port", "9000"])
    from qasr.cli import _settings

    settings = _settings(args)
    assert settings.allow_local_dirs == [tmp_path] and settings.port == 9000


def test_a_busy_port_is_refused_before_the_model_loads() -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # the model does not exist either: the port's error must come first
        done = _run("serve", "--model", "/nonexistent/model", "--port", str(port))
    assert done.returncode == 2
    assert (
        done.stderr
        == f"qasr: cannot listen on 127.0.0.1:{port}: port {port} is already in use; pass another --port.\n"
    )


def test_a_file_given_as_model_has_its_own_message(tmp_path: Path) -> None:
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a directory")
    done = _run("transcribe", str(tmp_path / "x.wav"), "--model", str(weights))
    assert done.returncode == 2
    assert done.stderr == (
        f"qasr: {weights} is a file; --model needs a checkpoint directory, a Hugging Face id or "
        "modelscope:<id>.\n"
    )
