"""Attention ops on tmo.flash_attention (docs/vendor-semantics.md §3.5) and tmo.single_query_cached_kv_attn (§3.6).

flash_attention arguments after q, k, v are passed by keyword: their positional order differs between
the 1.3.2 manual and newer releases (docs/vendor-semantics.md §3 intro, §5 item 6).
"""

from __future__ import annotations

import torch

from dlinfer_camb.ops._attn_common import (
    DECODE_MAX_BLOCK_SIZE,
    FLASH_PAGED_BLOCK_SIZES,
    alibi,
    refuse_softcap,
    softmax_scale,
    window_left,
)
from dlinfer_camb.ops._common import K, require_half, require_layout
from dlinfer_camb.ops.plan import CambPlan, gather_packed, plan_for


def _flash(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_q: torch.Tensor, cu_kv: torch.Tensor, *, max_q: int,
    max_kv: int, causal: bool, scale: float, wl: int, slopes: torch.Tensor | None,
    block_tables: torch.Tensor | None = None,
) -> torch.Tensor:
    """Packed q [T, Hq, D] over packed k/v [Tk, Hkv, D|Dv] or paged HND caches -> [T, Hq, Dv]."""
    return K.tmo.flash_attention(
        q, k, v, out=None, cu_seq_lens_q=cu_q, cu_seq_lens_kv=cu_kv, alibi_slope=slopes, attn_bias=None,
        max_seq_len_q=max_q, max_seq_len_kv=max_kv, softmax_scale=scale, is_causal=causal,
        window_size_left=wl, window_size_right=-1, compute_dtype=torch.float32, return_lse=False,
        block_tables=block_tables,
    )


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
    plan: CambPlan | None = None,
) -> torch.Tensor:
    """q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv], cu_seqlens_q int32 [B+1] -> [T, Hq, Dv]."""
    op = "prefill_attention"
    require_half(op, q)
    refuse_softcap(op, softcap)
    # q/k/v are head slices of LMDeploy's fused qkv output; §3.5 does not say flash_attention honours strides
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    return _flash(q, k, v, cu_seqlens_q, cu_seqlens_q, max_q=max_seqlen_q, max_kv=max_seqlen_q, causal=causal,
                  scale=softmax_scale(scale, q.shape[-1]), wl=window_left(op, window),
                  slopes=alibi(op, alibi_slopes, causal))


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
    plan: CambPlan | None = None,
) -> torch.Tensor:
    """q [T, Hq, D] over HND caches [NB, Hkv, BS, D|Dv] (new tokens already cached) -> [T, Hq, Dv].

    Block size 16 uses flash_attention's paged mode; other block sizes gather the context into packed
    k/v and use its varlen mode.
    """
    op = "paged_prefill_attention"
    require_layout(op, kv_layout)
    require_half(op, q)
    refuse_softcap(op, softcap)
    kw = {"max_q": max_seqlen_q, "max_kv": max_seqlen_kv, "causal": causal,
          "scale": softmax_scale(scale, q.shape[-1]), "wl": window_left(op, window),
          "slopes": alibi(op, alibi_slopes, causal)}
    plan = plan_for(plan, seqlens_kv, seqlens_kv_cpu)
    cu_kv = plan.cu_kv()
    q = q.contiguous()  # a head slice of the fused qkv output; §3.5 does not say flash_attention honours strides
    if key_cache.shape[2] in FLASH_PAGED_BLOCK_SIZES:
        return _flash(q, key_cache, value_cache, cu_seqlens_q, cu_kv, block_tables=block_table, **kw)
    index = plan.packed(block_table, key_cache.shape[2])
    return _flash(q, gather_packed(key_cache, index), gather_packed(value_cache, index), cu_seqlens_q, cu_kv, **kw)


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
    plan: CambPlan | None = None,
) -> torch.Tensor:
    """q [B, Hq, D], one token per sequence, over HND caches -> [B, Hq, Dv].

    Block sizes <= 64 use single_query_cached_kv_attn; larger ones are gathered and sent to
    flash_attention's varlen mode (one causal query per sequence sees its whole context).
    """
    op = "paged_decode_attention"
    require_layout(op, kv_layout)
    require_half(op, q)
    refuse_softcap(op, softcap)
    b, hq, d = q.shape
    q = q.contiguous()  # a head slice of the fused qkv output; §3.5/§3.6 do not say the kernels honour strides
    sm_scale, wl, slopes = softmax_scale(scale, d), window_left(op, window), alibi(op, alibi_slopes, True)
    if key_cache.shape[2] > DECODE_MAX_BLOCK_SIZE:
        plan = plan_for(plan, seqlens_kv, seqlens_kv_cpu)
        index = plan.packed(block_table, key_cache.shape[2])
        k, v = gather_packed(key_cache, index), gather_packed(value_cache, index)
        return _flash(q, k, v, plan.decode_cu_q(b, q.device), plan.cu_kv(), max_q=1, max_kv=max_seqlen_kv, causal=True,
                      scale=sm_scale, wl=wl, slopes=slopes)
    out = q.new_empty(b, 1, hq, value_cache.shape[-1])
    # max_context_len <= 0 lets the kernel derive it (graph capture); a positive value must be an upper bound.
    max_ctx = max_seqlen_kv if max_seqlen_kv > 0 else -1
    K.tmo.single_query_cached_kv_attn(q.unsqueeze(1), key_cache, value_cache, out, block_table, seqlens_kv,
                                      None, None, slopes, max_ctx, wl, -1, sm_scale)
    return out.view(b, hq, -1)
