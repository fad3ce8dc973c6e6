"""Per-token int8 quantisation (tmo.per_token_smooth_quantize, §3.15) and W8A8 GEMM (smooth_quant_matmul, §3.16)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half, unsupported

_SMOOTH: dict[tuple[torch.device, int], torch.Tensor] = {}


def _ones_smooth(h: int, device: torch.device) -> torch.Tensor:
    """All-ones fp32 smooth vector [H] (mandatory argument since tmo 1.2; cached per device and H)."""
    key = (device, h)
    vec = _SMOOTH.get(key)
    if vec is None:
        vec = _SMOOTH[key] = torch.ones(h, dtype=torch.float32, device=device)
    return vec


def per_token_quant(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H] fp16/bf16 -> (int8 [..., H], fp32 scale [...]), scale = max|x| / 127."""
    rows = x.reshape(-1, x.shape[-1])
    x_q, scale = K.tmo.per_token_smooth_quantize(rows, _ones_smooth(x.shape[-1], x.device))
    return x_q.view(x.shape), scale.view(x.shape[:-1])


def dynamic_quant(x: torch.Tensor, *, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token int8 quantisation of x [..., H]."""
    if dtype != torch.int8:
        raise unsupported("dynamic_quant", f"dtype={dtype}", "per_token_smooth_quantize produces int8 only")
    require_half("dynamic_quant", x)
    return per_token_quant(x)


def linear_w8a8(
    x_q: torch.Tensor,
    w_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """x_q int8 [..., IN], w_q int8 [OUT, IN], x_scale fp32 [...], w_scale fp32 [OUT] -> [..., OUT] out_dtype."""
    if out_dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise unsupported("linear_w8a8", f"out_dtype={out_dtype}", "smooth_quant_matmul outputs half/bf16/fp32")
    a = x_q.reshape(-1, x_q.shape[-1])
    b = bias.to(out_dtype) if bias is not None and bias.dtype != out_dtype else bias
    y = K.tmo.smooth_quant_matmul(a, x_scale.reshape(-1), w_q, w_scale, out_dtype, b)
    return y.view(*x_q.shape[:-1], w_q.shape[0])
