"""Find and load Qwen3-ForcedAligner in either published layout (docs/spec/aligner.md, "Checkpoint layouts").

The `-hf` layout loads natively (`Qwen3ASRForTokenClassification`). The original layout (nested
`thinker_config` with `classify_num`, `thinker.*` weights, the head as `thinker.lm_head`) is translated
here: the native classes would load it without an error as a random model with 2 labels (the spec's
"Trap"). Every load is refused unless it has exactly the weights the model expects, with the right
shapes, and 5000 labels; an ASR checkpoint given as the aligner is refused by name.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qasr.engine.loading import (
    _build_processor,
    _refuse_incomplete,
    pick_device,
    pick_dtype,
    resolve_model_dir,
    translate_original_config,
)
from qasr.errors import ModelLoadError

log = logging.getLogger(__name__)

ALIGNER_LABELS = 5000
"""Classes of the aligner's head; class x `timestamp_segment_time` = time."""
DEFAULT_SEGMENT_MS = 80.0
"""Milliseconds per class when a checkpoint does not say (docs/spec/aligner.md)."""

# Original name prefix -> -hf name prefix, in the spec's order, first match wins.
_RENAMES = (
    ("thinker.audio_tower.proj1.", "model.multi_modal_projector.linear_1."),
    ("thinker.audio_tower.proj2.", "model.multi_modal_projector.linear_2."),
    ("thinker.audio_tower.", "model.audio_tower."),
    ("thinker.model.", "model.language_model."),
    ("thinker.lm_head.", "score."),
)
_ASR_ARCHITECTURE = "Qwen3ASRForConditionalGeneration"
_ALIGNER_ARCHITECTURE = "Qwen3ASRForTokenClassification"


@dataclass
class LoadedAligner:
    """A forced aligner ready for inference, with the processor that prepares its inputs."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    path: Path
    layout: str
    timestamp_token_id: int
    """Id of `<timestamp>`: the positions whose class is a time."""
    segment_ms: float
    """Milliseconds per class (`timestamp_segment_time`)."""


def rename_aligner_key(name: str) -> str:
    """An original-layout weight name as the `-hf` model names it."""
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def translate_aligner_config(config: dict[str, Any]) -> dict[str, Any]:
    """An original aligner config.json as `Qwen3ASRConfig` arguments: the ASR translation (flat audio and
    text configs, plain RoPE) plus the head (`classify_num` labels, no bias, untied embeddings)."""
    thinker = config["thinker_config"]
    out = translate_original_config(config)
    # Without `classify_num` (an aligner known by its model_type), the head's shape decides.
    out["num_labels"] = int(thinker.get("classify_num", ALIGNER_LABELS))
    out["token_classification_bias"] = False
    out["tie_word_embeddings"] = False
    out["text_config"]["tie_word_embeddings"] = False
    out["architectures"] = [_ALIGNER_ARCHITECTURE]
    timestamp = config.get("timestamp_token_id", thinker.get("timestamp_token_id"))
    if timestamp is not None:
        out["timestamp_token_id"] = int(timestamp)
    return out


def load_aligner(model: str, device: str = "auto", dtype: str = "auto") -> LoadedAligner:
    """Resolve (directory, hub id or `modelscope:<id>`), load and check a forced aligner; raise
    `ModelLoadError` with one clear sentence."""
    try:
        path, config = check_aligner(model)
        dev = pick_device(device)
        torch_dtype = pick_dtype(dtype, dev)
        return _load_checked(path, config, dev, torch_dtype)
    except ModelLoadError as exc:
        if "\n" not in exc.message:
            raise
        # One line: the CLI prints it as the whole report (libraries' messages span several).
        raise ModelLoadError(" ".join(exc.message.split())) from exc
    except Exception as exc:  # a broken checkpoint fails in many libraries' types; one sentence here
        detail = (str(exc).strip().splitlines() or [""])[0][:300]
        raise ModelLoadError(
            f"Could not load the forced aligner {model} ({type(exc).__name__}: {detail}); "
            "the checkpoint is incomplete or damaged (--aligner / QASR_ALIGNER)."
        ) from exc


def _load_checked(
    path: Path, config: dict[str, Any], dev: torch.device, torch_dtype: torch.dtype
) -> LoadedAligner:
    original = "thinker_config" in config
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    net = _load_original(path, config, torch_dtype) if original else _load_hf(path, torch_dtype)
    labels = int(net.config.num_labels)
    if labels != ALIGNER_LABELS or net.score.out_features != ALIGNER_LABELS:
        raise ModelLoadError(_labels_message(path, labels))
    net = net.to(dev).eval()
    processor = _build_processor(path, original)
    if original:
        processor.timestamp_segment_time = config.get("timestamp_segment_time", DEFAULT_SEGMENT_MS)
    timestamp_id = int(net.config.timestamp_token_id)
    if processor.tokenizer.convert_tokens_to_ids("<timestamp>") != timestamp_id:
        raise ModelLoadError(
            f"Refusing to serve {path} as the forced aligner: its tokenizer's <timestamp> id does not "
            f"match the config's timestamp_token_id {timestamp_id}; the checkpoint is inconsistent."
        )
    layout = "original" if original else "hf"
    segment_ms = float(getattr(processor, "timestamp_segment_time", None) or DEFAULT_SEGMENT_MS)
    log.info("loaded aligner %s (%s layout) on %s as %s", path, layout, dev, torch_dtype)
    return LoadedAligner(net, processor, dev, torch_dtype, path, layout, timestamp_id, segment_ms)


def check_aligner(model: str) -> tuple[Path, dict[str, Any]]:
    """The checks that need no weights (seconds, not a load): `model` resolves to a directory whose
    config is a forced aligner with 5000 labels. Returns the directory and its config."""
    path = resolve_aligner_dir(model)
    config = _read_config(path)
    _check_is_aligner(path, config, "thinker_config" in config)
    return path, config


def resolve_aligner_dir(model: str) -> Path:
    """`qasr.engine.loading.resolve_model_dir`, with errors that name the aligner's option (a message
    telling the user to fix `--model` would send them to the wrong one)."""
    try:
        return resolve_model_dir(model)
    except ModelLoadError as exc:
        message = exc.message.replace("--model DIR", "--aligner DIR").replace(
            "--model needs", "--aligner needs"
        )
        if message.startswith("Model "):
            message = "Aligner " + message.removeprefix("Model ")
        raise ModelLoadError(
            f"{message.rstrip('.')} (--aligner / QASR_ALIGNER; `none` turns word timestamps off)."
        ) from exc


def _read_config(path: Path) -> dict[str, Any]:
    try:
        config: dict[str, Any] = json.loads((path / "config.json").read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(
            f"{path} has no config.json; it is not a Qwen3-ForcedAligner checkpoint."
        ) from exc
    except ValueError as exc:
        raise ModelLoadError(f"{path}/config.json is not valid JSON: {exc}") from exc
    return config


def _check_is_aligner(path: Path, config: dict[str, Any], original: bool) -> None:
    """Refuse an ASR checkpoint, another model, or a head without 5000 labels, before loading weights."""
    if config.get("model_type") != "qwen3_asr":
        raise ModelLoadError(
            f"{path} is not a Qwen3-ForcedAligner checkpoint (model_type {config.get('model_type')!r}); "
            "pass Qwen/Qwen3-ForcedAligner-0.6B or its -hf copy."
        )
    if original:
        thinker = config["thinker_config"]
        is_aligner = "classify_num" in thinker or thinker.get("model_type") == "qwen3_forced_aligner"
        labels = thinker.get("classify_num")
    else:
        archs = config.get("architectures") or []
        labels = len(config.get("id2label") or {}) or config.get("num_labels")
        is_aligner = _ASR_ARCHITECTURE not in archs and (
            _ALIGNER_ARCHITECTURE in archs or labels == ALIGNER_LABELS
        )
    if not is_aligner:
        raise ModelLoadError(
            f"{path} is a Qwen3-ASR speech-recognition checkpoint, not the forced aligner: pass "
            "Qwen/Qwen3-ForcedAligner-0.6B (or -hf) as the aligner and the ASR model as the model."
        )
    # Unknown here (no count in the config): checked on the loaded model instead.
    if labels is not None and labels != ALIGNER_LABELS:
        raise ModelLoadError(_labels_message(path, labels))


def _labels_message(path: Path, labels: object) -> str:
    return (
        f"Refusing to serve {path} as the forced aligner: its head has {labels} labels, not "
        f"{ALIGNER_LABELS} (one per 80 ms); the checkpoint is not Qwen3-ForcedAligner."
    )


def _refuse_mismatched(path: Path, info: dict[str, Any]) -> None:
    _refuse_incomplete(path, sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", [])))
    mismatched = sorted(str(k[0] if isinstance(k, tuple) else k) for k in info.get("mismatched_keys", []))
    if mismatched:
        raise ModelLoadError(
            f"Refusing to serve {path} as the forced aligner: {len(mismatched)} weights have the wrong "
            f"shape (e.g. {', '.join(mismatched[:3])})."
        )


def _load_hf(path: Path, dtype: torch.dtype) -> Any:
    from transformers import Qwen3ASRForTokenClassification

    cls: Any = Qwen3ASRForTokenClassification  # from_pretrained's return type depends on its flags
    try:
        net, info = cls.from_pretrained(
            path, dtype=dtype, output_loading_info=True, ignore_mismatched_sizes=True
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"Could not load the forced aligner in {path}: {exc}") from exc
    _refuse_mismatched(path, info)
    return net


def _load_original(path: Path, config: dict[str, Any], dtype: torch.dtype) -> Any:
    from safetensors.torch import load_file
    from transformers import Qwen3ASRConfig, Qwen3ASRForTokenClassification

    try:
        net_config = Qwen3ASRConfig(**translate_aligner_config(config))
    except (KeyError, TypeError, ValueError) as exc:
        raise ModelLoadError(f"Could not read the forced aligner's config in {path}: {exc}") from exc
    files = sorted(path.glob("model-*.safetensors")) or sorted(path.glob("model.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no model*.safetensors files.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update({rename_aligner_key(k): v for k, v in load_file(str(file)).items()})
    cls: Any = Qwen3ASRForTokenClassification
    try:
        net, info = cls.from_pretrained(
            None,
            config=net_config,
            state_dict=state,
            dtype=dtype,
            output_loading_info=True,
            ignore_mismatched_sizes=True,
        )
    except (OSError, ValueError, RuntimeError) as exc:
        raise ModelLoadError(f"Could not load the forced aligner in {path}: {exc}") from exc
    _refuse_mismatched(path, info)
    return net
