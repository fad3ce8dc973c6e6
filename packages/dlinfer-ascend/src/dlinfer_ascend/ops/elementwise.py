"""Rotary embedding, SwiGLU and linear.

apply_rotary_pos_emb: npu_apply_rotary_pos_emb serves rotate-half over a whole head of 64 or
128 dims only (A2/A3, vendor-apis.md §2.3) and works in place, so it gets copies; every other
case (interleaved, other rotary widths) goes to npu_rotary_mul (§2.4), which returns new tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlinfer_ascend.ops._kernels import K

FUSED_ROPE_DIMS = (64, 128)


def _rope_fused(x: torch.Tensor, y: torch.Tensor, cos4: torch.Tensor, sin4: torch.Tensor, r: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x[..., :r].unsqueeze(0).clone(memory_format=torch.contiguous_format)
    yr = y[..., :r].unsqueeze(0).clone(memory_format=torch.contiguous_format)
    K.npu.npu_apply_rotary_pos_emb(xr, yr, cos4, sin4, "BSND", "half")
    return xr.squeeze(0), yr.squeeze(0)


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                         interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T,Hq,D], k [T,Hkv,D], cos/sin [T,R] -> (q', k') rotated on the first R dims (new tensors)."""
    t, _, d = q.shape
    r = cos.shape[-1]
    if t == 0:
        return q.clone(), k.clone()
    c, s = cos.to(q.dtype), sin.to(q.dtype)
    if not interleaved and r in FUSED_ROPE_DIMS and k.dtype == q.dtype:
        qr, kr = _rope_fused(q, k, c.reshape(1, t, 1, r), s.reshape(1, t, 1, r), r)
    else:
        mode = "interleave" if interleaved else "half"
        c3, s3 = c.reshape(t, 1, r), s.reshape(t, 1, r)
        qr = K.npu.npu_rotary_mul(q[..., :r].contiguous(), c3, s3, mode)
        kr = K.npu.npu_rotary_mul(k[..., :r].contiguous(), c3.to(k.dtype), s3.to(k.dtype), mode)
    if r == d:
        return qr, kr
    return torch.cat((qr, q[..., r:]), dim=-1), torch.cat((kr, k[..., r:]), dim=-1)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] via npu_swiglu (§2.5)."""
    if x.numel() == 0:
        return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)
    return K.npu.npu_swiglu(x.contiguous(), -1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., IN] @ weight[OUT, IN].T + bias: torch_npu's matmul (aclnn) through F.linear."""
    return F.linear(x, weight, bias)
