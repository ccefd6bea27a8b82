"""Model inputs for one clip, computed before it reaches the model thread, and their collation.

`prepare_clip` does everything that depends on one clip only: the log-mel features and the prompt's
token ids with its audio placeholders expanded. The scheduler runs it in its preparation thread while
the model works on the previous batch; the model thread then only pads and stacks (`collate`).

Two reasons it does not call the processor (`Qwen3ASRProcessor`) per clip:
- The processor's feature extractor runs torch's STFT. Any thread that runs a multi-threaded torch
  op keeps its own OpenMP team alive; with more OpenMP threads than cores, libgomp stops spinning
  between parallel regions and the model thread's many small regions each pay a wake-up
  (bench/README.md). So the features here come from numpy, through transformers' own
  `audio_utils.spectrogram` (the numpy path its Whisper extractor has), and no torch runs outside
  the model thread. They match the processor's to about 1e-5 (tests/engine/test_features.py).
- A clip's features no longer depend on the rest of its batch. The processor pads the waveforms of
  a batch to the longest one first, so a short clip's last frame and its count of valid frames
  (hence its audio tokens) changed with the company it was batched with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

_CHUNK_FRAMES = 100
"""The encoder takes mel frames in chunks of 2 * n_window = 100 (Qwen3ASREncoder)."""


@dataclass(frozen=True)
class PreparedClip:
    """One clip, ready to be batched."""

    input_ids: np.ndarray
    """The prompt's token ids, audio placeholders expanded (int64)."""
    features: np.ndarray
    """Log-mel features, (mel bins, frames), frames a multiple of 100, float32."""
    features_mask: np.ndarray
    """1 for the clip's own frames, 0 for the padding to the chunk multiple (int64)."""


def log_mel(samples: np.ndarray, extractor: Any) -> tuple[np.ndarray, np.ndarray]:
    """Features and frame mask for one 16 kHz clip, as `Qwen3ASRFeatureExtractor` computes them.

    Its steps, for a single clip: clips shorter than `min_length` are zero-padded (and the padding
    counts as audio, as in the original toolkit); a centred STFT with a Hann window, power 2,
    dropping the last frame; mel filters; log10 floored at 1e-10 and at the clip's maximum minus 8;
    then (x + 4) / 4; then zero-padding to a multiple of 100 frames. (Dither, random noise added
    before the STFT, is off in Qwen3-ASR's extractor; the engine refuses a checkpoint that sets it.)
    """
    from transformers.audio_utils import spectrogram, window_function

    wave = np.asarray(samples, dtype=np.float32)
    min_length = int(getattr(extractor, "min_length", 0) or 0)
    if len(wave) < min_length:
        wave = np.pad(wave, (0, min_length - len(wave)))
    spec = spectrogram(
        wave,
        window_function(extractor.n_fft, "hann"),
        frame_length=extractor.n_fft,
        hop_length=extractor.hop_length,
        power=2.0,
        mel_filters=extractor.mel_filters,
        log_mel="log10",
        mel_floor=1e-10,
    )[:, :-1]
    spec = np.maximum(spec, spec.max() - 8.0)
    spec = ((spec + 4.0) / 4.0).astype(np.float32)
    frames = spec.shape[1]
    padded = -(-frames // _CHUNK_FRAMES) * _CHUNK_FRAMES
    features = np.zeros((spec.shape[0], padded), dtype=np.float32)
    features[:, :frames] = spec
    mask = np.zeros(padded, dtype=np.int64)
    mask[:frames] = 1
    return features, mask


def audio_token_count(valid_frames: int) -> int:
    """Encoder outputs for `valid_frames` mel frames: 13 per full 100-frame chunk, plus the rest's
    length after three stride-2 convolutions."""
    tokens = (valid_frames // _CHUNK_FRAMES) * 13
    rest = valid_frames % _CHUNK_FRAMES
    if rest:
        for _ in range(3):
            rest = (rest - 1) // 2 + 1
        tokens += rest
    return tokens


def prepare_clip(prompt: str, samples: np.ndarray, processor: Any) -> PreparedClip:
    """`prompt` holds one `<|audio_pad|>`; it is expanded to the clip's number of audio tokens."""
    features, mask = log_mel(samples, processor.feature_extractor)
    pad = processor.audio_token
    text = prompt.replace(pad, pad * audio_token_count(int(mask.sum())), 1)
    ids = processor.tokenizer(text, add_special_tokens=False)["input_ids"]
    return PreparedClip(np.asarray(ids, dtype=np.int64), features, mask)


def collate(clips: Sequence[PreparedClip], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch: token ids left-padded (the model generates at the right edge), features right-padded.

    Padding features with whole zero chunks leaves each clip's encoder output as it was alone: the
    encoder convolves each 100-frame chunk on its own and drops chunks with no valid frame.
    """
    width = max(len(c.input_ids) for c in clips)
    frames = max(c.features.shape[1] for c in clips)
    bins = clips[0].features.shape[0]
    input_ids = np.full((len(clips), width), pad_token_id, dtype=np.int64)
    attention = np.zeros((len(clips), width), dtype=np.int64)
    features = np.zeros((len(clips), bins, frames), dtype=np.float32)
    features_mask = np.zeros((len(clips), frames), dtype=np.int64)
    for row, clip in enumerate(clips):
        n = len(clip.input_ids)
        input_ids[row, width - n :] = clip.input_ids
        attention[row, width - n :] = 1
        features[row, :, : clip.features.shape[1]] = clip.features
        features_mask[row, : clip.features.shape[1]] = clip.features_mask
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "input_features": torch.from_numpy(features),
        "input_features_mask": torch.from_numpy(features_mask),
    }
