"""Attention over packed variable-length sequences, with or without a paged cache.

A loop over sequences; inside one, everything is vectorised over heads and tokens.
"""

from __future__ import annotations

import math

import torch

from dlinfer.reference.cache import block_size, gather


def attend(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    q_pos: torch.Tensor,
    *,
    causal: bool,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
) -> torch.Tensor:
    """One sequence. q [n, Hq, D], k [L, Hkv, D], v [L, Hkv, Dv], q_pos [n] absolute positions -> [n, Hq, Dv]."""
    n, hq, d = q.shape
    length, hkv, _ = k.shape
    group = hq // hkv
    scale = 1.0 / math.sqrt(d) if scale is None else scale
    qf = q.float().reshape(n, hkv, group, d).permute(1, 2, 0, 3)  # [Hkv, G, n, D]
    kf = k.float().permute(1, 0, 2)[:, None]  # [Hkv, 1, L, D]
    vf = v.float().permute(1, 0, 2)[:, None]  # [Hkv, 1, L, Dv]
    s = torch.matmul(qf, kf.transpose(-1, -2)) * scale  # [Hkv, G, n, L]
    if softcap is not None:
        s = softcap * torch.tanh(s / softcap)
    k_pos = torch.arange(length, device=q.device)
    rel = (k_pos[None, :] - q_pos[:, None]).float()  # [n, L]; j - p
    if alibi_slopes is not None:
        s = s + alibi_slopes.float().reshape(hkv, group, 1, 1) * rel
    visible = torch.ones(n, length, dtype=torch.bool, device=q.device)
    if causal:
        visible &= rel <= 0
    if window is not None:
        visible &= rel > -window
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s, dim=-1)  # a NaN score (from q or a visible k) makes its row NaN, as in the math
    p = p.masked_fill(~visible.any(-1, keepdim=True), 0.0)  # a query that sees nothing gets zeros
    finite = torch.isfinite(vf)
    if bool(finite.all()):
        out = torch.matmul(p, vf)  # [Hkv, G, n, Dv]
    else:
        out = _nonfinite_values(p, vf, finite, visible)
    return out.permute(2, 0, 1, 3).reshape(n, hq, -1).to(q.dtype)


def _nonfinite_values(p: torch.Tensor, vf: torch.Tensor, finite: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """p @ v where v holds NaN/inf: only visible keys contribute, as in the math (a plain matmul would leak
    0 * NaN from masked keys); a visible key's weight is positive, so its inf gives inf, +inf and -inf give NaN.
    p [Hkv, G, n, L], vf [Hkv, 1, L, Dv], visible [n, L] -> [Hkv, G, n, Dv]."""
    out = torch.matmul(p, torch.where(finite, vf, 0.0))
    seen = visible.float() @ torch.stack((torch.isnan(vf), vf == float("inf"), vf == float("-inf"))).float()
    nan, pos, neg = (seen > 0).unbind(0)  # each [Hkv, 1, n, Dv]
    nan = nan | (pos & neg) | torch.isnan(out)  # isnan(out): a NaN weight (from q or k)
    out = torch.where(pos, float("inf"), torch.where(neg, float("-inf"), out))
    return torch.where(nan, float("nan"), out)


def _offsets(op: str, cu_seqlens_q: torch.Tensor, total: int) -> list[int]:
    """cu_seqlens_q as a list, refused unless it is 1-d, starts at 0, never decreases and ends at ``total``
    (otherwise some output rows would never be written)."""
    if cu_seqlens_q.dim() != 1 or cu_seqlens_q.numel() == 0:
        raise ValueError(f"{op}: cu_seqlens_q must be a non-empty 1-d tensor [B+1], got shape "
                         f"{list(cu_seqlens_q.shape)}")
    cu = cu_seqlens_q.tolist()
    if cu[0] != 0 or cu[-1] != total or any(b < a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"{op}: cu_seqlens_q must rise from 0 to the number of query tokens ({total}), "
                         f"got {cu}")
    return cu


def prefill_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    *,
    max_seqlen_q: int,
    causal: bool,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    cu_seqlens_q_cpu: torch.Tensor | None,
    plan: object = None,
) -> torch.Tensor:
    """Varlen attention of q [T, Hq, D] over k [T, Hkv, D] / v [T, Hkv, Dv] -> [T, Hq, Dv]."""
    out = q.new_empty(q.shape[0], q.shape[1], v.shape[-1])
    cu = _offsets("prefill_attention", cu_seqlens_q, q.shape[0])
    for start, end in zip(cu, cu[1:]):
        if end == start:
            continue
        pos = torch.arange(end - start, device=q.device)
        out[start:end] = attend(q[start:end], k[start:end], v[start:end], pos, causal=causal, scale=scale,
                                window=window, softcap=softcap, alibi_slopes=alibi_slopes)
    return out


def paged_prefill_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    cu_seqlens_q: torch.Tensor,
    seqlens_kv: torch.Tensor,
    *,
    max_seqlen_q: int,
    max_seqlen_kv: int,
    causal: bool,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    kv_layout: str | None,
    cu_seqlens_q_cpu: torch.Tensor | None,
    seqlens_kv_cpu: torch.Tensor | None,
    plan: object = None,
) -> torch.Tensor:
    """q [T, Hq, D] (new tokens, already cached) over each sequence's cached context -> [T, Hq, Dv]."""
    layout = kv_layout or "NHD"
    dv = value_cache.shape[-1]
    out = q.new_empty(q.shape[0], q.shape[1], dv)
    bs = block_size(key_cache, layout)
    cu = _offsets("paged_prefill_attention", cu_seqlens_q, q.shape[0])
    if seqlens_kv.shape != (len(cu) - 1,):
        raise ValueError(f"paged_prefill_attention: seqlens_kv must have one length per sequence ({len(cu) - 1}), "
                         f"got shape {list(seqlens_kv.shape)}")
    for b, (start, end, ctx) in enumerate(zip(cu, cu[1:], seqlens_kv.tolist())):
        if end == start:
            continue
        blocks = block_table[b, : -(-ctx // bs)]
        k = gather(key_cache, blocks, ctx, layout)
        v = gather(value_cache, blocks, ctx, layout)
        pos = torch.arange(ctx - (end - start), ctx, device=q.device)
        out[start:end] = attend(q[start:end], k, v, pos, causal=causal, scale=scale, window=window,
                                softcap=softcap, alibi_slopes=alibi_slopes)
    return out


def paged_decode_attention(
    q: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    block_table: torch.Tensor,
    seqlens_kv: torch.Tensor,
    *,
    max_seqlen_kv: int,
    scale: float | None,
    window: int | None,
    softcap: float | None,
    alibi_slopes: torch.Tensor | None,
    kv_layout: str | None,
    seqlens_kv_cpu: torch.Tensor | None,
    plan: object = None,
) -> torch.Tensor:
    """q [B, Hq, D], one token per sequence at position seqlens_kv[b] - 1 -> [B, Hq, Dv]."""
    batch = q.shape[0]
    cu = torch.arange(batch + 1, dtype=torch.int32, device=q.device)
    return paged_prefill_attention(
        q, key_cache, value_cache, block_table, cu, seqlens_kv, max_seqlen_q=1, max_seqlen_kv=max_seqlen_kv,
        causal=True, scale=scale, window=window, softcap=softcap, alibi_slopes=alibi_slopes, kv_layout=kv_layout,
        cu_seqlens_q_cpu=None, seqlens_kv_cpu=None,
    )
