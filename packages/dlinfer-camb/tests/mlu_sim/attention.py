"""Simulated tmo.flash_attention (docs/vendor-semantics.md §3.5) and tmo.single_query_cached_kv_attn (§3.6).

Shared math (§3.5, §1.3): s = scale * q.k^T (+ ALiBi); mask; softmax in compute_dtype; out = p.v.
GQA: query head h reads kv head h // (Hq / Hkv). Causal alignment for q_len != kv_len is taken as
bottom-right (UNCONFIRMED, §5 item 7): query i of a sequence sits at position kv_len - q_len + i.
ALiBi bias is modelled as -slope * |p - j| (the flash-attn convention; UNCONFIRMED for tmo: for causal
attention every common convention gives the same softmax, for non-causal they differ).
"""

from __future__ import annotations

import torch

from ._contract import HALF, NotModelled, cu_seqlens, fail, heads_divide, same_dtype, tensor

#: flash_attention paged mode: block size 16 only (TMO-NEW; UNCONFIRMED for 1.5.0, §3.5).
FLASH_PAGED_BLOCK_SIZES = (16,)
#: single_query_cached_kv_attn block sizes 1..64 (TMO-NEW, §3.6).
DECODE_BLOCK_RANGE = (1, 64)


def attend(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, causal: bool, scale: float, left: int, right: int,
    slopes: torch.Tensor | None, compute_dtype: torch.dtype,
) -> torch.Tensor:
    """One sequence: q [n, Hq, D], k [L, Hkv, D], v [L, Hkv, Dv] -> [n, Hq, Dv] (rows that see nothing are 0)."""
    n, hq, _ = q.shape
    length, hkv, _ = k.shape
    g = hq // hkv
    kf = k.float().repeat_interleave(g, dim=1)
    vf = v.float().repeat_interleave(g, dim=1)
    s = torch.einsum("nhd,lhd->hnl", q.float(), kf) * scale
    pos = torch.arange(n) + (length - n)
    rel = torch.arange(length)[None, :] - pos[:, None]  # j - p, [n, L]
    if slopes is not None:
        s = s - slopes.float()[:, None, None] * rel.abs().float()
    visible = torch.ones(n, length, dtype=torch.bool)
    if causal:
        visible &= rel <= 0
    if left >= 0:
        visible &= rel >= -left
    if right >= 0:
        visible &= rel <= right
    s = s.masked_fill(~visible, float("-inf"))
    p = torch.softmax(s.to(compute_dtype), dim=-1).float().nan_to_num(0.0)
    return torch.einsum("hnl,lhd->nhd", p, vf).to(q.dtype)


def _gather(cache: torch.Tensor, table: torch.Tensor, length: int) -> torch.Tensor:
    """Heads-first cache [NB, H, BS, d], one block-table row -> [length, H, d]."""
    bs = cache.shape[2]
    pos = torch.arange(length)
    return cache[table[pos // bs].long(), :, pos % bs, :]


def _paged_caches(fn: str, k: torch.Tensor, v: torch.Tensor, tables: object, allowed: tuple[int, ...] | range) -> int:
    """Checks heads-first caches [NB, Hkv, BS, D|Dv] and the block table; returns the block size."""
    tensor(fn, "k_cache", k, ndim=4, dtypes=HALF)
    tensor(fn, "v_cache", v, ndim=4, dtypes=(k.dtype,))
    if v.shape[:3] != k.shape[:3]:
        raise fail(fn, "v_cache", f"shape {list(v.shape)} does not match k_cache {list(k.shape)}")
    if k.shape[2] not in allowed:
        raise fail(fn, "k_cache", f"block size {k.shape[2]} (dim 2 of [num_blocks, kv_heads, block_size, head]) "
                                  f"not served; allowed {list(allowed)}")
    tensor(fn, "block_tables", tables, ndim=2, dtypes=(torch.int32,))
    return k.shape[2]


def _check_window(fn: str, name: str, value: object) -> int:
    if not isinstance(value, int) or value < -1:
        raise fail(fn, name, f"expected an int >= -1, got {value!r}")
    return value


def _check_alibi(fn: str, slopes: torch.Tensor | None, batch: int, hq: int) -> list[torch.Tensor | None]:
    if slopes is None:
        return [None] * batch
    tensor(fn, "alibi_slope", slopes, ndim=(1, 2), dtypes=(torch.float32,))
    if tuple(slopes.shape) not in ((hq,), (batch, hq)):
        raise fail(fn, "alibi_slope", f"expected [{hq}] or [{batch}, {hq}], got {list(slopes.shape)}")
    return [slopes if slopes.dim() == 1 else slopes[b] for b in range(batch)]


def flash_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    out: torch.Tensor | None,
    cu_seq_lens_q: torch.Tensor,
    cu_seq_lens_kv: torch.Tensor,
    alibi_slope: torch.Tensor | None,
    attn_bias: torch.Tensor | None,
    max_seq_len_q: int,
    max_seq_len_kv: int,
    softmax_scale: float,
    is_causal: bool,
    window_size_left: int = -1,
    window_size_right: int = -1,
    compute_dtype: torch.dtype = torch.float32,
    return_lse: bool = False,
    block_tables: torch.Tensor | None = None,
    k_cache_quant_scale: torch.Tensor | None = None,
    v_cache_quant_scale: torch.Tensor | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """§3.5, packed mode: q [total_q, Nq, D] with cu_seq_lens_q int32 [B+1] (leading 0); k/v packed
    [total_kv, Nkv, D|Dv] with cu_seq_lens_kv, or heads-first paged caches with block_tables [B, max_blocks]
    (then cu_seq_lens_kv holds the cumulative context lengths). Everything after v is keyword-only here
    because the 1.5.0 positional order is UNCONFIRMED (§3 intro). Returns out [total_q, Nq, Dv]."""
    fn = "flash_attention"
    tensor(fn, "q", q, ndim=(3, 4), dtypes=HALF)
    if q.dim() == 4:
        raise NotModelled(f"torch_mlu_ops.{fn}: pad mode (4-D q) is not modelled")
    if attn_bias is not None or k_cache_quant_scale is not None or v_cache_quant_scale is not None:
        raise NotModelled(f"torch_mlu_ops.{fn}: attn_bias and quantised caches are not modelled")
    cu_q = cu_seqlens(fn, "cu_seq_lens_q", cu_seq_lens_q, q.shape[0])
    batch = len(cu_q) - 1
    if block_tables is None:
        tensor(fn, "k", k, ndim=3, dtypes=(q.dtype,))
        tensor(fn, "v", v, ndim=3, dtypes=(q.dtype,))
        if v.shape[:2] != k.shape[:2]:
            raise fail(fn, "v", f"shape {list(v.shape)} does not match k {list(k.shape)} in tokens / heads")
        cu_kv = cu_seqlens(fn, "cu_seq_lens_kv", cu_seq_lens_kv, k.shape[0])
        hkv = k.shape[1]
    else:
        same_dtype(fn, "k", k, q, "q")
        bs = _paged_caches(fn, k, v, block_tables, FLASH_PAGED_BLOCK_SIZES)
        cu_kv = cu_seqlens(fn, "cu_seq_lens_kv", cu_seq_lens_kv)
        if block_tables.shape[0] != batch:
            raise fail(fn, "block_tables", f"{block_tables.shape[0]} rows for batch {batch}")
        hkv = k.shape[1]
    if len(cu_kv) != len(cu_q):
        raise fail(fn, "cu_seq_lens_kv", f"{len(cu_kv)} entries, cu_seq_lens_q has {len(cu_q)}")
    if k.shape[-1] != q.shape[-1]:
        raise fail(fn, "k", f"head size {k.shape[-1]} != q head size {q.shape[-1]}")
    heads_divide(fn, q.shape[1], hkv)
    q_lens = [b - a for a, b in zip(cu_q, cu_q[1:], strict=False)]
    kv_lens = [b - a for a, b in zip(cu_kv, cu_kv[1:], strict=False)]
    if block_tables is not None and max(kv_lens, default=0) > block_tables.shape[1] * bs:
        raise fail(fn, "cu_seq_lens_kv", f"a context of {max(kv_lens)} exceeds the block table capacity")
    for name, bound, lens in (("max_seq_len_q", max_seq_len_q, q_lens), ("max_seq_len_kv", max_seq_len_kv, kv_lens)):
        if not isinstance(bound, int) or bound < max(lens, default=0):
            raise fail(fn, name, f"expected an int upper bound >= {max(lens, default=0)}, got {bound!r}")
    if not isinstance(softmax_scale, float):
        raise fail(fn, "softmax_scale", f"expected a float, got {type(softmax_scale).__name__}")
    if not isinstance(is_causal, bool):
        raise fail(fn, "is_causal", f"expected a bool, got {type(is_causal).__name__}")
    left = _check_window(fn, "window_size_left", window_size_left)
    right = _check_window(fn, "window_size_right", window_size_right)
    if compute_dtype not in (torch.float32, q.dtype):
        raise fail(fn, "compute_dtype", f"expected torch.float32 or q's dtype, got {compute_dtype}")
    slopes = _check_alibi(fn, alibi_slope, batch, q.shape[1])
    dv = v.shape[-1]
    result = torch.empty(q.shape[0], q.shape[1], dv, dtype=q.dtype)
    for b in range(batch):
        qs = q[cu_q[b] : cu_q[b + 1]]
        if block_tables is None:
            ks, vs = k[cu_kv[b] : cu_kv[b + 1]], v[cu_kv[b] : cu_kv[b + 1]]
        else:
            ks, vs = _gather(k, block_tables[b], kv_lens[b]), _gather(v, block_tables[b], kv_lens[b])
        result[cu_q[b] : cu_q[b + 1]] = attend(qs, ks, vs, causal=is_causal, scale=softmax_scale, left=left,
                                               right=right, slopes=slopes[b], compute_dtype=compute_dtype)
    if out is not None:
        tensor(fn, "out", out, ndim=3, dtypes=(q.dtype,))
        if tuple(out.shape) != tuple(result.shape):
            raise fail(fn, "out", f"expected shape {list(result.shape)}, got {list(out.shape)}")
        if out.untyped_storage().data_ptr() == q.untyped_storage().data_ptr():
            raise fail(fn, "out", "must not alias q")
        out.copy_(result)
        result = out
    if return_lse:
        raise NotModelled(f"torch_mlu_ops.{fn}: return_lse is not modelled")
    return result


def single_query_cached_kv_attn(
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    out: torch.Tensor,
    block_tables: torch.Tensor,
    context_lens: torch.Tensor,
    k_cache_quant_scale: torch.Tensor | None,
    v_cache_quant_scale: torch.Tensor | None,
    alibi_slopes: torch.Tensor | None,
    max_context_len: int,
    windows_size_left: int,
    windows_size_right: int,
    softmax_scale: float,
    return_lse: bool = False,
    kv_cache_quant_bit_size: int = -1,
) -> None:
    """§3.6: q [B, seq_q, Nq, D] over heads-first caches [NB, Nkv, BS (1..64), D|Dv] through block_tables
    int32 [B, max_blocks]; context_lens int32 [B] per-sequence (not cumulative). Writes out
    [B, seq_q, Nq, Dv] in place (returns nothing we rely on). windows_size_left keeps the last window+1 keys;
    windows_size_right is reserved (-1). max_context_len <= 0 means "derive"; a positive value must bound
    every context. A causal mask applies when seq_q > 1 (bottom-right, UNCONFIRMED)."""
    fn = "single_query_cached_kv_attn"
    tensor(fn, "q", q, ndim=4, dtypes=HALF)
    if k_cache_quant_scale is not None or v_cache_quant_scale is not None or kv_cache_quant_bit_size != -1:
        raise NotModelled(f"torch_mlu_ops.{fn}: quantised caches are not modelled")
    if return_lse:
        raise NotModelled(f"torch_mlu_ops.{fn}: return_lse is not modelled")
    same_dtype(fn, "k_cache", k_cache, q, "q")
    lo, hi = DECODE_BLOCK_RANGE
    bs = _paged_caches(fn, k_cache, v_cache, block_tables, range(lo, hi + 1))
    batch, seq_q, hq, d = q.shape
    if k_cache.shape[-1] != d:
        raise fail(fn, "k_cache", f"head size {k_cache.shape[-1]} != q head size {d}")
    heads_divide(fn, hq, k_cache.shape[1])
    tensor(fn, "context_lens", context_lens, ndim=1, dtypes=(torch.int32,))
    if context_lens.shape[0] != batch:
        raise fail(fn, "context_lens", f"expected per-sequence lengths [{batch}], got {context_lens.shape[0]} "
                                       "entries (cumulative lengths are not accepted)")
    if block_tables.shape[0] != batch:
        raise fail(fn, "block_tables", f"{block_tables.shape[0]} rows for batch {batch}")
    lens = context_lens.tolist()
    if min(lens, default=0) < 0 or max(lens, default=0) > block_tables.shape[1] * bs:
        raise fail(fn, "context_lens", f"lengths {lens[:8]} outside 0..{block_tables.shape[1] * bs}")
    if not isinstance(max_context_len, int):
        raise fail(fn, "max_context_len", f"expected an int, got {type(max_context_len).__name__}")
    if max_context_len > 0 and max_context_len < max(lens, default=0):
        raise fail(fn, "max_context_len", f"{max_context_len} is below the longest context {max(lens)}")
    left = _check_window(fn, "windows_size_left", windows_size_left)
    if windows_size_right != -1:
        raise fail(fn, "windows_size_right", f"reserved, must be -1, got {windows_size_right!r}")
    if not isinstance(softmax_scale, float):
        raise fail(fn, "softmax_scale", f"expected a float, got {type(softmax_scale).__name__}")
    slopes = _check_alibi(fn, alibi_slopes, batch, hq)
    tensor(fn, "out", out, ndim=4, dtypes=(q.dtype,))
    if tuple(out.shape) != (batch, seq_q, hq, v_cache.shape[-1]):
        raise fail(fn, "out", f"expected shape {[batch, seq_q, hq, v_cache.shape[-1]]}, got {list(out.shape)}")
    for b in range(batch):
        ks, vs = _gather(k_cache, block_tables[b], lens[b]), _gather(v_cache, block_tables[b], lens[b])
        out[b] = attend(q[b], ks, vs, causal=seq_q > 1, scale=softmax_scale, left=left, right=-1,
                        slopes=slopes[b], compute_dtype=torch.float32)
    return None
