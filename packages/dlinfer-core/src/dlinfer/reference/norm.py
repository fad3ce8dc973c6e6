"""RMSNorm variants and their int8 fusions."""

from __future__ import annotations

import torch

from dlinfer.reference.quant import dynamic_quant


def _rms(x32: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + eps) * weight.float()


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in x.dtype (fp32 compute)."""
    return _rms(x.float(), weight, eps).to(x.dtype)


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Returns (rms_norm(x + residual), x + residual); the sum is rounded to x.dtype first."""
    added = (x.float() + residual.float()).to(x.dtype)
    return _rms(added.float(), weight, eps).to(x.dtype), added


def rms_norm_w8a8(x: torch.Tensor, weight: torch.Tensor, *, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """dynamic_quant(rms_norm(x)) -> (int8 [..., H], fp32 scale [...])."""
    return dynamic_quant(rms_norm(x, weight, eps=eps), dtype=torch.int8)


def add_rms_norm_w8a8(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    normed, added = add_rms_norm(x, residual, weight, eps=eps)
    x_q, scale = dynamic_quant(normed, dtype=torch.int8)
    return x_q, scale, added
