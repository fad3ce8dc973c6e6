"""Straightforward torch oracles (fp32 / fp64 math) for the kernel-level tests."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TOL = {torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in fp64; NaN/inf never passes."""
    o, r = out.double().cpu(), ref.double().cpu()
    if not torch.isfinite(o).all():
        return math.inf
    return ((o - r).norm() / r.norm().clamp_min(1e-30)).item()


def assert_close(out: torch.Tensor, ref: torch.Tensor, dtype: torch.dtype, factor: float = 1.0) -> None:
    assert out.shape == ref.shape, (out.shape, ref.shape)
    err = rel_err(out, ref)
    assert err <= TOL[dtype] * factor, f"relative error {err:.3e} > {TOL[dtype] * factor:.1e}"


def attention_ref(q, k, v, *, q_pos, causal, scale, window=None, softcap=None, slopes=None):
    """q [M, Hq, D] at absolute positions q_pos [M]; k/v [N, Hkv, *] at positions 0..N-1 -> fp32 [M, Hq, Dv]."""
    Hq, Hkv = q.shape[1], k.shape[1]
    kk = k.double().repeat_interleave(Hq // Hkv, dim=1)
    vv = v.double().repeat_interleave(Hq // Hkv, dim=1)
    s = torch.einsum("mhd,nhd->hmn", q.double(), kk) * scale
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    j = torch.arange(k.shape[0], device=q.device)
    rel = (j[None, :] - q_pos[:, None]).double()
    if slopes is not None:
        s = s + slopes.double()[:, None, None] * rel[None]
    mask = torch.ones_like(rel, dtype=torch.bool)
    if causal:
        mask &= rel <= 0
    if window is not None:
        mask &= rel > -window
    s = s.masked_fill(~mask[None], float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    return torch.einsum("hmn,nhd->mhd", p, vv).float()


def rotary_ref(x, cos, sin, interleaved):
    R = cos.shape[-1]
    xf = x.double()
    xr = xf[..., :R]
    if interleaved:
        rot = torch.stack((-xr[..., 1::2], xr[..., 0::2]), dim=-1).flatten(-2)
    else:
        rot = torch.cat((-xr[..., R // 2:], xr[..., : R // 2]), dim=-1)
    out = xf.clone()
    out[..., :R] = xr * cos.double()[:, None] + rot * sin.double()[:, None]
    return out


def fused_moe_ref(x, gate_up, down, w, ids):
    inter = gate_up.shape[1] // 2
    out = torch.zeros(x.shape, dtype=torch.float64, device=x.device)
    for t in range(x.shape[0]):
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            h = gate_up[e].double() @ x[t].double()
            a = F.silu(h[:inter]) * h[inter:]
            out[t] += float(w[t, j]) * (down[e].double() @ a)
    return out
