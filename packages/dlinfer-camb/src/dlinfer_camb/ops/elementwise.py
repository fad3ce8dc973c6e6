"""Rotary embedding (tmo.apply_rotary, vendor-apis.md §3.2) and gated SiLU (tmo.active, §3.3)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half, unsupported

#: apply_rotary serves head sizes 2..256 (TMO-1.3.2).
MAX_ROTARY_HEAD = 256


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> torch.Tensor:
    """x [T, H, D] -> rotated copy; apply_rotary works in place on a [1, T, H, D] pad-mode view."""
    t = x.shape[0]
    buf = x.clone(memory_format=torch.contiguous_format).unsqueeze(0)  # the kernel mutates its input
    # sin before cos; no position_ids / cu_seqlens and discrete=False: token t uses table row t.
    out = K.tmo.apply_rotary(buf, sin, cos, None, None, interleaved, False, False, t)
    return out.view(x.shape)


def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D], cos/sin [T, R] full-width tables -> (q', k'); inputs are not modified."""
    require_half("apply_rotary_pos_emb", q, k)
    if q.shape[-1] > MAX_ROTARY_HEAD:
        raise unsupported("apply_rotary_pos_emb", f"head size {q.shape[-1]}", "apply_rotary serves head sizes <= 256")
    if q.shape[0] == 0:
        return q.clone(), k.clone()
    cos, sin = cos.to(q.dtype).contiguous(), sin.to(q.dtype).contiguous()
    return _rotate(q, cos, sin, interleaved), _rotate(k, cos, sin, interleaved)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] as [..., I]."""
    require_half("silu_and_mul", x)
    return K.tmo.active(x, "silu", True)
