"""Shared fixtures: tiny random-weight checkpoints built offline once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Nothing in the tests may reach the network: the hub client must fail fast instead of downloading.
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
os.environ.setdefault("QASR_DATA_DIR", str(Path(os.environ.get("TMPDIR", "/tmp"), f"qasr-{os.getpid()}")))


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`-hf` layout, compact ids."""
    from qasr.engine.testing import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-hf"))


@pytest.fixture(scope="session")
def tiny_real_ids_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`-hf` layout with the published special-token ids."""
    from qasr.engine.testing import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-real"), ids="real")


@pytest.fixture(scope="session")
def tiny_original_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Original layout (thinker_config, thinker.* names), same weights as `tiny_dir`."""
    from qasr.engine.testing import build_checkpoint

    return build_checkpoint(tmp_path_factory.mktemp("tiny-orig"), layout="original")


@pytest.fixture(scope="session")
def engine(tiny_dir: Path):  # type: ignore[no-untyped-def]
    from qasr.engine.qwen3 import Qwen3ASREngine

    return Qwen3ASREngine.load(str(tiny_dir), device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def tiny_aligner_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random-weight forced aligner, `-hf` layout, compact ids (same tokenizer as `tiny_dir`)."""
    from qasr.engine.testing_aligner import build_aligner_checkpoint

    return build_aligner_checkpoint(tmp_path_factory.mktemp("tiny-aligner"))
