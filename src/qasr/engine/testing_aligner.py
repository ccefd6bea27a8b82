"""Random-weight Qwen3-ForcedAligner checkpoints built offline, for tests (docs/spec/aligner.md,
"A tiny random aligner ...").

`build_aligner_checkpoint` reuses the tiny ASR checkpoint's pieces (`qasr.engine.testing`: the BPE
tokenizer with the special tokens at compact or real ids, the model dims, the config), swaps the LM
head for the 5000-way `score` head, and writes either the `-hf` layout (through the real
`save_pretrained` calls) or the original one (`thinker_config` with `classify_num`, `thinker.*` names,
`thinker.lm_head.weight` for the head). The same seed gives the same weights in both layouts.

A random aligner gives random times: tests assert shapes, unit counts, monotonic spans inside the
audio and offsets, never a particular time.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from qasr.engine.testing import (
    DIMS,
    REAL_PLAIN_IDS,
    REAL_SPECIAL_IDS,
    FileLayout,
    IdLayout,
    ModelDims,
    _config_dict,
    _save_original_layout,
    build_tokenizer,
)

ALIGNER_LABELS = 5000
"""The aligner's classes: class x 80 ms = time (docs/spec/aligner.md)."""
REAL_ALIGNER_VOCAB_SIZE = 152064
"""The published aligner's embedding rows (more than the ASR model's 151936)."""

ALIGNER_DIMS: dict[str, ModelDims] = {
    "tiny": DIMS["tiny"],
    # The published aligner (docs/DESIGN.md, "Dims"): the 1.7B model's audio encoder, the 0.6B text
    # model, untied (the head is the 5000-way classifier, not the embeddings).
    "0.6B": ModelDims(24, 1024, 16, 4096, 480, 28, 1024, 16, 8, 128, 3072, tie_embeddings=False),
}
"""Sizes `build_aligner_checkpoint` can build: tiny for tests, the real one for benchmarks."""

_TINY_CLASSES = 100
"""Classes a tiny random head may pick (8 s): the rows above are zeroed, so a random model's times
fall inside a test clip instead of nearly all being clipped to its end (a test-only rig, like the
ASR builder's zeroed end tokens)."""

# The aligner input (docs/spec/aligner.md), so the directory is a complete checkpoint; the engine
# builds this string itself and never relies on a checkpoint's template.
ALIGNER_CHAT_TEMPLATE = (
    "{%- for m in messages if m.role == 'user' and m.content is not string -%}"
    "{%- for part in m.content -%}"
    "{%- if part.type == 'audio' -%}<|audio_start|><|audio_pad|><|audio_end|>"
    "{%- elif part.text is defined -%}{{ part.text }}<timestamp><timestamp>{%- endif -%}"
    "{%- endfor -%}{%- endfor -%}"
)


def build_aligner_checkpoint(
    out_dir: str | Path,
    *,
    layout: FileLayout = "hf",
    ids: IdLayout = "compact",
    seed: int = 0,
    num_labels: int = ALIGNER_LABELS,
    size: str = "tiny",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random-weight forced aligner to `out_dir` and return the path.

    `num_labels` other than 5000 builds a checkpoint the loader must refuse. `size="0.6B"` builds the
    published shapes (benchmarks: the real FLOPs and bytes), saved as `dtype`."""
    from transformers import (
        Qwen3ASRConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForTokenClassification,
        Qwen3ASRProcessor,
    )
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = build_tokenizer(ids)
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in [*REAL_SPECIAL_IDS, *REAL_PLAIN_IDS]}
    vocab_size = REAL_ALIGNER_VOCAB_SIZE if ids == "real" else len(tokenizer)
    head: dict[str, Any] = {
        "num_labels": num_labels,
        "token_classification_bias": False,
        "architectures": ["Qwen3ASRForTokenClassification"],
    }
    config = Qwen3ASRConfig(**_config_dict(ALIGNER_DIMS[size], vocab_size, token_ids), **head)
    torch.manual_seed(seed)
    model: Any = Qwen3ASRForTokenClassification(config).eval()
    if size == "tiny":
        with torch.no_grad():
            model.score.weight[_TINY_CLASSES:] = 0.0
    model = model.to(dtype)
    processor = Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(),
        tokenizer=tokenizer,
        chat_template=ALIGNER_CHAT_TEMPLATE,
        timestamp_segment_time=80,
    )
    if layout == "hf":
        model.save_pretrained(out)
        processor.save_pretrained(out)
    else:
        _save_original_aligner(out, model, config.to_dict(), tokenizer, num_labels)
    return out


def _save_original_aligner(
    out: Path, model: torch.nn.Module, hf_config: dict[str, Any], tokenizer: Any, num_labels: int
) -> None:
    """The ASR builder's original layout, then what makes it an aligner there: the head stored as
    `thinker.lm_head.weight`, and `classify_num` with the timestamp fields in the config."""
    _save_original_layout(out, model, hf_config, tokenizer)
    weights = out / "model.safetensors"
    state = {
        ("thinker.lm_head." + k[len("score.") :] if k.startswith("score.") else k): v
        for k, v in load_file(str(weights)).items()
    }
    save_file(state, str(weights), metadata={"format": "pt"})

    config = json.loads((out / "config.json").read_text())
    thinker = config["thinker_config"]
    thinker["model_type"] = "qwen3_forced_aligner"
    thinker["classify_num"] = num_labels
    thinker["audio_end_token_id"] = tokenizer.convert_tokens_to_ids("<|audio_end|>")
    thinker["text_config"]["tie_word_embeddings"] = False
    config["tie_word_embeddings"] = False
    config["timestamp_token_id"] = hf_config["timestamp_token_id"]
    config["timestamp_segment_time"] = 80
    (out / "config.json").write_text(json.dumps(config, indent=2))
