"""Dynamic int8 quantization of a loaded model's Linear layers, for CPU serving.

Decoding on CPU is memory-bandwidth-bound: each generated token streams every weight once, so
halving the bytes per weight nearly halves the step (DESIGN.md, "Measured costs": 0.6B bf16 139 ms
per token, int8 64 ms). "Dynamic" means the weights are stored as int8 ahead of time, and each
activation is quantized on the fly per call, so no calibration data is needed.

Why `torch.ao.quantization.quantize_dynamic`: it is the only path in torch 2.13 that runs the int8
matmul through fbgemm / oneDNN kernels in eager mode. torch marks it deprecated in favour of torchao,
but torchao's int8 configs (0.18, measured on this 2-core CPU) run as Python tensor subclasses
without `torch.compile`, 10-50x slower than fbgemm per Linear (the 151936-row head: 200 ms vs 4 ms).
When torch finally removes it, this module is the one place to change.

What is quantized, and why:
- Every `nn.Linear`: the text decoder's projections and MLPs (most of the bytes per token), the
  audio encoder's (run once per clip) and the projector.
- The output head (`lm_head`, 151936 x 1024 for 0.6B) too: it is about 20% of a decoding step, and
  in int8 it costs about a seventh of the fp32 head. Weights are quantized per output channel, so
  one row's scale never squashes another's (a per-tensor scale over 151936 rows would).
- Not the token embeddings: a lookup reads one row per token, so int8 would save memory but no
  time. With tied embeddings (0.6B, 1.7B) the head gets its own int8 copy and the fp32 embedding
  table stays for lookups (about +150 MB for 0.6B, still well under the fp32 model).
- Not the convolutions, norms or attention scores: a small share of the time, and more sensitive.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch

from qasr.errors import ModelLoadError


def quantize_int8(model: Any, device: torch.device | str) -> Any:
    """Replace `model`'s Linear layers with dynamically quantized int8 ones and return the model.

    The model is converted to float32 first (the int8 kernels take fp32 activations, and they need
    fp32 weights to quantize from). CPU only: on a GPU, bf16 is faster and int8 kernels differ.
    """
    if torch.device(device).type != "cpu":
        raise ModelLoadError("int8 quantization is for CPU; on GPU use bf16.")
    quantize_dynamic = _quantize_dynamic()
    from torch.ao.quantization import per_channel_dynamic_qconfig

    model = model.float().eval()
    with warnings.catch_warnings():
        # torch 2.13 warns that torch.ao.quantization and quantized tensor creation are deprecated
        # (pytorch/ao#2259); see the module docstring for why this path stays for now.
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.ao\..*")
        warnings.filterwarnings("ignore", message=r".*torch\.ao\.quantization is deprecated.*")
        warnings.filterwarnings("ignore", message=r".*quantize_per_(tensor|channel).*deprecated.*")
        quantize_dynamic(
            model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8, inplace=True
        )
    return model


def _quantize_dynamic() -> Any:
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as exc:
        raise ModelLoadError(
            f"This torch ({torch.__version__}) has no dynamic int8 quantization "
            "(torch.ao.quantization.quantize_dynamic): serve with --quantize none, or install torch<=2.13."
        ) from exc
    return quantize_dynamic
