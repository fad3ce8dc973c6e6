"""Rotary embedding (tmo.apply_rotary, docs/vendor-semantics.md §3.2) and gated SiLU (tmo.active, §3.3)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half, unsupported

#: apply_rotary serves head sizes 2..256 (TMO-1.3.2).
MAX_ROTARY_HEAD = 256


def _apply_rotary(x4: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """apply_rotary on a dense pad-mode [1, T, H, D] tensor, which it rotates in place and returns: sin before
    cos; no position_ids / cu_seqlens and discrete=False, so token t uses table row t."""
    return K.tmo.apply_rotary(x4, sin, cos, None, None, interleaved, False, False, x4.shape[1])


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x [T, H, D] -> rotated copy."""
    buf = x.clone(memory_format=torch.contiguous_format).unsqueeze(0)  # the kernel mutates its input
    return _apply_rotary(buf, cos, sin, interleaved).view(x.shape)


def _rotate_inplace(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> None:
    """Rotates x [T, H, D] where it is: dense x directly; a strided view (e.g. a slice of a fused qkv buffer)
    through a contiguous copy written back, since apply_rotary's handling of strided input is undocumented."""
    if x.is_contiguous():
        _apply_rotary(x.unsqueeze(0), cos, sin, interleaved)
    else:
        x.copy_(_rotate(x, cos, sin, interleaved))


def _tables(
    op: str, q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    require_half(op, q, k)
    if q.shape[-1] > MAX_ROTARY_HEAD:
        raise unsupported(op, f"head size {q.shape[-1]}", "apply_rotary serves head sizes <= 256")
    return cos.to(q.dtype).contiguous(), sin.to(q.dtype).contiguous()


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D], cos/sin [T, R] full-width tables -> (q', k'); inputs are not modified."""
    cos, sin = _tables("apply_rotary_pos_emb", q, k, cos, sin)
    if q.shape[0] == 0:
        return q.clone(), k.clone()
    return _rotate(q, cos, sin, interleaved), _rotate(k, cos, sin, interleaved)


def apply_rotary_pos_emb_inplace(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> None:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place with apply_rotary (itself in place); returns None."""
    cos, sin = _tables("apply_rotary_pos_emb_inplace", q, k, cos, sin)
    if q.shape[0] == 0:
        return
    _rotate_inplace(q, cos, sin, interleaved)
    _rotate_inplace(k, cos, sin, interleaved)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] as [..., I]."""
    require_half("silu_and_mul", x)
    return K.tmo.active(x, "silu", True)
