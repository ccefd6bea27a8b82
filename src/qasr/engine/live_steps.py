"""Live partial steps at bounded cost: per-utterance caches of the stable part of the prompt.

A live utterance is decoded again at every step (about once a second) on all its audio so far
(`qasr.live.recognizer`). Two things of the prompt do not change from one step to the next
(docs/spec/realtime.md, Part 2, "Facts about the model that bound the cost"):

- the audio tower's outputs for completed 8 s windows: the tower attends within windows counted from
  the start of the audio, so a complete window's outputs never change (`WindowCache.embeds`);
- the text decoder's keys and values for every prompt position up to the end of those windows'
  audio tokens (the system turn with the context, the user turn's start, the cached audio tokens):
  the decoder is causal, so they depend on nothing after them (`WindowCache.keys`/`values`).

So a step encodes only the open window and prefills only what follows the cached positions: the open
window's audio tokens, the end of the user turn, the assistant header and the settled text. Its
cost depends on the open window (at most 8 s) and the settled text, not on how long the utterance
has run; the cap on utterance length (`LiveConfig.max_utterance_s`) bounds the rest (the attention
over cached positions and the cache's memory: about 1.5 MB per audio second in bf16 for 0.6B).

Steps of several utterances run as one batch: the cached keys and values are left-padded to the
longest, the new positions too, and the attention mask hides both paddings; position ids continue
each row's own count, so a row's numbers are those of its prompt alone (up to summation order).
Decoding is greedy, as the engine's `generate` call does; a checkpoint whose generation config asks
for logits processing that greedy argmax would skip (a repetition penalty, banned tokens) is not
stepped this way: `plain_greedy` says so and the engine uses its ordinary path.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from qasr.engine.base import Job
from qasr.engine.features import PreparedClip, audio_token_count
from qasr.types import EngineRequest, EngineResult

if TYPE_CHECKING:
    from qasr.engine.qwen3 import Qwen3ASREngine


class WindowCache:
    """One live utterance's cached encoder outputs and decoder keys/values (see the module docstring).

    Used by the model thread only; dropped with the utterance."""

    _FINAL_MARGIN_FRAMES = 2
    """The last mel frames of a clip see the STFT's end padding and change when audio follows."""

    def __init__(self, window_frames: int) -> None:
        self.window_frames = window_frames
        self.window_tokens = audio_token_count(window_frames)
        self.frames = 0
        """Mel frames covered by the cached windows (a multiple of `window_frames`)."""
        self.embeds: list[torch.Tensor] = []
        """Projected audio embeddings, one `[window_tokens, D]` tensor per cached window."""
        self.prompt_ids: torch.Tensor | None = None
        """The prompt tokens whose keys and values are cached (1-D); None: nothing cached yet."""
        self.keys: list[torch.Tensor] = []
        """Per decoder layer, `[kv_heads, len(prompt_ids), head_dim]`."""
        self.values: list[torch.Tensor] = []

    def keep_complete(self, new: torch.Tensor, valid_frames: int) -> None:
        """Cache the windows of `new` (the embeddings encoded from `frames` on) that are complete
        in a clip of `valid_frames` mel frames."""
        complete = max(0, valid_frames - self._FINAL_MARGIN_FRAMES) // self.window_frames
        start = self.frames // self.window_frames
        for k in range(complete - start):
            block = new[k * self.window_tokens : (k + 1) * self.window_tokens]
            self.embeds.append(block.clone())
            self.frames += self.window_frames

    @property
    def windows(self) -> int:
        return len(self.embeds)

    @property
    def cached_positions(self) -> int:
        """Prompt positions whose keys and values are cached."""
        return 0 if self.prompt_ids is None else len(self.prompt_ids)

    def reusable(self, ids: torch.Tensor) -> int:
        """How many leading positions of the prompt `ids` can come from the cache: all cached ones if
        they are this prompt's start, else none (the cache is then dropped)."""
        n = self.cached_positions
        if n and (len(ids) <= n or not torch.equal(ids[:n], self.prompt_ids)):  # type: ignore[arg-type]
            self.prompt_ids, self.keys, self.values = None, [], []
            return 0
        return n

    def stable_positions(self, ids: torch.Tensor, audio_pad_id: int) -> int:
        """Positions of the prompt `ids` that no later audio changes: up to the end of the audio
        tokens of the cached windows."""
        pads = torch.nonzero(ids == audio_pad_id)
        if not len(pads):
            return 0
        return int(pads[0]) + self.windows * self.window_tokens


def plain_greedy(generation_config: Any) -> bool:
    """Whether greedy decoding under this generation config is argmax of the logits alone."""
    penalty = getattr(generation_config, "repetition_penalty", None)
    return (
        penalty in (None, 1.0)
        and not getattr(generation_config, "no_repeat_ngram_size", None)
        and not getattr(generation_config, "bad_words_ids", None)
        and not getattr(generation_config, "suppress_tokens", None)
        and not getattr(generation_config, "begin_suppress_tokens", None)
        and not getattr(generation_config, "sequence_bias", None)
    )


def run_steps(
    engine: Qwen3ASREngine, clips: Sequence[PreparedClip], jobs: Sequence[Job[EngineRequest]]
) -> list[EngineResult]:
    """One batch of live steps (requests with a `WindowCache`) and of requests with a draft (see the
    module docstring); a request without a cache gets a throwaway one (nothing cached to reuse)."""
    from transformers import DynamicCache

    from qasr.engine.qwen3 import _RowTracker

    model, pad_id = engine.model, engine._audio_pad_id
    owned = _owned_caches(jobs)
    caches = [
        cache if own and isinstance(cache, WindowCache) else engine.new_window_cache()
        for cache, own in zip((job.request.encoder_cache for job in jobs), owned, strict=True)
    ]
    tracker = _RowTracker(engine, jobs)
    tracker.budgets = [engine.request_budget(job.request) for job in jobs]
    max_new = max(tracker.budgets)
    with engine._lock, torch.inference_mode():
        audio = engine.audio_embeddings(clips, caches)
        device = engine.loaded.device
        ids = [torch.from_numpy(clip.input_ids).to(device) for clip in clips]
        drafts = [
            _draft_ids(engine, job.request, budget, device)
            for job, budget in zip(jobs, tracker.budgets, strict=True)
        ]
        embed = model.get_input_embeddings()
        rows = []
        for row_ids, row_audio, draft in zip(ids, audio, drafts, strict=True):
            row_embeds = embed(row_ids)
            row_embeds[row_ids == pad_id] = row_audio.to(row_embeds.dtype)
            rows.append(torch.cat([row_embeds, embed(draft)]))
        reused = [cache.reusable(row_ids) for cache, row_ids in zip(caches, ids, strict=True)]
        counts = [
            len(row_ids) + len(draft) - n for row_ids, draft, n in zip(ids, drafts, reused, strict=True)
        ]
        batch, past, new = len(jobs), max(reused), max(counts)
        width = past + new
        mask = torch.zeros(batch, width, dtype=torch.long, device=device)
        positions = torch.ones(batch, new, dtype=torch.long, device=device)
        inputs = torch.zeros(batch, new, rows[0].shape[1], dtype=rows[0].dtype, device=device)
        for b, (n, count) in enumerate(zip(reused, counts, strict=True)):
            mask[b, past - n : past] = 1
            mask[b, width - count :] = 1
            positions[b, new - count :] = torch.arange(n, n + count, device=device)
            inputs[b, new - count :] = rows[b][n:]
        cache = DynamicCache(ddp_cache_data=_padded_past(caches, reused, past) if past else None)
        keep = 1 + max(len(d) for d in drafts)
        logits = model(
            inputs_embeds=inputs,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=keep,
            **{engine._cache_kwarg: cache},
        ).logits
        for b, (row_ids, n, count) in enumerate(zip(ids, reused, counts, strict=True)):
            if owned[b]:  # a throwaway cache (a draft without one) is dropped with the batch
                _keep_stable(caches[b], cache, b, row_ids, n, width - count, pad_id)
        _limit_first_tokens(engine, logits[:, -1], max_new)
        predicted = logits.argmax(dim=-1)  # [batch, keep]: the token after each of the last positions
        following = torch.empty(batch, dtype=torch.long, device=device)
        for b, draft in enumerate(drafts):
            # The row's predictions after its prompt and after each draft token: accept the draft
            # up to the first token greedy decoding would not write, then the model's own token.
            guesses = predicted[b, keep - 1 - len(draft) :]
            accepted = _agreeing(guesses[:-1], draft)
            written = [*draft[:accepted].tolist(), int(guesses[accepted])]
            for token in written:
                if not tracker.done[b]:
                    tracker.feed(b, token)
            mask[b, width - len(draft) + accepted :] = 0  # the rejected draft positions
            following[b] = written[-1]
            positions[b, -1] = positions[b, -1 - len(draft)] + accepted + 1
        if tracker.between_tokens is not None and not all(tracker.done):
            tracker.between_tokens()
        _decode(engine, model, cache, mask, following, positions[:, -1], tracker, max_new)
    full = torch.full((batch, max(len(i) for i in ids)), engine._pad_id, dtype=torch.long)
    for b, row_ids in enumerate(ids):
        full[b, full.shape[1] - len(row_ids) :] = row_ids.cpu()
    return tracker.results({"input_ids": full})


def _owned_caches(jobs: Sequence[Job[EngineRequest]]) -> list[bool]:
    """Which rows use their request's own `WindowCache`. A cache is one utterance's, and a row updates
    it, so a second row with the same cache in one batch (an utterance's final next to a step that
    was cancelled too late to leave the queue) gets a throwaway one instead."""
    seen: set[int] = set()
    owned = []
    for job in jobs:
        cache = job.request.encoder_cache
        own = isinstance(cache, WindowCache) and id(cache) not in seen
        if own:
            seen.add(id(cache))
        owned.append(own)
    return owned


def _draft_ids(engine: Qwen3ASREngine, request: EngineRequest, budget: int, device: Any) -> torch.Tensor:
    """The request's draft as tokens, at most `budget - 1` of them (the last place is the model's).
    None while benchmarks force a minimum output length (a draft position could predict the end)."""
    if not request.draft or engine.options.min_new_tokens:
        return torch.zeros(0, dtype=torch.long, device=device)
    ids = engine.tokenizer(request.draft, add_special_tokens=False)["input_ids"][: max(0, budget - 1)]
    return torch.tensor(ids, dtype=torch.long, device=device)


def _agreeing(guesses: torch.Tensor, draft: torch.Tensor) -> int:
    """How many leading draft tokens are what the model predicts at their place."""
    differ = torch.nonzero(guesses != draft)
    return int(differ[0]) if len(differ) else len(draft)


def _limit_first_tokens(engine: Qwen3ASREngine, logits: torch.Tensor, max_new: int) -> None:
    """Benchmarks that force a minimum output length: no end token first (drafts are off then)."""
    if min(engine.options.min_new_tokens, max_new) > 0:
        logits[:, sorted(engine._end_ids)] = float("-inf")


def _padded_past(
    caches: Sequence[WindowCache], reused: Sequence[int], past: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """The batch's cached keys and values per layer, `[batch, heads, past, dim]`, left-padded."""
    template = next(c for c, n in zip(caches, reused, strict=True) if n)
    layers = []
    for layer in range(len(template.keys)):
        heads, _, dim = template.keys[layer].shape
        like = template.keys[layer]
        keys = like.new_zeros(len(caches), heads, past, dim)
        values = like.new_zeros(len(caches), heads, past, dim)
        for b, (c, n) in enumerate(zip(caches, reused, strict=True)):
            if n:
                keys[b, :, past - n :] = c.keys[layer]
                values[b, :, past - n :] = c.values[layer]
        layers.append((keys, values))
    return layers


def _keep_stable(
    window: WindowCache, cache: Any, row: int, ids: torch.Tensor, reused: int, start: int, pad_id: int
) -> None:
    """After the prefill: extend the row's cached keys/values to its stable positions (`start`: the
    column of the row's first new position in the batch's cache)."""
    stable = window.stable_positions(ids, pad_id)
    if stable <= reused:
        return
    take = slice(start, start + stable - reused)
    keys, values = [], []
    for layer, kv in enumerate(cache.layers):
        k, v = kv.keys[row, :, take].clone(), kv.values[row, :, take].clone()
        keys.append(torch.cat([window.keys[layer], k], dim=1) if reused else k)
        values.append(torch.cat([window.values[layer], v], dim=1) if reused else v)
    window.keys, window.values, window.prompt_ids = keys, values, ids[:stable].clone()


def _decode(
    engine: Qwen3ASREngine,
    model: Any,
    cache: Any,
    mask: torch.Tensor,
    token: torch.Tensor,
    position: torch.Tensor,
    tracker: Any,
    max_new: int,
) -> None:
    """Greedy decoding: `token` (one per row, already given to the tracker) goes in at `position`;
    until every row is done or `max_new` tokens in all."""
    end_ids = sorted(engine._end_ids)
    forced = min(engine.options.min_new_tokens, max_new)
    for step in range(1, max_new):
        if all(tracker.done):
            return
        mask = torch.cat([mask, mask.new_ones(mask.shape[0], 1)], dim=1)
        logits = model(
            input_ids=token[:, None],
            attention_mask=mask,
            position_ids=position[:, None],
            use_cache=True,
            logits_to_keep=1,
            **{engine._cache_kwarg: cache},
        ).logits[:, -1]
        if step < forced:
            logits[:, end_ids] = float("-inf")
        token = logits.argmax(dim=-1)
        tracker(token[:, None], None)
        position = position + 1
