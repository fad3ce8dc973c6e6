"""RMSNorm ops on tmo.fused_rms_norm (docs/vendor-semantics.md §3.1) and their int8 fusions (+ §3.15)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half
from dlinfer_camb.ops.quant import per_token_quant


def _rows(x: torch.Tensor) -> torch.Tensor:
    """fused_rms_norm takes 2-D / 3-D input: flatten leading dims to [N, H]."""
    return x.reshape(-1, x.shape[-1])


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """x [..., H] fp16/bf16, weight [H] -> [..., H] in x.dtype."""
    require_half("rms_norm", x)
    y = K.tmo.fused_rms_norm(_rows(x), None, weight, None, None, eps, False, None, None)
    return y.view(x.shape)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rms_norm(x + residual) [..., H], x + residual [..., H]); store_output_before_norm returns the sum."""
    require_half("add_rms_norm", x)
    y, added = K.tmo.fused_rms_norm(_rows(x), _rows(residual), weight, None, None, eps, True, None, None)
    return y.view(x.shape), added.view(x.shape)


def rms_norm_w8a8(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (int8 [..., H], fp32 per-token scale [...])."""
    return per_token_quant(rms_norm(x, weight, eps=eps))


def add_rms_norm_w8a8(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (int8 [..., H], fp32 scale [...], x + residual [..., H]).

    Not fused: fused_rms_norm may normalise the fp32 sum before rounding it (internal precision UNCONFIRMED,
    docs/vendor-semantics.md §3.1), while the spec quantises the norm of the rounded sum; int8 amplifies that
    difference to 2 steps in bf16. So the sum is rounded first (one elementwise add), then normalised and quantised.
    """
    require_half("add_rms_norm_w8a8", x)
    added = x + residual
    return (*per_token_quant(rms_norm(added, weight, eps=eps)), added)
