"""The forced aligner on tiny random checkpoints: loading both layouts, refusing bad ones, the input
format, one forward pass with the head on timestamp positions only, repair, clipping and offsets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import shutil
from collections.abc import Iterator
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from qasr.engine.aligner import (
    MAX_ALIGN_S,
    MAX_PADDING,
    AlignRequest,
    AlignResult,
    Qwen3AlignerEngine,
    alignment_prompt,
    collate_right,
    padding_groups,
    repair_timestamps,
    repair_timestamps_python,
)
from qasr.engine.aligner_loading import load_aligner, rename_aligner_key
from qasr.engine.testing_aligner import build_aligner_checkpoint
from qasr.errors import ModelLoadError
from qasr.text.words import units_for, words_from
from tests.helpers import noise


@pytest.fixture(scope="module")
def hf_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_aligner_checkpoint(tmp_path_factory.mktemp("aligner-hf"))


@pytest.fixture(scope="module")
def original_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_aligner_checkpoint(tmp_path_factory.mktemp("aligner-orig"), layout="original")


@pytest.fixture(scope="module")
def aligner(hf_dir: Path) -> Qwen3AlignerEngine:
    return Qwen3AlignerEngine.load(str(hf_dir), device="cpu", dtype="float32")


def _request(seconds: float, units: int, offset_s: float = 0.0, seed: int = 0) -> AlignRequest:
    return AlignRequest(noise(seconds, seed=seed), tuple(f"w{i}" for i in range(units)), offset_s)


_REQUESTS = [(3.0, 6, 0.0), (8.5, 20, 12.0), (0.3, 2, 1.5), (5.0, 1, 300.0)]


def _requests() -> list[AlignRequest]:
    return [_request(s, n, off, seed=i) for i, (s, n, off) in enumerate(_REQUESTS)]


def _flat(result: AlignResult) -> list[float]:
    return [t for span in result.spans for t in span]


@contextlib.contextmanager
def scripted_classes(engine: Qwen3AlignerEngine, classes: list[int]) -> Iterator[list[tuple[int, ...]]]:
    """Make the head answer `classes` at the timestamp positions, in order (test-only); yields the
    shapes the head was called with."""
    seen: list[tuple[int, ...]] = []

    class Scripted(torch.nn.Module):
        def forward(self, hidden: torch.Tensor) -> torch.Tensor:
            seen.append(tuple(hidden.shape))
            logits = torch.zeros(*hidden.shape[:-1], 5000)
            logits.view(-1, 5000)[torch.arange(len(classes)), torch.tensor(classes)] = 1.0
            return logits

    original = engine.model.score
    engine.model.score = Scripted()
    try:
        yield seen
    finally:
        engine.model.score = original


# --- loading ----------------------------------------------------------------------------------------


def test_both_layouts_give_identical_outputs(hf_dir: Path, original_dir: Path) -> None:
    hf = Qwen3AlignerEngine.load(str(hf_dir), device="cpu", dtype="float32")
    orig = Qwen3AlignerEngine.load(str(original_dir), device="cpu", dtype="float32")
    assert (hf.loaded.layout, orig.loaded.layout) == ("hf", "original")
    assert orig.loaded.segment_ms == hf.loaded.segment_ms == 80.0
    assert orig.loaded.timestamp_token_id == hf.loaded.timestamp_token_id
    a, b = hf.model.state_dict(), orig.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    heads: dict[str, list[torch.Tensor]] = {"hf": [], "original": []}
    spans: dict[str, list[AlignResult]] = {}
    for name, engine in (("hf", hf), ("original", orig)):
        handle = engine.model.score.register_forward_hook(
            lambda m, args, out, name=name: heads[name].append(out.clone())
        )
        try:
            spans[name] = engine.align(_requests())
        finally:
            handle.remove()
    assert len(heads["hf"]) == len(heads["original"]) >= 1
    for ours, theirs in zip(heads["hf"], heads["original"], strict=True):
        assert torch.equal(ours, theirs)  # the head's logits, bit for bit
    assert spans["hf"] == spans["original"]


def test_original_names_map_in_the_spec_order() -> None:
    assert (
        rename_aligner_key("thinker.audio_tower.proj1.weight")
        == "model.multi_modal_projector.linear_1.weight"
    )
    assert rename_aligner_key("thinker.audio_tower.proj2.bias") == "model.multi_modal_projector.linear_2.bias"
    assert rename_aligner_key("thinker.audio_tower.conv2d1.weight") == "model.audio_tower.conv2d1.weight"
    assert rename_aligner_key("thinker.model.norm.weight") == "model.language_model.norm.weight"
    assert rename_aligner_key("thinker.lm_head.weight") == "score.weight"


def _copy(source: Path, tmp_path: Path) -> Path:
    target = tmp_path / "copy"
    shutil.copytree(source, target)
    return target


def _edit_weights(path: Path, edit: Any) -> None:
    state = load_file(str(path / "model.safetensors"))
    edit(state)
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})


def test_missing_weight_is_refused(hf_dir: Path, tmp_path: Path) -> None:
    broken = _copy(hf_dir, tmp_path)
    _edit_weights(broken, lambda s: s.pop("model.language_model.norm.weight"))
    with pytest.raises(ModelLoadError, match="1 missing and 0 unexpected"):
        load_aligner(str(broken), device="cpu", dtype="float32")


def test_unexpected_weight_is_refused(original_dir: Path, tmp_path: Path) -> None:
    broken = _copy(original_dir, tmp_path)
    _edit_weights(broken, lambda s: s.update({"thinker.extra.weight": torch.zeros(2)}))
    with pytest.raises(ModelLoadError, match="0 missing and 1 unexpected"):
        load_aligner(str(broken), device="cpu", dtype="float32")


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_wrong_shape_is_refused(layout: str, hf_dir: Path, original_dir: Path, tmp_path: Path) -> None:
    broken = _copy(hf_dir if layout == "hf" else original_dir, tmp_path)
    head = "score.weight" if layout == "hf" else "thinker.lm_head.weight"
    _edit_weights(broken, lambda s: s.update({head: s[head][:10].clone()}))
    with pytest.raises(ModelLoadError, match=r"wrong shape \(e.g. score.weight\)"):
        load_aligner(str(broken), device="cpu", dtype="float32")


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_wrong_label_count_is_refused(layout: Any, tmp_path: Path) -> None:
    path = build_aligner_checkpoint(tmp_path / "ten", layout=layout, num_labels=10)
    with pytest.raises(ModelLoadError, match="10 labels, not 5000"):
        load_aligner(str(path), device="cpu", dtype="float32")


@pytest.mark.parametrize("layout", ["hf", "original"])
def test_asr_checkpoint_is_refused_by_name(layout: str, tiny_dir: Path, tiny_original_dir: Path) -> None:
    path = tiny_dir if layout == "hf" else tiny_original_dir
    with pytest.raises(ModelLoadError, match="speech-recognition checkpoint, not the forced aligner"):
        load_aligner(str(path), device="cpu", dtype="float32")


def test_inconsistent_timestamp_id_is_refused(hf_dir: Path, tmp_path: Path) -> None:
    broken = _copy(hf_dir, tmp_path)
    config = json.loads((broken / "config.json").read_text())
    config["timestamp_token_id"] = config["timestamp_token_id"] - 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="<timestamp> id"):
        load_aligner(str(broken), device="cpu", dtype="float32")


def _truncate_weights(path: Path) -> None:
    weights = path / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short


@pytest.mark.parametrize(
    ("layout", "damage", "expected"),
    [
        ("hf", _truncate_weights, "SafetensorError"),
        ("original", _truncate_weights, "SafetensorError"),
        ("hf", lambda p: (p / "processor_config.json").unlink(), "OSError"),
        ("hf", lambda p: (p / "tokenizer.json").unlink(), "the checkpoint is inconsistent"),
        ("hf", lambda p: (p / "model.safetensors").unlink(), "no file named model.safetensors"),
    ],
)
def test_damaged_checkpoint_is_one_sentence(
    layout: str, damage: Any, expected: str, hf_dir: Path, original_dir: Path, tmp_path: Path
) -> None:
    broken = _copy(hf_dir if layout == "hf" else original_dir, tmp_path)
    damage(broken)
    with pytest.raises(ModelLoadError) as caught:
        load_aligner(str(broken), device="cpu", dtype="float32")
    message = caught.value.message
    assert "forced aligner" in message and expected in message and "\n" not in message


def test_unreachable_aligner_names_its_own_option() -> None:
    with pytest.raises(ModelLoadError) as caught:
        load_aligner("/nonexistent/aligner", device="cpu")
    assert caught.value.message.startswith("Aligner directory /nonexistent/aligner does not exist")
    assert "--aligner" in caught.value.message and "--model" not in caught.value.message


def test_directory_without_config_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match=r"no config\.json"):
        load_aligner(str(tmp_path), device="cpu", dtype="float32")


# --- input format -----------------------------------------------------------------------------------


def test_input_is_audio_then_units_each_with_two_timestamps(aligner: Qwen3AlignerEngine) -> None:
    assert alignment_prompt(["hello", "world"]) == (
        "<|audio_start|><|audio_pad|><|audio_end|>hello<timestamp><timestamp>world<timestamp><timestamp>"
    )
    prepared = aligner.prepare(AlignRequest(noise(1.0), ("hello", "world")))
    assert prepared.clip is not None
    assert aligner.tokenizer.decode(prepared.clip.input_ids.tolist()) == (
        "<|audio_start|>"
        + "<|audio_pad|>" * 13
        + "<|audio_end|>hello<timestamp><timestamp>world<timestamp><timestamp>"
    )


def test_units_cannot_inject_timestamps(aligner: Qwen3AlignerEngine) -> None:
    prepared = aligner.prepare(AlignRequest(noise(1.0), ("a<timestamp>b", "<|audio_pad|>")))
    assert prepared.clip is not None
    ids = prepared.clip.input_ids.tolist()
    assert ids.count(aligner.loaded.timestamp_token_id) == 4
    assert ids.count(aligner.tokenizer.convert_tokens_to_ids("<|audio_pad|>")) == 13


def test_real_ids_reach_the_model(tmp_path: Path) -> None:
    path = build_aligner_checkpoint(tmp_path / "real", ids="real")
    engine = Qwen3AlignerEngine.load(str(path), device="cpu", dtype="float32")
    assert engine.model.config.get_text_config().vocab_size == 152064
    seen: list[list[int]] = []
    handle = engine.model.model.register_forward_pre_hook(
        lambda m, args, kwargs: seen.append(kwargs["input_ids"][0].tolist()), with_kwargs=True
    )
    try:
        (result,) = engine.align([AlignRequest(noise(2.0), ("a", "b", "c"))])
    finally:
        handle.remove()
    ids = seen[0]
    assert ids[0] == 151669 and ids.count(151676) == 26 and 151670 in ids
    assert ids.count(151705) == 6 and ids[-1] == 151705
    assert len(result.spans) == 3


# --- the forward pass -------------------------------------------------------------------------------


def test_head_sees_only_timestamp_positions(aligner: Qwen3AlignerEngine) -> None:
    head_inputs: list[tuple[int, ...]] = []
    full_calls: list[int] = []
    h1 = aligner.model.score.register_forward_hook(
        lambda m, args, out: head_inputs.append(tuple(args[0].shape))
    )
    h2 = aligner.model.register_forward_pre_hook(lambda m, args: full_calls.append(1))
    try:
        results = aligner.align(_requests())
    finally:
        h1.remove()
        h2.remove()
    hidden = aligner.model.config.get_text_config().hidden_size
    # One call per forward pass (mixed lengths: several), each on [timestamps, hidden] only.
    assert all(width == hidden for _, width in head_inputs)
    assert sum(rows for rows, _ in head_inputs) == 2 * sum(n for _, n, _ in _REQUESTS)
    assert full_calls == []  # the [batch, length, 5000] path of the full model never runs
    assert [len(r.spans) for r in results] == [n for _, n, _ in _REQUESTS]


def test_spans_equal_transformers_full_logits_decoding(aligner: Qwen3AlignerEngine) -> None:
    # 8.5 s clips: the tiny head's classes stay under 8 s, so clipping changes nothing here.
    requests = [_request(8.5, n, seed=i) for i, n in enumerate((3, 11, 7))]
    clips = [aligner.prepare(r).clip for r in requests]
    inputs = collate_right([c for c in clips if c is not None], aligner._pad_id)
    with torch.inference_mode():
        logits = aligner.model(**inputs).logits
    reference = aligner.processor.decode_forced_alignment(
        logits, inputs["input_ids"], [list(r.units) for r in requests], aligner.loaded.timestamp_token_id
    )
    results = aligner.align(requests)
    for result, expected in zip(results, reference, strict=True):
        assert list(result.spans) == [(d["start_time"], d["end_time"]) for d in expected]


def test_batched_equals_one_by_one(aligner: Qwen3AlignerEngine) -> None:
    requests = _requests()
    assert aligner.align(requests) == [aligner.align([r])[0] for r in requests]


def test_mixed_lengths_run_in_passes_that_waste_little_on_padding(aligner: Qwen3AlignerEngine) -> None:
    shapes: list[tuple[int, ...]] = []

    def record(module: Any, args: Any, kwargs: dict[str, Any]) -> None:
        shapes.append(tuple(kwargs["input_ids"].shape))

    requests = [_request(8.0, 10), _request(0.5, 1, seed=1), _request(8.0, 10, seed=2)]
    handle = aligner.model.model.register_forward_pre_hook(record, with_kwargs=True)
    try:
        results = aligner.align(requests)
    finally:
        handle.remove()
    lengths = [len(aligner.prepare(r).clip.input_ids) for r in requests]  # type: ignore[union-attr]
    assert sorted(shapes) == [(1, lengths[1]), (2, lengths[0])]  # the short clip alone, the long two together
    assert results == [aligner.align([r])[0] for r in requests]


def test_padding_groups() -> None:
    assert padding_groups({}) == []
    assert padding_groups({0: 500, 1: 500, 2: 500}) == [[0, 1, 2]]
    assert padding_groups({0: 500, 1: 60, 2: 480, 3: 450}) == [[1], [3, 2, 0]]
    assert padding_groups({0: 100, 1: 140}) == [[0, 1]]  # 14% padding
    assert padding_groups({0: 100, 1: 200}) == [[0, 1]]  # 25% padding: the limit
    assert padding_groups({0: 100, 1: 210}) == [[0], [1]]  # 26%: split
    for seed in range(200):
        rng = random.Random(seed)
        lengths = {k: rng.randint(1, 3000) for k in range(rng.randint(1, 20))}
        groups = padding_groups(lengths)
        assert sorted(k for g in groups for k in g) == sorted(lengths)
        for g in groups:
            padded = max(lengths[k] for k in g) * len(g)
            assert padded - sum(lengths[k] for k in g) <= MAX_PADDING * padded + 1e-9


def test_results_are_ordered_inside_the_clip(aligner: Qwen3AlignerEngine) -> None:
    for request, result in zip(_requests(), aligner.align(_requests()), strict=True):
        end = request.offset_s + len(request.samples) / 16_000
        times = _flat(result)
        assert times == sorted(times)
        assert all(request.offset_s <= t <= end for t in times)


def test_scripted_classes_are_repaired_clipped_and_offset(aligner: Qwen3AlignerEngine) -> None:
    # 80 ms per class; (30, 10) is out of order, 200 (16 s) is past the 5 s clip.
    classes = [5, 10, 30, 10, 12, 20, 40, 200]
    request = AlignRequest(noise(5.0), ("a", "b", "c", "d"), offset_s=7.25)
    with scripted_classes(aligner, classes) as seen:
        (result,) = aligner.align([request])
    assert seen == [(8, aligner.model.config.get_text_config().hidden_size)]
    repaired = [t / 1000 for t in repair_timestamps([c * 80 for c in classes])]
    assert repaired == [0.4, 0.8, 0.8, 0.8, 0.96, 1.6, 3.2, 16.0]
    clipped = [7.25 + min(t, 5.0) for t in repaired]
    assert _flat(result) == pytest.approx(clipped, abs=1e-9)


def test_offset_is_added_exactly_once(aligner: Qwen3AlignerEngine) -> None:
    classes = [3, 9, 9, 14, 20, 21]
    samples = noise(4.0)
    with scripted_classes(aligner, classes):
        (plain,) = aligner.align([AlignRequest(samples, ("a", "b", "c"))])
    with scripted_classes(aligner, classes):
        (shifted,) = aligner.align([AlignRequest(samples, ("a", "b", "c"), offset_s=61.5)])
    assert _flat(plain) == pytest.approx([0.24, 0.72, 0.72, 1.12, 1.6, 1.68], abs=1e-9)
    assert [t - 61.5 for t in _flat(shifted)] == pytest.approx(_flat(plain), abs=1e-9)


def test_describe_and_warmup(aligner: Qwen3AlignerEngine) -> None:
    aligner.warmup()
    assert aligner.describe() == {
        "name": aligner.loaded.path.name,
        "device": "cpu",
        "dtype": "float32",
        "layout": "hf",
        "linear": "default",  # auto keeps the default below 64 MB of weights: no timing decides it
    }


def test_packed_kernels_give_the_same_times(hf_dir: Path) -> None:
    """`cpu_linear=packed` (every Linear of the aligner on oneDNN's packed weights) changes only the
    summation order: the same classes at every `<timestamp>`, so the same times."""
    packed = Qwen3AlignerEngine.load(str(hf_dir), device="cpu", dtype="float32", cpu_linear="packed")
    plain = Qwen3AlignerEngine.load(str(hf_dir), device="cpu", dtype="float32", cpu_linear="default")
    assert (packed.linear_kernel, plain.linear_kernel) == ("packed", "default")
    assert any(type(m).__name__ == "PackedLinear" for m in packed.model.modules())
    requests = [_request(3.0, 7, seed=1), _request(5.5, 12, offset_s=4.0, seed=2)]
    assert packed.align(requests) == plain.align(requests)


def test_no_units_skip_the_model(aligner: Qwen3AlignerEngine) -> None:
    calls: list[int] = []
    handle = aligner.model.model.register_forward_pre_hook(lambda m, args: calls.append(1))
    try:
        assert aligner.align([AlignRequest(noise(1.0), ())]) == [AlignResult(())]
        mixed = aligner.align([AlignRequest(noise(1.0), ()), _request(2.0, 3)])
    finally:
        handle.remove()
    assert calls == [1]
    assert mixed[0] == AlignResult(()) and len(mixed[1].spans) == 3


# --- limits ------------------------------------------------------------------------------------------


def test_audio_over_180_s_is_refused(aligner: Qwen3AlignerEngine) -> None:
    limit = int(MAX_ALIGN_S * 16_000)
    with pytest.raises(ValueError, match="at most 180 s"):
        AlignRequest(np.zeros(limit + 1, dtype=np.float32), ("a",))
    (result,) = aligner.align([AlignRequest(noise(MAX_ALIGN_S), ("a", "b"), offset_s=10.0)])
    assert all(10.0 <= t <= 10.0 + MAX_ALIGN_S for t in _flat(result))


def test_bad_requests_are_refused() -> None:
    with pytest.raises(ValueError, match="mono"):
        AlignRequest(np.zeros((2, 16_000), dtype=np.float32), ("a",))
    with pytest.raises(ValueError, match="offset_s"):
        AlignRequest(noise(1.0), ("a",), offset_s=-1.0)
    with pytest.raises(ValueError, match="no audio"):
        AlignRequest(np.zeros(0, dtype=np.float32), ("a",))


# --- repair ---------------------------------------------------------------------------------------


def test_python_repair_equals_transformers() -> None:
    rng = random.Random(0)
    for _ in range(3000):
        n = 2 * rng.randint(1, 20)
        top = rng.choice([5, 50, 4999])
        values = [80.0 * rng.randint(0, top) for _ in range(n)]
        if rng.random() < 0.5:
            values.sort()
            for _ in range(rng.randint(0, 4)):
                values[rng.randrange(n)] = 80.0 * rng.randint(0, top)
        assert repair_timestamps_python(values) == repair_timestamps(values), values


# --- with the scheduler and the words ----------------------------------------------------------------


def test_runs_under_the_scheduler(aligner: Qwen3AlignerEngine) -> None:
    from qasr.engine.scheduler import Scheduler, SchedulerPolicy

    expected = aligner.align(_requests())

    async def main() -> list[AlignResult]:
        scheduler: Scheduler[AlignRequest, AlignResult] = Scheduler(
            aligner, SchedulerPolicy(max_batch_size=4, max_wait_ms=20), label="aligner"
        )
        scheduler.start()
        try:
            return list(await asyncio.gather(*(scheduler.submit(r) for r in _requests())))
        finally:
            scheduler.close()

    assert asyncio.run(main()) == expected


def test_transcript_to_timed_words(aligner: Qwen3AlignerEngine) -> None:
    text = "Hello, world! It's 3.5% of the e-mail — 你好，世界。"
    units = units_for(text, "en")
    offset, seconds = 42.0, 6.0
    (result,) = aligner.align([AlignRequest(noise(seconds), tuple(u.text for u in units), offset)])
    words = words_from(text, units, result.spans, bounds_s=(offset, offset + seconds))
    assert len(words) == len(units) == len(result.spans)
    assert [w.text for w in words][:6] == ["Hello,", "world!", "It's", "3.5%", "of", "the"]
    assert "".join("".join(w.text.split()) for w in words) == "".join(text.split())
    assert all(offset <= w.start_s < w.end_s <= offset + seconds for w in words)
    assert all(a.end_s <= b.start_s for a, b in pairwise(words))


_PIECES = [
    "Hello,",
    "world!",
    "It's",
    "3.5%",
    "e-mail",
    "don’t",
    "(quietly)",
    "—",
    "1,000",
    "你好，",
    "世界。",
    "ok",
]


def test_word_properties_hold_for_any_classes(aligner: Qwen3AlignerEngine) -> None:
    """Whatever the weights make the head answer (here: random classes, in and past the clip, in and
    out of order), the words are one per unit, ordered, non-overlapping, of positive length, inside the
    clip on the original timeline, and their texts put back together are the transcript."""
    rng = random.Random(1)
    for case in range(24):
        text = " ".join(rng.choice(_PIECES) for _ in range(rng.randint(1, 15)))
        units = units_for(text, "en")
        seconds, offset = rng.uniform(0.5, 20.0), rng.choice([0.0, 17.3, 95.0])
        last = int(seconds / 0.08)
        classes = [
            rng.randrange(5000) if rng.random() < 0.2 else rng.randint(0, last) for _ in range(2 * len(units))
        ]
        if case % 2:
            classes.sort()
        request = AlignRequest(noise(seconds, seed=case), tuple(u.text for u in units), offset)
        with scripted_classes(aligner, classes):
            (result,) = aligner.align([request])
        words = words_from(text, units, result.spans, bounds_s=(offset, offset + seconds))
        assert len(words) == len(units) == len(result.spans), case
        assert all(offset <= w.start_s < w.end_s <= round(offset + seconds, 3) + 1e-9 for w in words), case
        assert all(a.end_s <= b.start_s for a, b in pairwise(words)), case
        assert "".join("".join(w.text.split()) for w in words) == "".join(text.split()), case
