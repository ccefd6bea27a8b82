"""Dynamic int8 quantization of the text decoder's Linear layers, for CPU serving.

Decoding on CPU is memory-bandwidth-bound: each generated token streams every decoder weight once,
so fewer bytes per weight make each step faster (docs/DESIGN.md, "Measured costs"; bench/RESULTS.md: on
2 cores, 0.6B, batch 1, 66-71 ms per decoding step in bf16, 26 ms in int8). "Dynamic" means the weights are
stored as int8 ahead of time and each activation is quantized on the fly, so no calibration data is
needed.

Why `torch.ao.quantization.quantize_dynamic`: in torch 2.13 it is the only eager-mode path that runs
the int8 matmul through fbgemm / oneDNN kernels. torch marks it deprecated in favour of torchao, but
torchao's int8 configs (0.18, measured on a 2-core CPU) run as Python tensor subclasses without
`torch.compile`, 10-50x slower per Linear (the 151936-row head: 200 ms against 4 ms). When torch
removes it, this module is the one place to change.

What is quantized, and why:
- The text decoder's Linear layers (attention projections and MLPs: most of the bytes per token).
- The output head (`lm_head`, 151936 x 1024 for 0.6B) too: it is about 20% of a decoding step, and
  in int8 it costs about a seventh of the fp32 head. Weights are quantized per output channel, so
  one row's scale never squashes another's (a per-tensor scale over 151936 rows would).
- Not the token embeddings: a lookup reads one row per token, so int8 would save memory but no
  time. With tied embeddings (0.6B, 1.7B) the head gets its own int8 copy and the fp32 embedding
  table stays for lookups (about +150 MB for 0.6B, still well under the fp32 model).
- Not the audio encoder and projector: they run once per clip on hundreds of frames, which is
  compute-bound, not bandwidth-bound, and they stay in the loaded dtype. In fp32 (which int8
  kernels would need) the encoder takes 0.83 s for a 10 s clip against 0.16-0.27 s in bf16 on a
  CPU with AVX512_BF16 (bench/RESULTS.md). A hook casts the encoder's input to its dtype.
The int8 kernels take fp32 activations, so the text decoder and head are converted to fp32 first.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from qasr.errors import ModelLoadError


def quantize_int8(model: Any, device: torch.device | str) -> Any:
    """Quantize `model`'s text decoder and output head to dynamic int8 in place and return the model.

    CPU only: on a GPU bf16 is faster, and these int8 kernels are CPU kernels.
    """
    if torch.device(device).type != "cpu":
        raise ModelLoadError("int8 quantization is for CPU; on GPU use bf16.")
    quantize_dynamic = _quantize_dynamic()
    from torch.ao.quantization import per_channel_dynamic_qconfig

    model.eval()
    text = _text_module_names(model)
    qconfig = per_channel_dynamic_qconfig
    for name in text:
        model.get_submodule(name).float()
    with warnings.catch_warnings():
        # torch 2.13 warns that torch.ao.quantization and quantized tensor creation are deprecated
        # (pytorch/ao#2259); see the module docstring for why this path stays for now.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated.*")
        # Names select the submodules; the mapping swaps only their Linear layers (the default
        # mapping would also try the embedding table, which needs a weight-only config).
        spec = {name: qconfig for name in text} if text != [""] else {torch.nn.Linear: qconfig}
        mapping = {torch.nn.Linear: torch.ao.nn.quantized.dynamic.Linear}
        quantize_dynamic(model, spec, dtype=torch.qint8, mapping=mapping, inplace=True)
    audio = getattr(getattr(model, "model", None), "audio_tower", None)
    if audio is not None and text != [""]:
        audio.register_forward_pre_hook(_cast_input_to(_dtype_of(audio)), with_kwargs=True)
    return model


def quantize_int8_weight_only(model: Any, device: torch.device | str) -> Any:
    """Weight-only int8 (issue 18): the text decoder's and head's Linear weights stored as int8 with one
    fp32 scale per output row; activations stay fp32 (nothing is quantized on the fly, unlike
    `quantize_int8`). In place; returns the model. CPU only.

    The format community runtimes report as lossless for this model is ggml's Q8_0 (one scale per 32
    weights); one scale per row is coarser (what torch's and torchao's int8 weight-only formats use),
    and its accuracy has not been measured here (README). Speed: bench/RESULTS.md, "CPU kernels".
    """
    if torch.device(device).type != "cpu":
        raise ModelLoadError("int8 quantization is for CPU; on GPU use bf16.")
    from qasr.engine.cpu_kernels import text_linears

    model.eval()
    linears = text_linears(model)
    if not linears:
        raise ModelLoadError("Weight-only int8 needs a Qwen3-ASR text decoder; this model has none.")
    model.model.language_model.float()
    scratch: dict[int, torch.Tensor] = {}
    for name, linear in linears:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, Int8WeightLinear(linear, scratch))
    audio = getattr(getattr(model, "model", None), "audio_tower", None)
    if audio is not None:
        audio.register_forward_pre_hook(_cast_input_to(_dtype_of(audio)), with_kwargs=True)
    return model


class Int8WeightLinear(torch.nn.Module):
    """y = (x W_q^T) * scale (+ bias): int8 weights, fp32 activations and accumulation.

    torch 2.13 has no fast CPU kernel for int8 weights with fp32 activations: its
    `aten._weight_int8pack_mm` measured 4-20x slower than the fp32 product at 1-16 rows (2-core EPYC).
    So each block of rows is widened to fp32 in a small scratch that stays in cache (4 MB) and
    multiplied there: memory traffic is the int8 weight plus cache-resident work. Modules of one model
    share the scratch, so calls must not overlap (the engine runs one batch at a time).
    (`torch.compile` with freezing folds the widening into fp32 weights, giving back the fp32 model.)
    """

    _SCRATCH_BYTES = 4 * 1024 * 1024
    weight_int8: torch.Tensor
    scale: torch.Tensor

    def __init__(self, linear: torch.nn.Linear, scratch: dict[int, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        weight, scale = quantize_rows(linear.weight.detach().float())
        self.register_buffer("weight_int8", weight)
        self.register_buffer("scale", scale)
        bias = linear.bias
        self.bias = None if bias is None else torch.nn.Parameter(bias.detach().float(), requires_grad=False)
        self._scratch = {} if scratch is None else scratch
        self._block = max(16, self._SCRATCH_BYTES // (4 * self.in_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.reshape(-1, self.in_features).float()
        scratch = self._scratch.get(self.in_features)
        if scratch is None:
            scratch = self._scratch[self.in_features] = torch.empty(self._block, self.in_features)
        # Computed transposed (out x rows) so that each block's result is a contiguous slice.
        out_t = rows.new_empty(self.out_features, rows.shape[0])
        rows_t = rows.t()
        for start in range(0, self.out_features, self._block):
            stop = min(start + self._block, self.out_features)
            block = scratch[: stop - start]
            block.copy_(self.weight_int8[start:stop])
            torch.mm(block, rows_t, out=out_t[start:stop])
        y = out_t.mul_(self.scale[:, None]).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*x.shape[:-1], self.out_features)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_rows(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output row: `weight ~= q * scale[:, None]`, |q| <= 127, round to nearest."""
    scale = weight.abs().amax(dim=1).clamp(min=torch.finfo(torch.float32).tiny) / 127.0
    q = torch.round(weight / scale[:, None]).clamp(-127, 127).to(torch.int8)
    return q.contiguous(), scale.float().contiguous()


def _text_module_names(model: Any) -> list[str]:
    """The text decoder and the head; `[""]` (the whole model) if it is not laid out as Qwen3-ASR is."""
    inner = getattr(model, "model", None)
    decoder = getattr(inner, "language_model", None)
    head = getattr(model, "lm_head", None)
    if isinstance(decoder, torch.nn.Module) and isinstance(head, torch.nn.Linear):
        return ["model.language_model", "lm_head"]
    return [""]


def _dtype_of(module: torch.nn.Module) -> torch.dtype:
    return next(p.dtype for p in module.parameters() if p.is_floating_point())


def _cast_input_to(dtype: torch.dtype) -> Any:
    def cast(module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        def to(value: Any) -> Any:
            if isinstance(value, torch.Tensor) and value.is_floating_point():
                return value.to(dtype)
            return value

        return tuple(to(a) for a in args), {k: to(v) for k, v in kwargs.items()}

    return cast


def _quantize_dynamic() -> Any:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise ModelLoadError(
            f"This torch ({torch.__version__}) has no dynamic int8 quantization "
            "(torch.ao.quantization.quantize_dynamic): serve with --quantize none, or install torch<=2.13."
        ) from exc
    return quantize_dynamic
