"""Qwen3-ForcedAligner on transformers' native classes: a start and end time for each unit of a known
transcript (docs/spec/aligner.md).

The model is not autoregressive: one forward pass of the base model gives hidden states, the
`<timestamp>` positions are gathered, and only they go through the 5000-way `score` head, so the
`[batch, length, 5000]` logits (~48 MB per 180 s clip in bf16) never exist. Argmax x 80 ms is a time;
the toolkit's monotonic repair (longest non-decreasing subsequence, outliers snapped or interpolated)
follows, then clipping to the clip. The engine owns the input format; callers hand in samples, units
(`qasr.text.words.units_for`) and the clip's offset on the original timeline, and get one
`(start, end)` per unit on that timeline.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path

import numpy as np
import torch

from qasr.engine.aligner_loading import LoadedAligner, load_aligner
from qasr.engine.base import Job
from qasr.engine.features import PreparedClip, prepare_clip
from qasr.engine.qwen3 import sanitize_context
from qasr.errors import ModelLoadError
from qasr.types import SAMPLE_RATE

MAX_ALIGN_S = 180.0
"""Longest clip aligned in one pass: the toolkit's chunk length (docs/spec/aligner.md, "Length");
callers align per speech segment."""

_AUDIO = "<|audio_start|><|audio_pad|><|audio_end|>"
_TIMESTAMP = "<timestamp>"


@dataclass(frozen=True, eq=False)
class AlignRequest:
    """One clip and the units of its transcript to place in time."""

    samples: np.ndarray
    """16 kHz mono float32, at most `MAX_ALIGN_S` seconds."""
    units: tuple[str, ...]
    """The cleaned units the aligner sees (letters, digits, ASCII apostrophe), in order."""
    offset_s: float = 0.0
    """Where the clip starts on the original timeline; added once to every time."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "units", tuple(self.units))
        if np.ndim(self.samples) != 1:
            raise ValueError("The aligner takes mono audio: one-dimensional samples.")
        seconds = len(self.samples) / SAMPLE_RATE
        if seconds > MAX_ALIGN_S:
            raise ValueError(
                f"The aligner takes at most {MAX_ALIGN_S:.0f} s per call, got {seconds:.1f} s: "
                "align each speech segment on its own."
            )
        if self.units and len(self.samples) == 0:
            raise ValueError("There is no audio to align the units against.")
        if not math.isfinite(self.offset_s) or self.offset_s < 0:
            raise ValueError(f"offset_s must be a finite time of at least 0, got {self.offset_s}.")


@dataclass(frozen=True)
class AlignResult:
    """One `(start, end)` in seconds per unit, on the original timeline, non-decreasing and inside the
    clip; zero-length spans are a normal output (`qasr.text.words.words_from` repairs them)."""

    spans: tuple[tuple[float, float], ...]


@dataclass(frozen=True)
class PreparedAlignment:
    """What `prepare` makes of a request ahead of the model."""

    clip: PreparedClip | None
    """Features and input ids; None when there is no unit to align (the model is not run)."""


def alignment_prompt(units: Sequence[str]) -> str:
    """The aligner's input with one audio placeholder: no chat wrapper (a wrapper shifts every time
    about one 80 ms bin late), each unit followed by two `<timestamp>`s, its start and its end."""
    return _AUDIO + "".join(sanitize_context(unit) + _TIMESTAMP * 2 for unit in units)


class Qwen3AlignerEngine:
    """The forced aligner behind the scheduler's `ModelWork` (`AlignRequest` -> `AlignResult`).
    Thread-safe: one batch runs at a time."""

    def __init__(self, loaded: LoadedAligner, name: str) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.name = name
        self._lock = threading.Lock()
        self.linear_kernel = "default"
        """The Linear layers' CPU kernel (`default`, `packed`: `qasr.engine.cpu_kernels`)."""
        self._timestamp_id = loaded.timestamp_token_id
        if getattr(self.processor.feature_extractor, "dither", 0.0):
            # The torch-free features (qasr.engine.features) have no dither, like the ASR engine.
            raise ModelLoadError(
                "This checkpoint's feature extractor sets dither, which qasr does not support."
            )
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        threads: int | None = None,
        cpu_linear: str = "auto",
    ) -> Qwen3AlignerEngine:
        """Load a checkpoint (see `qasr.engine.aligner_loading`) and wrap it. On CPU, every Linear
        layer runs `cpu_linear`'s kernel (`qasr.engine.cpu_kernels`; `auto` measures at the row
        count of an alignment pass, hundreds of positions: packed was 1.16x faster on the whole
        pass for a 20 s clip here, with identical times, bench/RESULTS.md)."""
        from qasr.engine.cpu_kernels import all_linears, apply_cpu_linear

        if threads:
            torch.set_num_threads(threads)
        loaded = load_aligner(model, device=device, dtype=dtype)
        linears = all_linears(loaded.model)
        kernel = apply_cpu_linear(loaded.model, cpu_linear, loaded.device, loaded.dtype, linears, rows=(256,))
        engine = cls(loaded, name=model)
        engine.linear_kernel = kernel
        return engine

    def describe(self) -> dict[str, str]:
        loaded = self.loaded
        return {
            "name": Path(self.name).name or self.name,
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "layout": loaded.layout,
            "linear": self.linear_kernel,
        }

    # --- ModelWork -----------------------------------------------------------------------------------

    def prepare(self, request: AlignRequest) -> PreparedAlignment:
        """Features and input ids for one clip; torch-free, so the scheduler runs it beside the model."""
        if not request.units:
            return PreparedAlignment(None)
        clip = prepare_clip(alignment_prompt(request.units), request.samples, self.processor)
        marks = int((clip.input_ids == self._timestamp_id).sum())
        if marks != 2 * len(request.units):
            raise ValueError(f"{len(request.units)} units gave {marks} timestamp positions, not two each.")
        return PreparedAlignment(clip)

    def size(self, request: AlignRequest) -> int:
        return len(request.samples)

    def run(self, jobs: Sequence[Job[AlignRequest]]) -> list[AlignResult]:
        """Align a batch, in as few forward passes as padding allows (`padding_groups`); blocking;
        call from a worker thread."""
        prepared = [
            job.prepared if isinstance(job.prepared, PreparedAlignment) else self.prepare(job.request)
            for job in jobs
        ]
        clips = {i: p.clip for i, p in enumerate(prepared) if p.clip is not None}
        classes: dict[int, list[int]] = {}
        for group in padding_groups({i: len(c.input_ids) for i, c in clips.items()}):
            classes.update(zip(group, self._classify([clips[i] for i in group]), strict=True))
        return [
            AlignResult(self._spans(job.request, classes[i])) if i in classes else AlignResult(())
            for i, job in enumerate(jobs)
        ]

    def align(self, requests: Sequence[AlignRequest]) -> list[AlignResult]:
        """`run` without a scheduler."""
        return self.run([Job(r) for r in requests])

    def warmup(self) -> None:
        """One short alignment: the first call after loading is slow."""
        noise = (np.random.default_rng(0).standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
        self.align([AlignRequest(noise, ("warm", "up"))])

    # --- the model -----------------------------------------------------------------------------------

    def _classify(self, clips: Sequence[PreparedClip]) -> list[list[int]]:
        """The class at every `<timestamp>`, per clip, in order."""
        inputs = {k: v.to(self.loaded.device) for k, v in collate_right(clips, self._pad_id).items()}
        inputs["input_features"] = inputs["input_features"].to(self.loaded.dtype)
        marks = inputs["input_ids"] == self._timestamp_id
        with self._lock, torch.inference_mode():
            hidden = self.model.model(**inputs, use_cache=False).last_hidden_state
            # Only the timestamp positions meet the head (docs/spec/aligner.md, "Memory").
            picked = self.model.score(hidden[marks])
            flat = picked.argmax(dim=-1).tolist()
        counts = marks.sum(dim=1).tolist()
        out, start = [], 0
        for count in counts:
            out.append(flat[start : start + count])
            start += count
        return out

    def _spans(self, request: AlignRequest, classes: list[int]) -> tuple[tuple[float, float], ...]:
        ms = repair_timestamps([c * self.loaded.segment_ms for c in classes])
        duration = len(request.samples) / SAMPLE_RATE
        times = [request.offset_s + min(max(t / 1000.0, 0.0), duration) for t in ms]
        return tuple((round(times[i], 3), round(times[i + 1], 3)) for i in range(0, len(times), 2))


MAX_PADDING = 0.25
"""Most of a forward pass that may go to right-padding: a batch that would waste more is split."""


def padding_groups(lengths: dict[int, int]) -> list[list[int]]:
    """The keys of `lengths` (input lengths in tokens) in sub-batches, shortest first, each padded to
    its longest member with at most `MAX_PADDING` of its tokens being padding. One pass costs what its
    padded size costs (the aligner is compute-bound: bench/RESULTS.md), so a 20 s segment batched with
    a 2 s one would make the short one cost 20 s; similar lengths stay together."""
    groups: list[list[int]] = []
    group: list[int] = []
    real = 0
    for key in sorted(lengths, key=lambda k: (lengths[k], k)):
        width = lengths[key]  # the longest so far: keys come shortest first
        if group and width * (len(group) + 1) * (1 - MAX_PADDING) > real + width:
            groups.append(group)
            group, real = [], 0
        group.append(key)
        real += width
    if group:
        groups.append(group)
    return groups


def collate_right(clips: Sequence[PreparedClip], pad_token_id: int) -> dict[str, torch.Tensor]:
    """A batch with token ids right-padded: one forward pass, no generation, so every row starts at
    position 0 and, attention being causal, no real token ever sees a pad. Features are right-padded
    with whole zero chunks, as `qasr.engine.features.collate` does."""
    width = max(len(c.input_ids) for c in clips)
    frames = max(c.features.shape[1] for c in clips)
    input_ids = np.full((len(clips), width), pad_token_id, dtype=np.int64)
    attention = np.zeros((len(clips), width), dtype=np.int64)
    features = np.zeros((len(clips), clips[0].features.shape[0], frames), dtype=np.float32)
    features_mask = np.zeros((len(clips), frames), dtype=np.int64)
    for row, clip in enumerate(clips):
        n = len(clip.input_ids)
        input_ids[row, :n] = clip.input_ids
        attention[row, :n] = 1
        features[row, :, : clip.features.shape[1]] = clip.features
        features_mask[row, : clip.features.shape[1]] = clip.features_mask
    return {
        "input_ids": torch.from_numpy(input_ids),
        "attention_mask": torch.from_numpy(attention),
        "input_features": torch.from_numpy(features),
        "input_features_mask": torch.from_numpy(features_mask),
    }


# --- monotonic repair ------------------------------------------------------------------------------


def repair_timestamps(values: Sequence[float]) -> list[int]:
    """The toolkit's `fix_timestamp` (= transformers' `_fix_timestamps`) over the interleaved
    start/end times: keep the longest non-decreasing subsequence; runs of up to 2 outliers snap to the
    nearer kept neighbour, longer runs are interpolated between them. transformers' own function when it
    has one, else the same algorithm here."""
    if not values:
        return []
    if all(a <= b for a, b in pairwise(values)):
        # Already in order (a good model, most of the time): the whole sequence is the longest
        # non-decreasing one and nothing is replaced; O(n) instead of the O(n^2) search.
        return [int(v) for v in values]
    fix = _transformers_repair()
    if fix is not None:
        return [int(v) for v in fix(np.asarray(values, dtype=np.float64))]
    return repair_timestamps_python(values)


def _transformers_repair() -> Callable[[np.ndarray], list[int]] | None:
    try:
        from transformers.models.qwen3_asr.processing_qwen3_asr import _fix_timestamps
    except ImportError:
        return None
    fix: Callable[[np.ndarray], list[int]] = _fix_timestamps
    return fix


def repair_timestamps_python(values: Sequence[float]) -> list[int]:
    """`repair_timestamps` without transformers (equal on random cases: tests/engine/test_aligner.py)."""
    data = [float(v) for v in values]
    n = len(data)
    if n == 0:
        return []
    # Longest non-decreasing subsequence, O(n^2) so that ties resolve exactly as the toolkit's do.
    length, parent = [1] * n, [-1] * n
    for i in range(1, n):
        for j in range(i):
            if data[j] <= data[i] and length[j] + 1 > length[i]:
                length[i], parent[i] = length[j] + 1, j
    kept = [False] * n
    i = length.index(max(length))
    while i != -1:
        kept[i], i = True, parent[i]
    out = list(data)
    start = 0
    while start < n:
        if kept[start]:
            start += 1
            continue
        end = start
        while end < n and not kept[end]:
            end += 1
        left = next((out[k] for k in range(start - 1, -1, -1) if kept[k]), None)
        right = next((out[k] for k in range(end, n) if kept[k]), None)
        _fill(out, start, end, left, right)
        start = end
    return [int(v) for v in out]


def _fill(out: list[float], start: int, end: int, left: float | None, right: float | None) -> None:
    """Replace the outliers `out[start:end]` from their kept neighbours (at least one exists)."""
    count = end - start
    for pos in range(start, end):
        if left is None or right is None:
            out[pos] = next(v for v in (left, right, out[pos]) if v is not None)
        elif count <= 2:
            out[pos] = left if pos - (start - 1) <= end - pos else right
        else:
            step = (right - left) / (count + 1)
            out[pos] = left + step * (pos - start + 1)
