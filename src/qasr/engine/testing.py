"""Random-weight Qwen3-ASR checkpoints built offline, for tests and benchmarks (docs/DESIGN.md, "Testing
without model weights").

`build_checkpoint` writes the exact `-hf` file layout through the real `save_pretrained` calls
(config.json, generation_config.json, model.safetensors, processor_config.json, chat_template.jinja,
tokenizer.json, tokenizer_config.json), or the original layout (`thinker_config`, `thinker.*` weight
names) that the loader must translate. Two token-id layouts: `compact` (a few hundred ids; catches
hard-coded ids) and `real` (the published special-token ids in a 151936-row vocabulary).

A random model transcribes nonsense: tests assert plumbing, never a transcript.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors.torch import save_file

# The published special-token ids (docs/DESIGN.md); `compact` places the same tokens right after the BPE.
REAL_SPECIAL_IDS: dict[str, int] = {
    "<|endoftext|>": 151643,
    "<|im_start|>": 151644,
    "<|im_end|>": 151645,
    "<|audio_start|>": 151669,
    "<|audio_end|>": 151670,
    "<|audio_pad|>": 151676,
}
REAL_PLAIN_IDS: dict[str, int] = {"<asr_text>": 151704, "<timestamp>": 151705}
REAL_VOCAB_SIZE = 151936

# Our own chat template: renders the prompt docs/DESIGN.md describes. The engine builds prompts itself
# (the backend owns its prompt format); the template ships so the directory is a complete checkpoint.
CHAT_TEMPLATE = (
    "{%- set sys = namespace(text='') -%}"
    "{%- for m in messages if m.role == 'system' -%}"
    "{%- if m.content is string -%}{%- set sys.text = sys.text + m.content -%}"
    "{%- else -%}{%- for part in m.content if part.text is defined -%}"
    "{%- set sys.text = sys.text + part.text -%}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "<|im_start|>system\n{{ sys.text }}<|im_end|>\n<|im_start|>user\n"
    "{%- for m in messages if m.role == 'user' and m.content is not string -%}"
    "{%- for part in m.content if part.type == 'audio' -%}<|audio_start|><|audio_pad|><|audio_end|>"
    "{%- endfor -%}{%- endfor -%}"
    "<|im_end|>\n"
    "{%- for m in messages if m.role == 'assistant' -%}<|im_start|>assistant\n"
    "{%- if m.content is string -%}{{ m.content }}{%- else -%}"
    "{%- for part in m.content if part.text is defined -%}{{ part.text }}{%- endfor -%}{%- endif -%}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}<|im_start|>assistant\n{%- endif -%}"
)

# Text the tiny BPE learns from: English, Chinese and the header the model writes, so decoded
# output mixes ASCII and multi-byte characters (exercises incremental decoding).
_CORPUS = [
    "language English<asr_text>",
    "language Chinese<asr_text>",
    "language Cantonese<asr_text>",
    "language None<asr_text>",
    "Welcome to the speech recognition service. The quick brown fox jumps over the lazy dog.",
    "Numbers like one hundred and twenty three, dates, times and money appear in speech.",
    "欢迎使用阿里云语音识别服务。今天天气很好，我们一起去公园散步吧！",
    "语音识别模型把声音变成文字，支持中文、英文、粤语和多种语言。",
    "こんにちは、世界。안녕하세요. Привет, мир. Hola, ¿qué tal? Ça va très bien.",
]


def _corpus() -> list[str]:
    """The sentences above plus generated words and Chinese characters, so the BPE has thousands of
    ids: with only a few hundred, a random model falls into loops at once instead of writing text."""
    rng = random.Random(0)
    syllables = [
        "ka",
        "to",
        "ri",
        "mu",
        "sen",
        "do",
        "la",
        "vi",
        "por",
        "te",
        "an",
        "el",
        "qu",
        "is",
        "ber",
        "go",
    ]
    words = ["".join(rng.choice(syllables) for _ in range(rng.randint(1, 3))) for _ in range(3000)]
    han = [chr(0x4E00 + i * 7) for i in range(2500)]
    latin = [" ".join(rng.sample(words, 12)) + "." for _ in range(400)]
    chinese = ["".join(rng.sample(han, 15)) + "。" for _ in range(400)]
    return _CORPUS * 4 + latin + chinese


@dataclass(frozen=True)
class ModelDims:
    """The sizes that matter for a Qwen3-ASR checkpoint."""

    audio_layers: int
    audio_d_model: int
    audio_heads: int
    audio_ffn: int
    downsample_hidden: int
    text_layers: int
    text_hidden: int
    text_heads: int
    text_kv_heads: int
    head_dim: int
    text_ffn: int
    tie_embeddings: bool


DIMS: dict[str, ModelDims] = {
    # Untied head: a random untied head gives varied text (docs/DESIGN.md), which exercises streaming.
    "tiny": ModelDims(2, 32, 2, 64, 8, 2, 32, 4, 2, 8, 64, tie_embeddings=False),
    "0.6B": ModelDims(18, 896, 14, 3584, 480, 28, 1024, 16, 8, 128, 3072, tie_embeddings=True),
    "1.7B": ModelDims(24, 1024, 16, 4096, 480, 28, 2048, 16, 8, 128, 6144, tie_embeddings=True),
}

IdLayout = Literal["compact", "real"]
FileLayout = Literal["hf", "original"]


def build_tokenizer(ids: IdLayout = "compact", bpe_size: int = 4000) -> Any:
    """A byte-level BPE tokenizer with the Qwen3-ASR special tokens at the chosen ids."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, trainers
    from transformers import Qwen2Tokenizer

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    bpe.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=bpe_size, initial_alphabet=alphabet))
    state = json.loads(bpe.to_str())
    vocab: dict[str, int] = dict(state["model"]["vocab"])
    merges: Any = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in state["model"]["merges"]]

    if ids == "real":
        special, plain = REAL_SPECIAL_IDS, REAL_PLAIN_IDS
        # Fill every id up to the real vocabulary so any id the random model writes decodes to text.
        taken = set(vocab.values()) | set(special.values()) | set(plain.values())
        for i in range(REAL_VOCAB_SIZE):
            if i not in taken:
                vocab[f"Ġw{i}"] = i
    else:
        base = len(vocab)
        names = [*REAL_SPECIAL_IDS, *REAL_PLAIN_IDS]
        numbered = {name: base + i for i, name in enumerate(names)}
        special = {k: numbered[k] for k in REAL_SPECIAL_IDS}
        plain = {k: numbered[k] for k in REAL_PLAIN_IDS}
    vocab.update(special)
    vocab.update(plain)

    tokenizer = Qwen2Tokenizer(
        vocab=vocab,
        merges=merges,
        extra_special_tokens={
            "audio_token": "<|audio_pad|>",
            "audio_bos_token": "<|audio_start|>",
            "audio_eos_token": "<|audio_end|>",
        },
    )
    tokenizer.add_tokens([AddedToken(t, special=True, normalized=False) for t in special])
    # `<asr_text>` is not special: it must survive skip_special_tokens (docs/DESIGN.md).
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in plain])
    return tokenizer


def _config_dict(dims: ModelDims, vocab_size: int, token_ids: dict[str, int]) -> dict[str, Any]:
    eos = [token_ids["<|endoftext|>"], token_ids["<|im_end|>"]]
    return {
        "audio_config": {
            "num_mel_bins": 128,
            "encoder_layers": dims.audio_layers,
            "encoder_attention_heads": dims.audio_heads,
            "encoder_ffn_dim": dims.audio_ffn,
            "d_model": dims.audio_d_model,
            "output_dim": dims.text_hidden,
            "downsample_hidden_size": dims.downsample_hidden,
            "n_window": 50,
            "n_window_infer": 800,
            "max_position_embeddings": 13,
        },
        "text_config": {
            "vocab_size": vocab_size,
            "hidden_size": dims.text_hidden,
            "intermediate_size": dims.text_ffn,
            "num_hidden_layers": dims.text_layers,
            "num_attention_heads": dims.text_heads,
            "num_key_value_heads": dims.text_kv_heads,
            "head_dim": dims.head_dim,
            "max_position_embeddings": 65536,
            "rope_theta": 1000000.0,
            "tie_word_embeddings": dims.tie_embeddings,
        },
        "audio_token_id": token_ids["<|audio_pad|>"],
        "timestamp_token_id": token_ids["<timestamp>"],
        "pad_token_id": token_ids["<|im_end|>"],
        "eos_token_id": eos,
        "tie_word_embeddings": dims.tie_embeddings,
    }


def build_checkpoint(
    out_dir: str | Path,
    *,
    size: str = "tiny",
    ids: IdLayout = "compact",
    layout: FileLayout = "hf",
    seed: int = 0,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """Write a random-weight Qwen3-ASR checkpoint to `out_dir` and return the path.

    The same `seed`, `size` and `ids` give the same weights in both file layouts, so an
    original-layout copy must load to identical logits as the `-hf` copy.
    """
    from transformers import (
        GenerationConfig,
        Qwen3ASRConfig,
        Qwen3ASRFeatureExtractor,
        Qwen3ASRForConditionalGeneration,
        Qwen3ASRProcessor,
    )

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dims = DIMS[size]
    tokenizer = build_tokenizer(ids)
    token_ids = {t: tokenizer.convert_tokens_to_ids(t) for t in [*REAL_SPECIAL_IDS, *REAL_PLAIN_IDS]}
    vocab_size = REAL_VOCAB_SIZE if ids == "real" else len(tokenizer)

    config = Qwen3ASRConfig(**_config_dict(dims, vocab_size, token_ids))
    torch.manual_seed(seed)
    model: Any = Qwen3ASRForConditionalGeneration(config)
    model = model.to(dtype).eval()
    eos = [token_ids["<|endoftext|>"], token_ids["<|im_end|>"]]
    if not dims.tie_embeddings:
        # With a few hundred ids a random head ends most outputs after a token or two. Zero logits for
        # the end tokens make it write until its token budget, like a real transcript of real speech,
        # which is what streaming, budgets and repetition guards need to be exercised.
        with torch.no_grad():
            model.lm_head.weight[eos] = 0.0
    model.generation_config = GenerationConfig(
        eos_token_id=eos, pad_token_id=token_ids["<|im_end|>"], do_sample=False, max_new_tokens=512
    )
    processor = Qwen3ASRProcessor(
        feature_extractor=Qwen3ASRFeatureExtractor(), tokenizer=tokenizer, chat_template=CHAT_TEMPLATE
    )
    if layout == "hf":
        model.save_pretrained(out)
        processor.save_pretrained(out)
    else:
        _save_original_layout(out, model, config.to_dict(), tokenizer)
    return out


# Inverse of the loader's renames (docs/DESIGN.md): -hf name prefix -> original name prefix, first match wins.
_TO_ORIGINAL = (
    ("model.language_model.", "thinker.model."),
    ("lm_head.", "thinker.lm_head."),
    ("model.multi_modal_projector.linear_1.", "thinker.audio_tower.proj1."),
    ("model.multi_modal_projector.linear_2.", "thinker.audio_tower.proj2."),
    ("model.", "thinker."),
)


def _save_original_layout(
    out: Path, model: torch.nn.Module, hf_config: dict[str, Any], tokenizer: Any
) -> None:
    """Lay the model out as the original Qwen repos do: nested `thinker_config`, `thinker.*` names,
    a Whisper-style preprocessor config and tokenizer files, no processor_config."""
    state = {}
    tied = hf_config.get("tie_word_embeddings", False)
    for name, tensor in model.state_dict().items():
        if tied and name == "lm_head.weight":
            continue  # tied to the embeddings; the original checkpoints do not store it twice
        for hf_prefix, orig_prefix in _TO_ORIGINAL:
            if name.startswith(hf_prefix):
                name = orig_prefix + name[len(hf_prefix) :]
                break
        state[name] = tensor.contiguous()
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})

    audio = dict(hf_config["audio_config"])
    text = dict(hf_config["text_config"])
    audio_original = {
        "model_type": "qwen3_asr_audio_encoder",
        "num_mel_bins": audio["num_mel_bins"],
        "encoder_layers": audio["encoder_layers"],
        "encoder_attention_heads": audio["encoder_attention_heads"],
        "encoder_ffn_dim": audio["encoder_ffn_dim"],
        "d_model": audio["d_model"],
        "output_dim": audio["output_dim"],
        "downsample_hidden_size": audio["downsample_hidden_size"],
        "n_window": audio["n_window"],
        "n_window_infer": audio["n_window_infer"],
        "conv_chunksize": 500,
        "max_source_positions": 1500,
        "activation_function": "gelu",
        "scale_embedding": False,
    }
    text_original = {
        key: text[key]
        for key in (
            "vocab_size",
            "hidden_size",
            "intermediate_size",
            "num_hidden_layers",
            "num_attention_heads",
            "num_key_value_heads",
            "head_dim",
            "max_position_embeddings",
            "rms_norm_eps",
            "hidden_act",
            "tie_word_embeddings",
        )
        if key in text
    }
    text_original["model_type"] = "qwen3_asr_text"
    text_original["rope_theta"] = text.get("rope_parameters", {}).get("rope_theta", 1000000.0)
    text_original["rope_scaling"] = {
        "rope_type": "default",
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
        "interleaved": True,
    }
    config = {
        "architectures": ["Qwen3ASRForConditionalGeneration"],
        "model_type": "qwen3_asr",
        "support_languages": ["Chinese", "English", "Cantonese"],
        "thinker_config": {
            "model_type": "qwen3_asr_thinker",
            "audio_config": audio_original,
            "text_config": text_original,
            "audio_token_id": hf_config["audio_token_id"],
            "audio_start_token_id": tokenizer.convert_tokens_to_ids("<|audio_start|>"),
            "initializer_range": 0.02,
        },
        "tie_word_embeddings": tied,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2))
    (out / "generation_config.json").write_text(
        json.dumps({"eos_token_id": hf_config["eos_token_id"], "pad_token_id": hf_config["pad_token_id"]})
    )
    # The trap docs/DESIGN.md names: AutoProcessor on this directory would pick this Whisper extractor.
    (out / "preprocessor_config.json").write_text(
        json.dumps({"feature_extractor_type": "WhisperFeatureExtractor", "feature_size": 128})
    )
    (out / "chat_template.json").write_text(json.dumps({"chat_template": CHAT_TEMPLATE}))
    tokenizer.save_pretrained(out)
