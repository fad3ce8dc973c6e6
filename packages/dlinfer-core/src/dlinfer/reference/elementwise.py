"""Rotary embedding, SiLU-and-mul and linear."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def _rotate(x: torch.Tensor, interleaved: bool) -> torch.Tensor:
    if interleaved:
        pairs = x.unflatten(-1, (-1, 2))
        return torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _rope_one(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    r = cos.shape[-1]
    head = x[..., :r].float()
    rotated = head * cos + _rotate(head, interleaved) * sin
    if r == x.shape[-1]:
        return rotated.to(x.dtype)
    return torch.cat((rotated.to(x.dtype), x[..., r:]), dim=-1)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D], cos/sin [T, R] -> rotated (q, k) on the first R dims, fp32 compute."""
    c = cos.float()[:, None, :]
    s = sin.float()[:, None, :]
    return _rope_one(q, c, s, interleaved), _rope_one(k, c, s, interleaved)


def apply_rotary_pos_emb_inplace(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> None:
    """The out-of-place math on the first R dims, copied into q and k (copy_ writes through any strided view)."""
    r = cos.shape[-1]
    q_head, k_head = q[..., :r], k[..., :r]
    q_out, k_out = apply_rotary_pos_emb(q_head, k_head, cos, sin, interleaved=interleaved)
    q_head.copy_(q_out)
    k_head.copy_(k_out)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] in x.dtype (fp32 compute)."""
    gate, up = x.float().chunk(2, dim=-1)
    return (F.silu(gate) * up).to(x.dtype)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """x [..., IN] @ weight[OUT, IN].T + bias."""
    return F.linear(x, weight, bias)
