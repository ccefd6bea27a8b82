"""A bad `--aligner` stops `qasr serve` and `qasr transcribe` at start with one clear line and exit
code 2, before the server listens and before the recognizer's (longer) load (issue 14)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from qasr import cli
from qasr.engine.testing_aligner import build_aligner_checkpoint
from tests.server import free_port

MISSING_MODEL = "/nonexistent/qasr-asr-model"
"""A recognizer that cannot load: an aligner error that names the aligner was found first."""


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """What `qasr serve` would have served: nothing, if the refusal comes first."""
    calls: list[Any] = []
    monkeypatch.setattr("qasr.api.server.serve", lambda app, settings: calls.append(app))
    return calls


@pytest.fixture(scope="module")
def wrong_labels(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_aligner_checkpoint(tmp_path_factory.mktemp("labels"), num_labels=7)


@pytest.fixture(scope="module")
def damaged(tmp_path_factory: pytest.TempPathFactory, tiny_aligner_dir: Path) -> Path:
    out = tmp_path_factory.mktemp("damaged") / "aligner"
    shutil.copytree(tiny_aligner_dir, out)
    weights = out / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    return out


def _refusal(capsys: pytest.CaptureFixture[str], code: int) -> str:
    err = capsys.readouterr().err
    assert code == 2
    assert err.startswith("qasr: ") and err.endswith("\n") and err.count("\n") == 1, err
    assert "Traceback" not in err
    return err


def _serve(aligner: str, model: str = MISSING_MODEL) -> int:
    return cli.main(["serve", "--port", str(free_port()), "--model", model, "--aligner", aligner])


@pytest.mark.parametrize(
    ("aligner", "expected"),
    [
        ("/nonexistent/aligner", "Aligner directory /nonexistent/aligner does not exist"),
        ("Qwen/Qwen3-ForcedAligner-0.6B-hf", "not in the local Hugging Face cache"),
    ],
)
def test_serve_refuses_an_aligner_it_cannot_find(
    aligner: str, expected: str, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(capsys, _serve(aligner))
    assert expected in err and "--aligner" in err
    assert "--model" not in err  # the option to fix is the aligner's
    assert served == []


def test_serve_refuses_a_wrong_label_count(
    wrong_labels: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(capsys, _serve(str(wrong_labels)))
    assert "7 labels, not 5000" in err
    assert served == []


def test_serve_refuses_a_damaged_checkpoint(
    damaged: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(capsys, _serve(str(damaged)))
    assert f"Could not load the forced aligner {damaged}" in err and "SafetensorError" in err
    assert served == []


def test_serve_refuses_the_recognizer_as_aligner(
    tiny_dir: Path, served: list[Any], capsys: pytest.CaptureFixture[str]
) -> None:
    err = _refusal(capsys, _serve(str(tiny_dir), model=str(tiny_dir)))
    assert "speech-recognition checkpoint, not the forced aligner" in err
    assert served == []


def test_serve_hands_the_loaded_aligner_to_the_app(
    tiny_dir: Path, tiny_aligner_dir: Path, served: list[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    from qasr.api import app as app_module
    from qasr.engine.aligner import Qwen3AlignerEngine

    given: list[Any] = []
    real = app_module.create_app
    monkeypatch.setattr(app_module, "create_app", lambda *a: given.append(a) or real(*a))
    argv = ["--model", str(tiny_dir), "--aligner", str(tiny_aligner_dir), "--dtype", "float32"]
    assert cli.main(["serve", "--port", str(free_port()), *argv]) == 0
    assert len(served) == 1
    assert isinstance(given[0][2], Qwen3AlignerEngine)  # loaded before listening, not in the app


def test_transcribe_refuses_a_bad_aligner_before_loading_the_model(
    wrong_labels: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import wave

    clip = tmp_path / "clip.wav"
    with wave.open(str(clip), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(16000)
        out.writeframes(np.zeros(16000, dtype=np.int16).tobytes())
    code = cli.main(["transcribe", str(clip), "--model", MISSING_MODEL, "--aligner", str(wrong_labels)])
    err = _refusal(capsys, code)
    assert "7 labels, not 5000" in err
    assert capsys.readouterr().out == ""
