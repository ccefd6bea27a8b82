"""Faster Linear layers for the text decoder on CPU: oneDNN with weights packed once at load (issue 18).

Why: a decoding step multiplies a handful of rows (one per clip in the batch) by every decoder weight,
so it should cost about what reading the weights costs, whatever the batch size. torch's default
CPU `F.linear` (MKL sgemm on a plain row-major weight) is far from that at 2-16 rows: on the 2-core
EPYC measured here, 1024 -> 3072 in fp32 over weights too big for the cache took 1.4-2.0 ms per call
at 2-16 rows, against 0.5-0.7 ms (0.7-1.3 ms with oneDNN held to AVX2) for oneDNN with the weight
reordered once into its blocked layout (`mkldnn::_reorder_linear_weight`) and run by
`mkldnn::_linear_pointwise` (the kernels `torch.compile` itself uses on CPU after freezing);
bench/RESULTS.md, "CPU kernels", has the numbers per CPU class. MKL's own packed sgemm
(`mkl::_mkl_linear`) and `torch.utils.mkldnn.to_mkldnn` (which converts every activation to and from
oneDNN's layout) were measured too and were slower. `torch.compile` with max-autotune was tried on
one weight shape and left out: 32 s to compile 12 weights at one row count on 2 cores (it recompiles
per weight and per batch size), and its autotuner picked MKL's packed sgemm (slower than oneDNN's
packed product in the measurements above) over its own CPU GEMM template (8 ms per call).

Accuracy: the same fp32 (or bf16) products, only summed in another order; oneDNN runs fp32 strictly
unless `torch.backends.mkldnn.matmul.fp32_precision` is lowered, which qasr never does
(tests/engine/test_cpu_kernels.py checks tokens and logits against the default path).

Which kernel wins depends on the CPU (ISA, cache, memory) and dtype, so `auto` measures both on the
model's own weights at load (about a second) and keeps the faster; `packed` and `default` force one.
What is replaced: the text decoder's Linear layers and the output head, as in `qasr.engine.quantize`;
the audio encoder runs once per clip on hundreds of frames, where the default kernels are fine.
Memory: the packed copy replaces each weight, except the head when it is tied to the token
embeddings (0.6B, 1.7B): the embedding table stays for lookups, so the head costs its size again
(0.6B: +0.6 GB in fp32, +0.3 GB in bf16).
"""

from __future__ import annotations

import logging
import statistics
import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

CpuLinear = Literal["auto", "packed", "default"]
CPU_LINEAR_CHOICES: tuple[str, ...] = ("auto", "packed", "default")

# `auto`: rows per product measured (a lone stream and a full default batch), weights per row count
# (enough of the decoder to overflow a 32 MB L3, as a real step does), rounds (median), and how much
# faster packed must be to be chosen (below that, the default path stays: no change without a gain).
_PROBE_ROWS = (1, 8)
_PROBE_WEIGHTS = 12
_PROBE_ROUNDS = 5
_PROBE_MARGIN = 0.95
# Below this many bytes of decoder weights (test and toy models) the weights stay in cache, a step
# is dominated by Python overhead, and `auto` keeps the default without measuring: no timing decides
# anything for such a model.
_AUTO_MIN_BYTES = 64 * 1024 * 1024


class PackedLinear(torch.nn.Module):
    """A Linear whose weight lives in oneDNN's blocked layout; same results up to summation order."""

    def __init__(self, linear: torch.nn.Linear) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        # A plain attribute, not a parameter or buffer: an opaque oneDNN tensor cannot be moved, cast
        # or saved like a dense one, and the model's dtype and device are read from its parameters.
        self.packed = pack_weight(linear.weight.detach())
        self.bias = (
            None if linear.bias is None else torch.nn.Parameter(linear.bias.detach(), requires_grad=False)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _packed_call(x.contiguous(), self.packed, self.bias)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, oneDNN packed"


def pack_weight(weight: torch.Tensor) -> torch.Tensor:
    """`weight` (out x in) reordered for oneDNN's inner product, for any number of rows."""
    packed: torch.Tensor = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous())
    return packed


def packed_supported(dtype: torch.dtype) -> bool:
    """oneDNN is built in and takes this dtype (fp32 always; bf16 only where the CPU can)."""
    if not torch.backends.mkldnn.is_available():  # type: ignore[no-untyped-call]
        return False
    if dtype == torch.float32:
        return True
    return dtype == torch.bfloat16 and bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def text_linears(model: Any) -> list[tuple[str, torch.nn.Linear]]:
    """(name, module) of every plain Linear in the text decoder and the output head."""
    inner = getattr(model, "model", None)
    decoder = getattr(inner, "language_model", None)
    found: list[tuple[str, torch.nn.Linear]] = []
    if isinstance(decoder, torch.nn.Module):
        found += [
            (f"model.language_model.{name}", m)
            for name, m in decoder.named_modules()
            if type(m) is torch.nn.Linear
        ]
    head = getattr(model, "lm_head", None)
    if type(head) is torch.nn.Linear:
        found.append(("lm_head", head))
    return found


def all_linears(model: Any) -> list[tuple[str, torch.nn.Linear]]:
    """(name, module) of every plain Linear of the model (the forced aligner: its one forward pass
    runs the audio encoder and the decoder over hundreds of positions, all of them products)."""
    return [(name, m) for name, m in model.named_modules() if type(m) is torch.nn.Linear]


def apply_cpu_linear(
    model: Any,
    choice: str,
    device: torch.device,
    dtype: torch.dtype,
    linears: Sequence[tuple[str, torch.nn.Linear]] | None = None,
    rows: Sequence[int] = _PROBE_ROWS,
) -> str:
    """Use `choice` (`auto`, `packed`, `default`) for `linears` (default: the text decoder's Linear
    layers and head); return the kernel in use (`packed` or `default`). `rows`: the row counts
    `auto` measures (a decoding step's by default). Only CPU models in a dtype oneDNN takes change."""
    if choice not in CPU_LINEAR_CHOICES:
        raise ValueError(f"Unknown CPU linear kernel {choice!r}: use one of {', '.join(CPU_LINEAR_CHOICES)}.")
    linears = text_linears(model) if linears is None else list(linears)
    if choice == "default" or device.type != "cpu" or not linears or not packed_supported(dtype):
        return "default"
    if choice == "auto":
        if sum(m.weight.numel() * m.weight.element_size() for _, m in linears) < _AUTO_MIN_BYTES:
            return "default"
        default_ms, packed_ms = measure(linears, rows)
        choice = "packed" if sum(packed_ms) < _PROBE_MARGIN * sum(default_ms) else "default"
        log.info(
            "CPU linear kernel: %s (rows %s: default %s ms, packed %s ms per weight; %s)",
            choice,
            ",".join(map(str, rows)),
            "/".join(f"{t:.2f}" for t in default_ms),
            "/".join(f"{t:.2f}" for t in packed_ms),
            dtype,
        )
        if choice == "default":
            return "default"
    replace_linears(model, [name for name, _ in linears])
    return "packed"


def replace_linears(model: Any, names: Sequence[str]) -> None:
    """Swap each named `nn.Linear` for a `PackedLinear` (in place; the old weight is released unless
    something else, such as tied embeddings, still holds it)."""
    for name in names:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, PackedLinear(getattr(parent, child)))


def measure(
    linears: Sequence[tuple[str, torch.nn.Linear]], rows_probed: Sequence[int] = _PROBE_ROWS
) -> tuple[list[float], list[float]]:
    """Median ms per weight, default vs packed, at each of `rows_probed` rows, on the decoder's own
    MLP-sized weights (the largest shapes; the head alone would fit no cache and mislead neither way).
    The two kernels alternate within each round, so a machine that slows down slows both."""
    weights = _probe_weights(linears)
    packed = [pack_weight(w) for w in weights]
    default_ms, packed_ms = [], []
    with torch.inference_mode():
        for rows in rows_probed:
            x = torch.randn(rows, weights[0].shape[1], dtype=weights[0].dtype)
            plain = [_call(F.linear, x, w) for w in weights]
            fast = [_call(_packed_call, x, p) for p in packed]
            times: dict[str, list[float]] = {"default": [], "packed": []}
            _run_all(plain)
            _run_all(fast)  # first call per shape builds the kernel
            for _ in range(_PROBE_ROUNDS):
                times["default"].append(_run_all(plain))
                times["packed"].append(_run_all(fast))
            default_ms.append(statistics.median(times["default"]) * 1000 / len(weights))
            packed_ms.append(statistics.median(times["packed"]) * 1000 / len(weights))
    return default_ms, packed_ms


def _probe_weights(linears: Sequence[tuple[str, torch.nn.Linear]]) -> list[torch.Tensor]:
    """Up to `_PROBE_WEIGHTS` weights of the most common largest shape (the MLP's, in Qwen3)."""
    body = [m.weight.detach() for name, m in linears if name != "lm_head"] or [
        m.weight.detach() for _, m in linears
    ]
    sizes: dict[tuple[int, ...], int] = {}
    for w in body:
        sizes[tuple(w.shape)] = sizes.get(tuple(w.shape), 0) + 1
    shape = max(sizes, key=lambda s: (s[0] * s[1], sizes[s]))
    return [w for w in body if tuple(w.shape) == shape][:_PROBE_WEIGHTS]


def _packed_call(x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out


def _call(
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], x: torch.Tensor, w: torch.Tensor
) -> Callable[[], object]:
    return lambda: fn(x, w)


def _run_all(calls: Sequence[Callable[[], object]]) -> float:
    start = time.perf_counter()
    for call in calls:
        call()
    return time.perf_counter() - start
