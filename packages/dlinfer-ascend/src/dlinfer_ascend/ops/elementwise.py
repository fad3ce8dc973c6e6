"""Rotary embedding, SwiGLU and linear.

Rotary: npu_apply_rotary_pos_emb serves rotate-half over a whole head of 64 or 128 dims only (A2/A3,
docs/vendor-semantics.md §2.3) and works in place on query/key, so it is the natural kernel of
apply_rotary_pos_emb_inplace; the out-of-place op gives it copies. Every other case (interleaved, other
rotary widths, partial rotary) goes to npu_rotary_mul (§2.4), which returns new tensors; the in-place op
copies its result into the first R dims of q and k.

The documentation says nothing about strided (non-contiguous) query/key for the in-place kernel, so it is
only handed dense tensors: q/k that are strided views (e.g. slices of a fused qkv buffer with more than one
token) are rotated through a contiguous copy of their first R dims that is then written back.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from dlinfer_ascend.ops._kernels import K

FUSED_ROPE_DIMS = (64, 128)


def _fused(q: torch.Tensor, k: torch.Tensor, r: int, interleaved: bool) -> bool:
    return not interleaved and r in FUSED_ROPE_DIMS and k.dtype == q.dtype


def _rope_fused(x: torch.Tensor, y: torch.Tensor, cos4: torch.Tensor, sin4: torch.Tensor, r: int
                ) -> tuple[torch.Tensor, torch.Tensor]:
    xr = x[..., :r].unsqueeze(0).clone(memory_format=torch.contiguous_format)
    yr = y[..., :r].unsqueeze(0).clone(memory_format=torch.contiguous_format)
    K.npu.npu_apply_rotary_pos_emb(xr, yr, cos4, sin4, "BSND", "half")
    return xr.squeeze(0), yr.squeeze(0)


def _rotated_heads(q: torch.Tensor, k: torch.Tensor, c: torch.Tensor, s: torch.Tensor, interleaved: bool
                   ) -> tuple[torch.Tensor, torch.Tensor]:
    """The first R dims of q and k, rotated, as new [T, H, R] tensors; c/s [T, R] in q's dtype."""
    t, r = c.shape
    if _fused(q, k, r, interleaved):
        return _rope_fused(q, k, c.reshape(1, t, 1, r), s.reshape(1, t, 1, r), r)
    mode = "interleave" if interleaved else "half"
    c3, s3 = c.reshape(t, 1, r), s.reshape(t, 1, r)
    qr = K.npu.npu_rotary_mul(q[..., :r].contiguous(), c3, s3, mode)
    kr = K.npu.npu_rotary_mul(k[..., :r].contiguous(), c3.to(k.dtype), s3.to(k.dtype), mode)
    return qr, kr


def apply_rotary_pos_emb(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                         interleaved: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T,Hq,D], k [T,Hkv,D], cos/sin [T,R] -> (q', k') rotated on the first R dims (new tensors)."""
    t, _, d = q.shape
    r = cos.shape[-1]
    if t == 0:
        return q.clone(), k.clone()
    qr, kr = _rotated_heads(q, k, cos.to(q.dtype), sin.to(q.dtype), interleaved)
    if r == d:
        return qr, kr
    return torch.cat((qr, q[..., r:]), dim=-1), torch.cat((kr, k[..., r:]), dim=-1)


def apply_rotary_pos_emb_inplace(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *,
                                 interleaved: bool = False) -> None:
    """Rotates the first R dims of q [T,Hq,D] and k [T,Hkv,D] in place (any strides); returns None.

    Dense q/k with R == D in {64, 128} (rotate-half): npu_apply_rotary_pos_emb on [1, T, H, D] views of q and k
    themselves, no copy. Otherwise the rotated heads are computed as in apply_rotary_pos_emb and copied into
    q[..., :R] / k[..., :R]; dims >= R are not written.
    """
    t, _, d = q.shape
    r = cos.shape[-1]
    if t == 0:
        return
    c, s = cos.to(q.dtype), sin.to(q.dtype)
    if r == d and _fused(q, k, r, interleaved) and q.is_contiguous() and k.is_contiguous():
        K.npu.npu_apply_rotary_pos_emb(q.unsqueeze(0), k.unsqueeze(0), c.reshape(1, t, 1, r), s.reshape(1, t, 1, r),
                                       "BSND", "half")
        return
    qr, kr = _rotated_heads(q, k, c, s, interleaved)
    q[..., :r].copy_(qr)
    k[..., :r].copy_(kr)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:] via npu_swiglu (§2.5)."""
    if x.numel() == 0:
        return x.new_empty(*x.shape[:-1], x.shape[-1] // 2)
    return K.npu.npu_swiglu(x.contiguous(), -1)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., IN] @ weight[OUT, IN].T + bias: torch_npu's matmul (aclnn) through F.linear."""
    return F.linear(x, weight, bias)
