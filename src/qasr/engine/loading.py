"""Find a Qwen3-ASR checkpoint, pick device and dtype, and load it in either published layout.

The `-hf` layout loads natively. The original layout (nested `thinker_config`, `thinker.*` weights)
is translated here: loading it with the native classes would silently give a random model
(docs/DESIGN.md, "Trap"), so every load is checked for missing and unexpected weights and refused if any.
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from qasr.errors import ModelLoadError

log = logging.getLogger(__name__)

MODELSCOPE_PREFIX = "modelscope:"

# Original name prefix -> -hf name prefix; applied in order, first match wins (docs/DESIGN.md).
_RENAMES = (
    ("thinker.model.", "model.language_model."),
    ("thinker.lm_head.", "lm_head."),
    ("thinker.audio_tower.proj1.", "model.multi_modal_projector.linear_1."),
    ("thinker.audio_tower.proj2.", "model.multi_modal_projector.linear_2."),
    ("thinker.", "model."),
)

# Keys of the original audio config that the native encoder config does not take.
_AUDIO_DROP = {
    "conv_chunksize",
    "max_source_positions",
    "model_type",
    "architectures",
    "dtype",
    "torch_dtype",
}
_TEXT_KEEP = {
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "hidden_act",
    "max_position_embeddings",
    "initializer_range",
    "rms_norm_eps",
    "attention_bias",
    "attention_dropout",
    "tie_word_embeddings",
}


@dataclass
class LoadedModel:
    """A model ready for inference and the processor that prepares its inputs."""

    model: Any
    processor: Any
    device: torch.device
    dtype: torch.dtype
    path: Path
    layout: str


def resolve_model_dir(model: str) -> Path:
    """Return a local directory holding `model`: a directory as is, `modelscope:<id>` through
    ModelScope, anything else as a Hugging Face hub id (standard cache, `HF_HOME`, `HF_HUB_OFFLINE`)."""
    path = Path(model).expanduser()
    if path.is_dir():
        return path
    if path.is_file():
        raise ModelLoadError(
            f"{model} is a file; --model needs a checkpoint directory, a Hugging Face id or modelscope:<id>."
        )
    if model.startswith(MODELSCOPE_PREFIX):
        return _from_modelscope(model[len(MODELSCOPE_PREFIX) :])
    if model.startswith((".", "/", "~")) or os.sep in model.strip("/").replace("/", "", 1):
        raise ModelLoadError(
            f"Model directory {model} does not exist; pass an existing directory or a hub id."
        )
    return _from_hub(model)


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    try:
        return Path(snapshot_download(repo_id))
    except LocalEntryNotFoundError as exc:
        raise ModelLoadError(
            f"Model {repo_id} is not in the local Hugging Face cache and cannot be downloaded "
            "(offline or HF_HUB_OFFLINE=1): download it on a connected machine with "
            f"`hf download {repo_id}` and copy the cache (HF_HOME), or pass --model DIR."
        ) from exc
    except (HfHubHTTPError, OSError, ValueError) as exc:
        raise ModelLoadError(
            f"Model {repo_id} could not be downloaded from the Hugging Face hub ({type(exc).__name__}): "
            "check the id and the network, or pass --model DIR with a downloaded copy."
        ) from exc


def _from_modelscope(model_id: str) -> Path:
    try:
        from modelscope import snapshot_download  # type: ignore[import-not-found,unused-ignore]
    except ImportError as exc:
        raise ModelLoadError(
            "ModelScope models need the modelscope package: `pip install modelscope`, "
            "or pass a Hugging Face id or a local directory."
        ) from exc
    try:
        return Path(snapshot_download(model_id))
    except Exception as exc:  # modelscope raises many unrelated types; the sentence is what matters
        raise ModelLoadError(
            f"Model {model_id} could not be fetched from ModelScope ({type(exc).__name__}): check the id and "
            "the network, or pass --model DIR with a downloaded copy."
        ) from exc


def pick_device(device: str = "auto") -> torch.device:
    """CUDA when present (for `auto`), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError as exc:
        raise ModelLoadError(f"Unknown device {device!r}: use auto, cpu, cuda or cuda:N.") from exc
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ModelLoadError("Device cuda was asked for but no CUDA GPU is visible: use --device cpu.")
    return dev


def cpu_has_fast_bf16() -> bool:
    """bf16 pays on CPUs with native bf16 dot products (AVX512_BF16 or AMX); elsewhere it is emulated."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """`auto`: bf16 on CUDA and on CPUs with AVX512_BF16/AMX, fp32 elsewhere."""
    if dtype == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_fast_bf16()):
            return torch.bfloat16
        return torch.float32
    table = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
    if dtype not in table:
        raise ModelLoadError(f"Unknown dtype {dtype!r}: use auto, float32, bfloat16 or float16.")
    return table[dtype]


def is_original_layout(path: Path) -> bool:
    """The original Qwen repos nest the model config under `thinker_config`."""
    try:
        config = json.loads((path / "config.json").read_text())
    except FileNotFoundError as exc:
        raise ModelLoadError(f"{path} has no config.json; it is not a Qwen3-ASR checkpoint.") from exc
    return "thinker_config" in config


def translate_original_config(config: dict[str, Any]) -> dict[str, Any]:
    """Turn an original-layout config.json into the native `Qwen3ASRConfig` arguments."""
    thinker = config["thinker_config"]
    audio = {k: v for k, v in thinker["audio_config"].items() if k not in _AUDIO_DROP}
    # The encoder's positions are per 100-frame chunk: 13 after the convolutions, not Whisper's 1500.
    audio["max_position_embeddings"] = 13
    text_in = thinker["text_config"]
    text = {k: v for k, v in text_in.items() if k in _TEXT_KEEP}
    rope_scaling = text_in.get("rope_scaling") or {}
    # Multimodal RoPE sections collapse to plain RoPE for audio-only input; keep only theta.
    text["rope_parameters"] = {
        "rope_type": "default",
        "rope_theta": text_in.get("rope_theta", rope_scaling.get("rope_theta", 1000000.0)),
    }
    out: dict[str, Any] = {"audio_config": audio, "text_config": text}
    for key in ("audio_token_id", "initializer_range"):
        if key in thinker:
            out[key] = thinker[key]
    tie = config.get("tie_word_embeddings", text_in.get("tie_word_embeddings"))
    if tie is not None:
        out["tie_word_embeddings"] = tie
        text["tie_word_embeddings"] = tie
    return out


def rename_original_key(name: str) -> str:
    for old, new in _RENAMES:
        if name.startswith(old):
            return new + name[len(old) :]
    return name


def load(model: str, device: str = "auto", dtype: str = "auto") -> LoadedModel:
    """Resolve, load and check a Qwen3-ASR checkpoint; raise `ModelLoadError` with one clear sentence."""
    path = resolve_model_dir(model)
    dev = pick_device(device)
    torch_dtype = pick_dtype(dtype, dev)
    original = is_original_layout(path)
    # transformers draws a progress bar on stderr for a load that takes well under a second on a
    # local disk; qasr logs one line instead.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    net = _load_original(path, torch_dtype) if original else _load_hf(path, torch_dtype)
    net = net.to(dev).eval()
    processor = _build_processor(path, original)
    log.info("loaded %s (%s layout) on %s as %s", path, "original" if original else "hf", dev, torch_dtype)
    return LoadedModel(net, processor, dev, torch_dtype, path, "original" if original else "hf")


def _refuse_incomplete(path: Path, missing: list[str], unexpected: list[str]) -> None:
    if missing or unexpected:
        sample = ", ".join([*missing[:3], *unexpected[:3]])
        raise ModelLoadError(
            f"Refusing to serve {path}: {len(missing)} missing and {len(unexpected)} unexpected weights "
            f"(e.g. {sample}); the checkpoint is incomplete or not a Qwen3-ASR model."
        )


def _load_hf(path: Path, dtype: torch.dtype) -> Any:
    from transformers import Qwen3ASRForConditionalGeneration

    cls: Any = Qwen3ASRForConditionalGeneration  # from_pretrained's return type depends on its flags
    try:
        net, info = cls.from_pretrained(path, dtype=dtype, output_loading_info=True)
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"Could not load the model in {path}: {exc}") from exc
    _refuse_incomplete(path, sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", [])))
    mismatched = list(info.get("mismatched_keys", []))
    if mismatched:
        raise ModelLoadError(f"Refusing to serve {path}: {len(mismatched)} weights have the wrong shape.")
    return net


def _load_original(path: Path, dtype: torch.dtype) -> Any:
    from safetensors.torch import load_file
    from transformers import Qwen3ASRConfig, Qwen3ASRForConditionalGeneration

    config = Qwen3ASRConfig(**translate_original_config(json.loads((path / "config.json").read_text())))
    files = sorted(path.glob("model-*.safetensors")) or sorted(path.glob("model.safetensors"))
    if not files:
        raise ModelLoadError(f"{path} has no model*.safetensors files.")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        state.update({rename_original_key(k): v for k, v in load_file(str(file)).items()})
    # transformers loads a renamed state dict with its usual checks, tying and buffer set-up.
    cls: Any = Qwen3ASRForConditionalGeneration
    net, info = cls.from_pretrained(
        None, config=config, state_dict=state, dtype=dtype, output_loading_info=True
    )
    _refuse_incomplete(path, sorted(info.get("missing_keys", [])), sorted(info.get("unexpected_keys", [])))
    if (path / "generation_config.json").exists():
        from transformers import GenerationConfig

        net.generation_config = GenerationConfig.from_pretrained(path)
    return net


def _build_processor(path: Path, original: bool) -> Any:
    """The processor, built explicitly for original dirs (AutoProcessor would pick Whisper's extractor)."""
    from transformers import AutoTokenizer, Qwen3ASRFeatureExtractor, Qwen3ASRProcessor

    if not original:
        return Qwen3ASRProcessor.from_pretrained(path)
    tokenizer = AutoTokenizer.from_pretrained(path)
    for attr, token in (
        ("audio_token", "<|audio_pad|>"),
        ("audio_bos_token", "<|audio_start|>"),
        ("audio_eos_token", "<|audio_end|>"),
    ):
        if getattr(tokenizer, attr, None) is None:
            setattr(tokenizer, attr, token)
    return Qwen3ASRProcessor(feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer)
