"""Attention ops -> ATB flash attention (no cache) and npu_fused_infer_attention_score (paged).

Routes (docs/vendor-semantics.md section in brackets):
- prefill_attention, causal      -> atb._npu_flash_attention, full causal(/window) mask   [§2.14]
- prefill_attention, non-causal  -> atb._npu_flash_attention_unpad                         [§2.15]
- paged_decode_attention         -> FIA, BSND (B,1,Hq,D), paged KV, host per-seq KV lengths [§2.6]
- paged_prefill_attention        -> FIA TND (cumulative host q lengths) where TND is documented
  (D=128, or QK 192 with V 128/192); FIA BSND padded where the prompt path's block sizes hold
  (128/256/512); otherwise each query token as one single-token FIA call in a batch (its causal
  KV length = its position + 1), which the decode block-size rule (16-aligned <= 512) serves.
Causal masks use FIA sparse_mode 3 (bottom-right) with the compressed 2048x2048 mask; a window
uses sparse_mode 4 with pre_tokens = window - 1, next_tokens = 0. Mask polarity: 1 = masked.
"""

from __future__ import annotations

from functools import lru_cache

import torch

from dlinfer_ascend.ops._common import (
    check_half,
    check_layout,
    refuse_score_options,
    softmax_scale,
    unsupported,
)
from dlinfer_ascend.ops._kernels import K
from dlinfer_ascend.ops.plan import AscendPlan

INT_MAX = 2147483647
TND_DIMS = ((128, 128), (192, 128), (192, 192))
PROMPT_BLOCK_SIZES = (128, 256, 512)
ATB_MAX_HEAD = 256
#: Block sizes every route serves: FIA Q_S=1 needs 16-aligned <= 512 (§2.6).
BLOCK_SIZES = (16, 32, 64, 128, 256, 512)


@lru_cache(maxsize=8)
def _compressed_mask(device: torch.device) -> torch.Tensor:
    """The 2048x2048 triu(1) bool mask FIA sparse modes 3/4 require (§2.6)."""
    return torch.triu(torch.ones(2048, 2048, dtype=torch.bool, device=device), diagonal=1)


_MASK_ALIGN = 128
_ATB_MASKS: dict[tuple[torch.dtype, torch.device, int | None], torch.Tensor] = {}
"""One causal(/window) mask per (dtype, device, window), grown geometrically (not one per prompt length)."""


def _atb_causal_mask(n: int, dtype: torch.dtype, device: torch.device, window: int | None
                     ) -> torch.Tensor:
    """(N, N) mask, N >= n, in the query dtype for atb._npu_flash_attention (§2.14).

    ATB applies the mask's top-left block to each sequence, so one mask of the largest size seen serves every
    shorter step: it is passed whole (no per-call copy) and rebuilt only when a longer prompt arrives, at
    max(n, 2x) rounded up to 128. bf16 (high-precision path): masked = 1. fp16: additive -10000 like the op's
    golden (whether 1 masks on fp16 is UNCONFIRMED, docs/vendor-semantics.md §5.2).
    """
    key = (dtype, torch.device(device), window)
    mask = _ATB_MASKS.get(key)
    if mask is not None and mask.shape[0] >= n:
        return mask
    size = max(n, 2 * mask.shape[0] if mask is not None else 0)
    size = -(-size // _MASK_ALIGN) * _MASK_ALIGN
    _ATB_MASKS.pop(key, None)  # free the smaller mask before allocating the larger one
    i = torch.arange(size, device=device)
    masked = i[None, :] > i[:, None]
    if window is not None:
        masked |= i[None, :] <= i[:, None] - window
    value = 1.0 if dtype == torch.bfloat16 else -10000.0
    mask = torch.zeros(size, size, dtype=dtype, device=device).masked_fill_(masked, value)
    _ATB_MASKS[key] = mask
    return mask


def prefill_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor,
                      *, max_seqlen_q: int, causal: bool = True, scale: float | None = None,
                      window: int | None = None, softcap: float | None = None,
                      alibi_slopes: torch.Tensor | None = None,
                      cu_seqlens_q_cpu: torch.Tensor | None = None,
                      plan: AscendPlan | None = None) -> torch.Tensor:
    """q [T,Hq,D], k [T,Hkv,D], v [T,Hkv,Dv], cu_seqlens_q int32 [B+1] -> [T,Hq,Dv]."""
    op = "prefill_attention"
    refuse_score_options(op, softcap, alibi_slopes)
    if window is not None and not causal:
        raise unsupported(op, "window", "a window with causal=False")
    check_half(op, q)
    t, hq, d = q.shape
    hkv, dv = k.shape[1], v.shape[2]
    if max(d, dv) > ATB_MAX_HEAD:
        raise unsupported(op, "head_size", f"{d}/{dv} > {ATB_MAX_HEAD}, the ATB SelfAttention limit")
    out = q.new_empty(t, hq, dv)
    if t == 0:
        return out
    plan = _plan(plan, cu_seqlens_q, None, cu_seqlens_q_cpu, None)
    lens = plan.nonempty_qlens()
    sc = softmax_scale(scale, d)
    q, k, v = q.contiguous(), k.contiguous(), v.contiguous()
    if causal:
        mask = _atb_causal_mask(plan.max_q, q.dtype, q.device, window)
        K.atb._npu_flash_attention(q, k, v, mask, lens, sc, hq, hkv, out)
    else:
        K.atb._npu_flash_attention_unpad(q, k, v, lens, sc, hq, hkv, out)
    return out


def _fia(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
         block_table: torch.Tensor, **kw: object) -> torch.Tensor:
    nb, bs, hkv, d = key_cache.shape
    kc = key_cache.view(nb, bs, hkv * d)
    vc = value_cache.view(nb, bs, hkv * value_cache.shape[-1])
    out, _ = K.npu.npu_fused_infer_attention_score(
        q, kc, vc, block_table=block_table, block_size=bs, num_key_value_heads=hkv, **kw)
    return out


def _plan(plan: AscendPlan | None, cu_seqlens_q: torch.Tensor | None, seqlens_kv: torch.Tensor | None,
          cu_cpu: torch.Tensor | None, kv_cpu: torch.Tensor | None) -> AscendPlan:
    """The step's plan when it describes these lengths, else a throwaway one built from the call's arguments."""
    if plan is not None and plan.serves(cu_seqlens_q, seqlens_kv):
        return plan
    return AscendPlan(cu_seqlens_q, seqlens_kv, cu_cpu, kv_cpu)


def _decode(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
            block_table: torch.Tensor, kv_cpu: torch.Tensor, kv_dev: torch.Tensor, plan: AscendPlan, *,
            scale: float, window: int | None) -> torch.Tensor:
    """One query token per batch entry: q [B,Hq,D] over kv_cpu[b] cached tokens -> [B,Hq,Dv]."""
    b, hq, d = q.shape
    mask = None
    if window is not None:
        # Q_S = 1 ignores sparse_mode; a full (B, KV_S) mask (1 = masked) carries the window.
        mask = plan.decode_mask(kv_dev, window, block_table.shape[1] * key_cache.shape[1])
    out = _fia(q.reshape(b, 1, hq, d), key_cache, value_cache, block_table, atten_mask=mask,
               actual_seq_lengths_kv=kv_cpu, num_heads=hq, scale=scale, input_layout="BSND",
               sparse_mode=0)
    return out.reshape(b, hq, -1)


def paged_decode_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                           block_table: torch.Tensor, seqlens_kv: torch.Tensor, *, max_seqlen_kv: int,
                           scale: float | None = None, window: int | None = None,
                           softcap: float | None = None, alibi_slopes: torch.Tensor | None = None,
                           kv_layout: str | None = None,
                           seqlens_kv_cpu: torch.Tensor | None = None,
                           plan: AscendPlan | None = None) -> torch.Tensor:
    """q [B,Hq,D] over NHD caches [NB,BS,Hkv,D*] via block_table [B,MB] -> [B,Hq,Dv]."""
    op = "paged_decode_attention"
    check_layout(op, kv_layout)
    refuse_score_options(op, softcap, alibi_slopes)
    check_half(op, q)
    bs = key_cache.shape[1]
    if bs % 16 or bs > 512:
        raise unsupported(op, "block_size", f"{bs}; FIA decode needs a multiple of 16 <= 512")
    if q.shape[0] == 0:
        return q.new_empty(0, q.shape[1], value_cache.shape[-1])
    plan = _plan(plan, None, seqlens_kv, None, seqlens_kv_cpu)
    return _decode(q.contiguous(), key_cache, value_cache, block_table, plan.kv_cpu, seqlens_kv, plan,
                   scale=softmax_scale(scale, q.shape[-1]), window=window)


def _mask_kwargs(causal: bool, window: int | None, device: torch.device) -> dict[str, object]:
    if not causal:
        return {"sparse_mode": 0, "atten_mask": None}
    if window is None:
        return {"sparse_mode": 3, "atten_mask": _compressed_mask(device)}
    return {"sparse_mode": 4, "atten_mask": _compressed_mask(device), "pre_tokens": window - 1,
            "next_tokens": 0}


def paged_prefill_attention(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                            block_table: torch.Tensor, cu_seqlens_q: torch.Tensor,
                            seqlens_kv: torch.Tensor, *, max_seqlen_q: int, max_seqlen_kv: int,
                            causal: bool = True, scale: float | None = None,
                            window: int | None = None, softcap: float | None = None,
                            alibi_slopes: torch.Tensor | None = None, kv_layout: str | None = None,
                            cu_seqlens_q_cpu: torch.Tensor | None = None,
                            seqlens_kv_cpu: torch.Tensor | None = None,
                            plan: AscendPlan | None = None) -> torch.Tensor:
    """q [T,Hq,D] (new tokens, already cached) over each sequence's cache -> [T,Hq,Dv]."""
    op = "paged_prefill_attention"
    check_layout(op, kv_layout)
    refuse_score_options(op, softcap, alibi_slopes)
    if window is not None and not causal:
        raise unsupported(op, "window", "a window with causal=False")
    check_half(op, q)
    t, hq, d = q.shape
    bs, dv = key_cache.shape[1], value_cache.shape[-1]
    if bs % 16 or bs > 512:
        raise unsupported(op, "block_size", f"{bs}; the FIA routes need a multiple of 16 <= 512")
    if t == 0:
        return q.new_empty(0, hq, dv)
    q = q.contiguous()
    plan = _plan(plan, cu_seqlens_q, seqlens_kv, cu_seqlens_q_cpu, seqlens_kv_cpu)
    sc = softmax_scale(scale, d)
    max_q = plan.max_q
    if (d, dv) in TND_DIMS and max_q > 1:
        return _fia(q, key_cache, value_cache, block_table, actual_seq_lengths=plan.cu[1:],
                    actual_seq_lengths_kv=plan.kv_cpu, num_heads=hq, scale=sc, input_layout="TND",
                    **_mask_kwargs(causal, window, q.device))
    if bs in PROMPT_BLOCK_SIZES and max_q > 1:
        return _padded_bsnd(q, key_cache, value_cache, block_table, plan, scale=sc, causal=causal,
                            window=window)
    return _per_token(q, key_cache, value_cache, block_table, plan, scale=sc, causal=causal, window=window)


def _padded_bsnd(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
                 block_table: torch.Tensor, plan: AscendPlan, *, scale: float, causal: bool,
                 window: int | None) -> torch.Tensor:
    """Prompt-path FIA on q padded to (B, max_q, Hq, D); per-batch host q lengths."""
    b, max_q = plan.qlens.numel(), plan.max_q
    t, hq, d = q.shape
    flat = plan.padded_index(q.device)
    padded = q.new_zeros(b * max_q, hq, d).index_copy_(0, flat, q)
    out = _fia(padded.view(b, max_q, hq, d), key_cache, value_cache, block_table,
               actual_seq_lengths=plan.qlens.to(torch.int32), actual_seq_lengths_kv=plan.kv_cpu,
               num_heads=hq, scale=scale, input_layout="BSND",
               **_mask_kwargs(causal, window, q.device))
    return out.reshape(b * max_q, hq, -1).index_select(0, flat)


def _per_token(q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
               block_table: torch.Tensor, plan: AscendPlan, *,
               scale: float, causal: bool, window: int | None) -> torch.Tensor:
    """Every query token as a single-token FIA call: its KV length is its position + 1 (causal)."""
    tok_kv, tok_kv_dev, rows = plan.per_token(causal, block_table)
    return _decode(q, key_cache, value_cache, rows, tok_kv, tok_kv_dev, plan, scale=scale, window=window)
