"""The Qwen3-ASR backend on transformers' native classes. It owns the prompt format and the output
parsing (docs/DESIGN.md, "The model"): callers hand in audio, context and a language code, and get text,
a language code and token counts back.
"""

from __future__ import annotations

import math
import queue
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BatchFeature

from qasr.engine.base import Job
from qasr.engine.compat import cache_kwarg
from qasr.engine.features import PreparedClip, audio_token_count, collate, prepare_clip
from qasr.engine.live_steps import WindowCache, plain_greedy, run_steps
from qasr.engine.loading import LoadedModel, load
from qasr.engine.output import TextAssembler
from qasr.errors import ModelLoadError
from qasr.text.languages import forceable_name
from qasr.types import SAMPLE_RATE, Delta, EngineRequest, EngineResult

# Strings the tokenizer would turn into control tokens; removed from user context so a caller cannot
# close the system turn early or inject a fake transcript header.
_CONTROL_STRINGS = (
    "<|im_start|>",
    "<|im_end|>",
    "<|endoftext|>",
    "<|audio_start|>",
    "<|audio_end|>",
    "<|audio_pad|>",
    "<asr_text>",
    "<timestamp>",
)


def sanitize_context(context: str) -> str:
    """The context without control-token strings (see `_CONTROL_STRINGS`)."""
    for marker in _CONTROL_STRINGS:
        context = context.replace(marker, "")
    return context


@dataclass(frozen=True)
class GenerationOptions:
    """Bounds on what the model may write."""

    max_new_tokens_cap: int = 1024
    """Hard cap per clip, whatever its length."""
    base_new_tokens: int = 16
    """Budget for the header and short clips."""
    new_tokens_per_s: float = 10.0
    """Budget per second of audio: fast speech is about 4-5 tokens/s, so this leaves 2x room."""
    min_new_tokens: int = 0
    """Force at least this many tokens (benchmarks with a fixed output length; 0 in service)."""
    guard_repetition: bool = True
    """Cut repetition loops (off only for benchmarks that fix the output length)."""


class Qwen3ASREngine:
    """Qwen3-ASR on transformers. Thread-safe: one batch runs at a time."""

    def __init__(self, loaded: LoadedModel, name: str, options: GenerationOptions | None = None) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.processor = loaded.processor
        self.tokenizer = loaded.processor.tokenizer
        self.name = name
        self.options = options or GenerationOptions()
        self.linear_kernel = "default"
        """The text decoder's Linear kernel (`default`, `packed`) or quantization (`int8`, ...)."""
        self._lock = threading.RLock()  # re-entered when live work runs between tokens of a batch
        self._cache_kwarg = cache_kwarg(self.model)
        self._end_ids = set(self._eos_ids())
        self._audio_pad_id = self.tokenizer.convert_tokens_to_ids("<|audio_pad|>")
        if getattr(self.processor.feature_extractor, "dither", 0.0):
            raise ModelLoadError(
                "This checkpoint's feature extractor sets dither, which qasr does not support."
            )
        pad = self.tokenizer.pad_token_id
        self._pad_id = int(pad if pad is not None else self.tokenizer.convert_tokens_to_ids("<|endoftext|>"))
        self._plain_greedy = plain_greedy(self.model.generation_config)

    @classmethod
    def load(
        cls,
        model: str,
        device: str = "auto",
        dtype: str = "auto",
        quantize: str = "none",
        threads: int | None = None,
        options: GenerationOptions | None = None,
        cpu_linear: str = "auto",
    ) -> Qwen3ASREngine:
        """Load a checkpoint (see `qasr.engine.loading`) and wrap it; `quantize` (`none`, `int8`,
        `int8-weight`: `qasr.engine.quantize`), and on CPU the text decoder's Linear kernel
        (`cpu_linear`: `auto`, `packed`, `default`; `qasr.engine.cpu_kernels`, issue 18)."""
        if threads:
            torch.set_num_threads(threads)
        loaded = load(model, device=device, dtype=dtype)
        kernel = quantize  # what runs the text decoder's Linear layers, for `describe`
        if quantize == "int8":
            from qasr.engine.quantize import quantize_int8

            loaded.model = quantize_int8(loaded.model, loaded.device)
            loaded.dtype = torch.float32  # int8 kernels take fp32 activations; the rest runs in fp32
        elif quantize == "int8-weight":
            from qasr.engine.quantize import quantize_int8_weight_only

            loaded.model = quantize_int8_weight_only(loaded.model, loaded.device)
            loaded.dtype = torch.float32
        elif quantize == "none":
            from qasr.engine.cpu_kernels import apply_cpu_linear

            kernel = apply_cpu_linear(loaded.model, cpu_linear, loaded.device, loaded.dtype)
        else:
            raise ModelLoadError(f"Unknown quantization {quantize!r}: use none, int8 or int8-weight.")
        engine = cls(loaded, name=model, options=options)
        engine.linear_kernel = kernel
        return engine

    # --- prompt ----------------------------------------------------------------------------------

    def prompt(self, context: str = "", language: str | None = None, prefix: str = "") -> str:
        """The chat prompt for one clip, with one audio placeholder the processor expands; `prefix`
        (which needs a forceable `language`) starts the assistant's transcript."""
        context = sanitize_context(context)
        text = (
            f"<|im_start|>system\n{context}<|im_end|>\n"
            "<|im_start|>user\n<|audio_start|><|audio_pad|><|audio_end|><|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        name = forceable_name(language)
        if name is not None:
            # Forcing a language: the header is part of the prompt; the model writes only text.
            text += f"language {name}<asr_text>"
        if prefix:
            if name is None:
                raise ValueError("A forced text prefix needs a language the model can be forced to.")
            text += sanitize_context(prefix)
        return text

    def count_audio_tokens(self, num_samples: int) -> int:
        """13 tokens per full second (100 mel frames), plus the partial second's share."""
        extractor = self.processor.feature_extractor
        num_samples = max(num_samples, int(getattr(extractor, "min_length", 0) or 0))
        return audio_token_count(max(1, num_samples // extractor.hop_length))

    def describe(self) -> dict[str, str]:
        loaded = self.loaded
        return {
            "name": Path(self.name).name or self.name,
            "device": str(loaded.device),
            "dtype": str(loaded.dtype).removeprefix("torch."),
            "layout": loaded.layout,
            "linear": self.linear_kernel,
        }

    def count_text_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"]) if text else 0

    def prepare(self, request: EngineRequest) -> PreparedClip:
        """Everything about one clip that does not need the model (features, prompt ids).

        Thread-safe and torch-free: the scheduler calls it in its preparation thread, in parallel with
        the model (see `qasr.engine.features`)."""
        prompt = self.prompt(request.context, request.language, request.prefix)
        return prepare_clip(prompt, request.samples, self.processor)

    def size(self, request: EngineRequest) -> int:
        return len(request.samples)

    def build_inputs(self, requests: Sequence[EngineRequest]) -> Any:
        """Tokenized prompts and audio features for a batch (left-padded), on the model's device."""
        return self.collate([self.prepare(r) for r in requests])

    def collate(self, clips: Sequence[PreparedClip]) -> Any:
        inputs = BatchFeature(collate(clips, self._pad_id)).to(self.loaded.device)
        # The features are float32; the audio tower runs in the model's dtype (bf16 on GPU).
        inputs["input_features"] = inputs["input_features"].to(self.loaded.dtype)
        return inputs

    # --- generation --------------------------------------------------------------------------------

    def token_budget(self, num_samples: int) -> int:
        seconds = num_samples / SAMPLE_RATE
        budget = self.options.base_new_tokens + math.ceil(seconds * self.options.new_tokens_per_s)
        return max(self.options.min_new_tokens, min(self.options.max_new_tokens_cap, budget))

    def request_budget(self, request: EngineRequest) -> int:
        """`token_budget` for the request's audio, or the request's own tighter cap."""
        budget = self.token_budget(len(request.samples))
        if request.max_new_tokens is not None:
            budget = max(1, min(budget, request.max_new_tokens))
        return budget

    def run(self, jobs: Sequence[Job[EngineRequest]]) -> list[EngineResult]:
        if not jobs:
            return []
        clips = [
            job.prepared if isinstance(job.prepared, PreparedClip) else self.prepare(job.request)
            for job in jobs
        ]
        live = [i for i, job in enumerate(jobs) if self._stepped(job.request)]
        if not live:
            return self.generate(self.collate(clips), jobs)
        # Live steps with cached encoder windows, and requests with a draft, run as their own batch
        # (`run_cached`); a batch mixes them with other requests only when a starved request joins
        # live ones, so this is rare.
        results: list[EngineResult | None] = [None] * len(jobs)
        plain = [i for i in range(len(jobs)) if i not in live]
        for group, run in ((plain, self._run_plain), (live, self.run_cached)):
            if group:
                for i, result in zip(
                    group, run([clips[i] for i in group], [jobs[i] for i in group]), strict=True
                ):
                    results[i] = result
        return [r for r in results if r is not None]

    def _stepped(self, request: EngineRequest) -> bool:
        """Whether `request` runs through `run_cached`: it has a window cache, or a draft to check
        (plain greedy decoding only, and not when benchmarks force a minimum output length)."""
        if isinstance(request.encoder_cache, WindowCache):
            return True
        return bool(request.draft) and self._plain_greedy and not self.options.min_new_tokens

    def _run_plain(
        self, clips: Sequence[PreparedClip], jobs: Sequence[Job[EngineRequest]]
    ) -> list[EngineResult]:
        return self.generate(self.collate(clips), jobs)

    # --- live steps: cached encoder windows (docs/spec/realtime.md Part 2) ---------------------------

    def new_window_cache(self) -> WindowCache:
        """An empty per-utterance cache for `EngineRequest.encoder_cache`."""
        return WindowCache(int(self.model.config.audio_config.n_window_infer))

    def run_cached(
        self, clips: Sequence[PreparedClip], jobs: Sequence[Job[EngineRequest]]
    ) -> list[EngineResult]:
        """A batch of requests that carry a `WindowCache`: the audio tower encodes only each one's
        open window (the audio after its cached, completed windows) in one call for the batch, and
        the decoder prefills only the prompt after each one's cached keys and values
        (`qasr.engine.live_steps`)."""
        if self._plain_greedy:
            return run_steps(self, clips, jobs)
        # (Only requests with a window cache come here; a draft they carry is not checked: that
        # needs plain greedy decoding.)
        # Logits processing that plain greedy steps would skip: the whole prompt through `generate`,
        # as `inputs_embeds` with cached and new audio embeddings in place.
        caches = [job.request.encoder_cache for job in jobs]
        inputs = self.collate(clips)
        with self._lock, torch.inference_mode():
            audio = self.audio_embeddings(clips, caches)  # type: ignore[arg-type]
            ids = inputs["input_ids"]
            embeds = self.model.get_input_embeddings()(ids)
            positions = ids == self._audio_pad_id
            for row, rows_audio in enumerate(audio):
                embeds[row, positions[row]] = rows_audio.to(embeds.dtype)
        model_inputs = {"input_ids": ids, "attention_mask": inputs["attention_mask"], "inputs_embeds": embeds}
        return self.generate(model_inputs, jobs)

    def audio_embeddings(
        self, clips: Sequence[PreparedClip], caches: Sequence[WindowCache]
    ) -> list[torch.Tensor]:
        """Each clip's projected audio embeddings `[tokens, D]`: its cache's completed windows, then a
        fresh encode of the rest (one audio-tower call for the batch). Windows that are complete now
        are added to the caches. Call with the model lock held, in inference mode."""
        slices, masks = [], []
        for clip, cache in zip(clips, caches, strict=True):
            slices.append(clip.features[:, cache.frames :])
            masks.append(clip.features_mask[cache.frames :])
        frames = max(1, max(f.shape[1] for f in slices))
        frames = -(-frames // 100) * 100
        features = np.zeros((len(slices), slices[0].shape[0], frames), dtype=np.float32)
        mask = np.zeros((len(slices), frames), dtype=np.int64)
        for row, (f, m) in enumerate(zip(slices, masks, strict=True)):
            features[row, :, : f.shape[1]] = f
            mask[row, : m.shape[0]] = m
        counts = [audio_token_count(int(m.sum())) for m in masks]
        device = self.loaded.device
        packed = self.model.get_audio_features(
            torch.from_numpy(features).to(device, self.loaded.dtype), torch.from_numpy(mask).to(device)
        ).pooler_output
        out = []
        for new, clip, cache in zip(torch.split(packed, counts), clips, caches, strict=True):
            out.append(torch.cat([*cache.embeds, new]) if cache.embeds else new)
            cache.keep_complete(new, int(clip.features_mask.sum()))
        return out

    def generate(self, inputs: Any, jobs: Sequence[Job[EngineRequest]]) -> list[EngineResult]:
        """Run generate on prepared inputs; the tracker does all per-row work as tokens arrive.

        The KV cache is a `StaticCache` sized for this batch (prompt plus the largest budget): the
        default `DynamicCache` grows by concatenation, copying every layer's keys and values at each
        step, which on CPU took 46% of a decoding step at batch 8 (0.6B; bench/RESULTS.md, profile).
        The static one is written in place. It is built per batch and dropped with it, so no memory
        is held between batches.
        """
        from transformers import StaticCache, StoppingCriteriaList

        tracker = _RowTracker(self, jobs)
        budgets = [self.request_budget(job.request) for job in jobs]
        tracker.budgets = budgets
        max_new = max(budgets)
        cache = StaticCache(config=self.model.config, max_cache_len=inputs["input_ids"].shape[1] + max_new)
        with self._lock, torch.inference_mode():
            self.model.generate(
                **inputs,
                **{self._cache_kwarg: cache},
                do_sample=False,
                max_new_tokens=max_new,
                min_new_tokens=min(self.options.min_new_tokens, max_new) or None,
                stopping_criteria=StoppingCriteriaList([tracker]),
                eos_token_id=sorted(self._end_ids),
                pad_token_id=self.tokenizer.convert_tokens_to_ids("<|im_end|>"),
            )
        return tracker.results(inputs)

    def transcribe(self, requests: Sequence[EngineRequest]) -> list[EngineResult]:
        return self.run([Job(r) for r in requests])

    def stream(self, request: EngineRequest) -> Iterator[Delta | EngineResult]:
        """Generate in a helper thread; yield deltas as they come, then the result."""
        out: queue.Queue[Delta | EngineResult | BaseException] = queue.Queue()
        stop = threading.Event()

        def work() -> None:
            try:
                job = Job(request, on_delta=out.put, cancelled=stop.is_set)
                out.put(self.run([job])[0])
            except BaseException as exc:  # handed to the consumer, re-raised there
                out.put(exc)

        thread = threading.Thread(target=work, name="qasr-stream", daemon=True)
        thread.start()
        try:
            while True:
                item = out.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if isinstance(item, EngineResult):
                    return
        finally:
            stop.set()
            thread.join()

    def warmup(self) -> None:
        """One short generation: the first call after loading is slow (docs/DESIGN.md)."""
        rng = np.random.default_rng(0)
        noise = (rng.standard_normal(SAMPLE_RATE) * 0.01).astype(np.float32)
        self.transcribe([EngineRequest(samples=noise)])

    def _eos_ids(self) -> list[int]:
        eos = self.model.generation_config.eos_token_id
        if eos is None:
            eos = self.model.config.eos_token_id
        ids = [eos] if isinstance(eos, int) else list(eos or [])
        ids += [self.tokenizer.convert_tokens_to_ids(t) for t in ("<|im_end|>", "<|endoftext|>")]
        return sorted({int(i) for i in ids if i is not None})


class _RowTracker:
    """A stopping criterion that is really the per-row output pipeline: called once per step with all
    ids so far, it feeds each live row's new token to its `TextAssembler`, reports deltas, and ends
    rows on an end token, a loop, their own token budget, or cancellation."""

    def __init__(self, engine: Qwen3ASREngine, jobs: Sequence[Job[EngineRequest]]) -> None:
        self.engine = engine
        self.jobs = jobs
        decode = engine.tokenizer.decode
        self.assemblers = [
            TextAssembler(
                lambda ids: decode(ids, skip_special_tokens=True),
                # Only a language the model can be forced to skips the header; a hint-only code does not.
                j.request.language if forceable_name(j.request.language) else None,
                j.request.prefix,
            )
            for j in jobs
        ]
        self.done = [False] * len(jobs)
        self.reasons = ["stop"] * len(jobs)
        self.between_tokens = next((j.between_tokens for j in jobs if j.between_tokens is not None), None)
        self.budgets = [0] * len(jobs)

    def __call__(self, input_ids: torch.LongTensor, scores: Any, **kwargs: Any) -> torch.BoolTensor:
        last = input_ids[:, -1].tolist()
        for row, token in enumerate(last):
            if not self.done[row]:
                self.feed(row, int(token))
        if self.between_tokens is not None and not all(self.done):
            self.between_tokens()
        return torch.tensor(self.done, dtype=torch.bool, device=input_ids.device)  # type: ignore[return-value]

    def feed(self, row: int, token: int) -> None:
        """Row `row`'s next token (also called directly for tokens checked in one pass)."""
        job, assembler = self.jobs[row], self.assemblers[row]
        if token in self.engine._end_ids:
            self._end(row, "stop")
            return
        had_language = assembler.language_known
        piece = assembler.feed(token)
        self._report(job, piece, assembler, had_language)
        if job.cancelled is not None and job.cancelled():
            self._end(row, "cancelled")
        elif self.engine.options.guard_repetition and assembler.looping():
            self._end(row, "repetition")
        elif assembler.output_tokens >= self.budgets[row]:
            self._end(row, "length")

    def _end(self, row: int, reason: str) -> None:
        self.done[row] = True
        self.reasons[row] = reason
        assembler = self.assemblers[row]
        had_language = assembler.language_known
        piece = assembler.finish()
        self._report(self.jobs[row], piece, assembler, had_language)

    @staticmethod
    def _report(job: Job[EngineRequest], piece: str, assembler: TextAssembler, had_language: bool) -> None:
        if job.on_delta is None:
            return
        if piece or (assembler.language_known and not had_language):
            job.on_delta(Delta(piece, assembler.language, assembler.output_tokens))

    def results(self, inputs: Any) -> list[EngineResult]:
        audio_tokens = (inputs["input_ids"] == self.engine._audio_pad_id).sum(dim=1).tolist()
        out = []
        for row, (job, assembler) in enumerate(zip(self.jobs, self.assemblers, strict=True)):
            if not self.done[row]:  # generate stopped at max_new_tokens before our budget said so
                self._end(row, "length")
            out.append(
                EngineResult(
                    text=assembler.text,
                    language=assembler.language,
                    audio_tokens=int(audio_tokens[row]),
                    context_tokens=self.engine.count_text_tokens(sanitize_context(job.request.context)),
                    output_tokens=assembler.output_tokens,
                    finish_reason=self.reasons[row],
                )
            )
        return out
