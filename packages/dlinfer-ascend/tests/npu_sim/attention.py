"""Simulated attention kernels.

- torch.ops.npu.npu_fused_infer_attention_score (FIA): docs/vendor-semantics.md §2.6
- torch.ops.atb._npu_flash_attention: §2.14;  torch.ops.atb._npu_flash_attention_unpad: §2.15

Mask polarity (§1.1): 1/True = masked. Fully masked rows with inner_precise 0/1 are
UNCONFIRMED (§5.1): the simulator returns NaN there so nothing can depend on them.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ._contract import (
    HALF_DTYPES,
    NotModelled,
    Unconfirmed,
    check,
    device_tensor,
    host_ints,
)
from .graphs import UpdatableNode, capturing_graph, suspended

INT_MAX = 2147483647
MASK_DTYPES = (torch.bool, torch.int8, torch.uint8)
COMPRESSED_SHAPES = ((2048, 2048), (1, 2048, 2048), (1, 1, 2048, 2048))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float,
           allowed: torch.Tensor, empty_rows: str) -> torch.Tensor:
    """Masked softmax attention with GQA (§1.3: q head h reads kv head h // (Nq/Nkv)).

    q [Sq,N,D], k [Sk,Nkv,D], v [Sk,Nkv,Dv], allowed bool [Sq,Sk] -> fp32 [Sq,N,Dv];
    rows with nothing allowed are 0 (empty_rows="zero") or NaN ("nan").
    """
    n, nkv = q.shape[1], k.shape[1]
    k = k.float().repeat_interleave(n // nkv, dim=1)
    v = v.float().repeat_interleave(n // nkv, dim=1)
    s = torch.einsum("qhd,khd->hqk", q.float(), k) * scale
    s = s.masked_fill(~allowed.unsqueeze(0), float("-inf"))
    p = torch.softmax(s, dim=-1).nan_to_num(0.0)
    out = torch.einsum("hqk,khd->qhd", p, v)
    dead = ~allowed.any(dim=-1)
    if dead.any():
        out[dead] = 0.0 if empty_rows == "zero" else float("nan")
    return out


def _gather_paged(fn: str, cache: torch.Tensor, fmt: str, row: torch.Tensor, kv_len: int,
                  nkv: int, bs: int) -> torch.Tensor:
    pos = torch.arange(kv_len)
    blocks = row[pos // bs].long()
    nb = cache.shape[0]
    check(bool(((blocks >= 0) & (blocks < nb)).all()), fn, "block_table holds an out-of-range block id")
    off = pos % bs
    if fmt == "BnBsH":
        return cache.view(nb, bs, nkv, -1)[blocks, off]
    return cache[blocks, :, off]


def _check_compressed(fn: str, mask: torch.Tensor | None, mode: int) -> None:
    check(mask is not None, fn, f"sparse_mode {mode} requires the compressed 2048x2048 atten_mask")
    assert mask is not None
    device_tensor(fn, "atten_mask", mask, dtypes=MASK_DTYPES)
    check(tuple(mask.shape) in COMPRESSED_SHAPES, fn,
          f"sparse_mode {mode} atten_mask must be 2048x2048 (optionally with leading 1s), "
          f"got {tuple(mask.shape)}")
    want = torch.triu(torch.ones(2048, 2048, dtype=torch.bool), diagonal=1)
    check(torch.equal(mask.reshape(2048, 2048).bool(), want), fn,
          f"sparse_mode {mode} atten_mask must be triu(ones(2048,2048), 1) (1 = masked)")


def _fia_impl(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kw: Any
              ) -> tuple[torch.Tensor, torch.Tensor]:
    fn = "npu_fused_infer_attention_score"
    layout = kw["input_layout"]
    block_table = kw["block_table"]
    mode = kw["sparse_mode"]
    mask = kw["atten_mask"]
    scale = kw["scale"]
    pre, nxt = kw["pre_tokens"], kw["next_tokens"]
    n = kw["num_heads"]
    nkv = kw["num_key_value_heads"] or n

    check(layout in ("TND", "BSND"), fn, f"input_layout {layout!r} is not modelled (TND, BSND)")
    if block_table is None:
        check(layout == "TND", fn, "without block_table only the TND layout is modelled")
        return _fia_tnd_unpaged(fn, query, key, value, **kw)
    device_tensor(fn, "query", query, dtypes=HALF_DTYPES, dim=3 if layout == "TND" else 4)
    device_tensor(fn, "key", key, dtypes=(query.dtype,))
    device_tensor(fn, "value", value, dtypes=(query.dtype,))
    device_tensor(fn, "block_table", block_table, dtypes=(torch.int32,), dim=2)
    b = block_table.shape[0]
    check(b <= 65536, fn, f"batch {b} > 65536")
    check(query.shape[-2] == n, fn, f"num_heads={n} but query has {query.shape[-2]} heads")
    check(n <= 256 and n % nkv == 0 and n // nkv <= 64, fn,
          f"num_heads={n}, num_key_value_heads={nkv}: need N<=256, N % Nkv == 0, ratio <= 64")
    d = query.shape[-1]
    check(d <= 512 and d % 16 == 0, fn, f"head dim {d} must be <= 512 and 16-aligned")

    # KV cache layout (paged): BnBsH (nb, bs, Nkv*D) or BnNBsD (nb, Nkv, bs, D).
    if key.dim() == 3:
        fmt, bs = "BnBsH", key.shape[1]
        check(key.shape[2] == nkv * d, fn, f"key cache last dim {key.shape[2]} != Nkv*D = {nkv * d}")
        check(key.shape[2] <= 65535, fn, "KV_N*D > 65535 is rejected for the BnBsH cache layout")
        check(value.dim() == 3 and value.shape[:2] == key.shape[:2] and value.shape[2] % nkv == 0,
              fn, f"value cache {tuple(value.shape)} does not match key cache {tuple(key.shape)}")
        dv = value.shape[2] // nkv
    elif key.dim() == 4:
        fmt, bs = "BnNBsD", key.shape[2]
        check(key.shape[1] == nkv and key.shape[3] == d, fn, f"key cache {tuple(key.shape)} != (nb,Nkv,bs,D)")
        check(value.dim() == 4 and value.shape[:3] == key.shape[:3], fn, "value cache mismatch")
        dv = value.shape[3]
    else:
        check(False, fn, f"paged key cache must be 3-D (BnBsH) or 4-D (BnNBsD), got {tuple(key.shape)}")
    check(kw["block_size"] == bs, fn, f"block_size={kw['block_size']} but the cache has {bs}")

    kv_lens = kw["actual_seq_lengths_kv"]
    check(kv_lens is not None, fn, "actual_seq_lengths_kv is mandatory with PagedAttention")
    kv = host_ints(fn, "actual_seq_lengths_kv", kv_lens)
    check(len(kv) == b, fn, f"actual_seq_lengths_kv has {len(kv)} entries for batch {b} "
          "(paged KV lengths are per sequence)")
    cap = block_table.shape[1] * bs
    check(all(0 <= x <= cap for x in kv), fn, f"KV length outside [0, {cap}] (max_blocks*block_size)")

    if layout == "TND":
        t = query.shape[0]
        check((d, dv) in ((128, 128), (192, 128), (192, 192)), fn,
              f"TND without rope is documented for D=128 (or QK 192 / V 128|192) only, got D={d}, Dv={dv}")
        check(bs % 16 == 0 and 0 < bs <= 1024, fn, f"TND paged block_size {bs} must be 16-aligned <= 1024")
        ql = kw["actual_seq_lengths"]
        check(ql is not None, fn, "TND requires actual_seq_lengths (cumulative)")
        cum = host_ints(fn, "actual_seq_lengths", ql)
        check(len(cum) == b, fn, f"TND actual_seq_lengths has {len(cum)} entries for batch {b}")
        check(all(x <= y for x, y in zip([0, *cum], cum, strict=False)), fn,
              f"TND actual_seq_lengths must be cumulative (non-decreasing, no leading 0): {cum[:8]}")
        check(not cum or cum[-1] == t, fn, f"TND actual_seq_lengths must end at T={t}, got {cum[-1:]}")
        starts, qlens = [0, *cum[:-1]], [y - x for x, y in zip([0, *cum], cum, strict=False)]
        q_s = 2  # prompt path
        check(mode != 0 or mask is None, fn, "a full mask with TND is not modelled")
    else:
        check(query.shape[0] == b, fn, f"BSND query batch {query.shape[0]} != block_table batch {b}")
        q_s = query.shape[1]
        if q_s > 1:
            check(bs % 128 == 0 and 128 <= bs <= 512, fn,
                  f"block_size {bs}: Q_S > 1 needs a multiple of 128 in [128, 512]")
        else:
            check(0 < bs <= 512 and bs % 16 == 0, fn, f"block_size {bs}: Q_S = 1 needs 16-aligned <= 512")
        ql = kw["actual_seq_lengths"]
        if q_s == 1 or ql is None:
            qlens = [q_s] * b
        else:
            per = host_ints(fn, "actual_seq_lengths", ql)
            check(len(per) == 1 or len(per) >= b, fn, "actual_seq_lengths needs 1 or >= B entries")
            qlens = per * b if len(per) == 1 else per[:b]
            check(all(0 <= x <= q_s for x in qlens), fn, "BSND actual_seq_lengths must be per batch <= S")
        starts = [0] * b

    if q_s == 1:
        mode = 0  # sparse_mode is ignored for Q_S = 1 without rope (§2.6)
    if mode in (3, 4):
        _check_compressed(fn, mask, mode)
    elif mode == 0 and mask is not None:
        device_tensor(fn, "atten_mask", mask, dtypes=MASK_DTYPES)
    elif mode != 0:
        raise NotModelled(f"{fn}: sparse_mode {mode} is not modelled")
    precise = kw["inner_precise"]
    check(precise in (0, 1, 2, 3), fn, f"inner_precise {precise} invalid")
    empty_rows = "zero" if precise in (2, 3) else "nan"

    out_shape = (*query.shape[:-1], dv)
    out = torch.full(out_shape, float("nan"), dtype=torch.float32)
    for i in range(b):
        q_len, k_len = qlens[i], kv[i]
        if q_len == 0:
            continue
        kk = _gather_paged(fn, key, fmt, block_table[i], k_len, nkv, bs)
        vv = _gather_paged(fn, value, fmt, block_table[i], k_len, nkv, bs)
        rows = torch.arange(q_len).unsqueeze(1)
        cols = torch.arange(k_len).unsqueeze(0)
        if mode == 0:
            if mask is None:
                allowed = torch.ones(q_len, k_len, dtype=torch.bool)
            else:
                check(mask.shape[-1] >= k_len, fn, f"atten_mask KV_S {mask.shape[-1]} < KV length {k_len}")
                if q_s == 1 and mask.dim() == 2:
                    check(mask.shape[0] == b, fn, f"(B, KV_S) mask needs B={b} rows")
                    m = mask[i].unsqueeze(0)
                elif mask.dim() == 4 and mask.shape[0] == b and b > 1:
                    m = mask[i, 0]
                else:
                    m = mask.reshape(mask.shape[-2], mask.shape[-1])
                check(m.shape[0] >= q_len, fn, f"atten_mask Q_S {m.shape[0]} < query length {q_len}")
                band = (cols >= rows - pre) & (cols <= rows + nxt)
                allowed = (m[:q_len, :k_len] == 0) & band
        elif mode == 3:
            allowed = cols <= rows + (k_len - q_len)
        else:
            p = rows + (k_len - q_len)
            allowed = (cols >= p - pre) & (cols <= p + nxt)
        if layout == "TND":
            qq = query[starts[i]:starts[i] + q_len]
            out[starts[i]:starts[i] + q_len] = attend(qq, kk, vv, scale, allowed, empty_rows)
        else:
            out[i, :q_len] = attend(query[i, :q_len], kk, vv, scale, allowed, empty_rows)
    lse_placeholder = torch.full((1,), float("nan"))  # shape UNCONFIRMED (§2.6); never rely on it
    return out.to(query.dtype), lse_placeholder


def _fia_tnd_unpaged(fn: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, **kw: Any
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """FIA without paging, TND: q [T,N,D], k [Tk,Nkv,D], v [Tk,Nkv,Dv] packed sequences (torch_npu 2.13.0
    ``_op_plugin_docs.py`` npu_fused_infer_attention_score: with TND ``actual_seq_lengths`` is mandatory and
    cumulative, its element count is the batch; ``actual_seq_lengths_kv`` is mandatory and, without page attention,
    cumulative too ("在非PA场景下, 第b个值表示前b个Batch的S轴累加长度"); sparse modes as §2.6).

    (D, Dv) = (128, 128) only (docs/vendor-semantics.md §2.6, TND without rope documented for D = 128); the QK-192
    pairs fall under the docstring's TND restriction block (Q_N == K_N, bf16, q < kv per batch for sparse 3), not
    modelled.
    """
    n, mode, mask = kw["num_heads"], kw["sparse_mode"], kw["atten_mask"]
    nkv = kw["num_key_value_heads"] or n
    device_tensor(fn, "query", query, dtypes=HALF_DTYPES, dim=3)
    device_tensor(fn, "key", key, dtypes=(query.dtype,), dim=3)
    device_tensor(fn, "value", value, dtypes=(query.dtype,), dim=3)
    t, d, dv = query.shape[0], query.shape[-1], value.shape[-1]
    check(query.shape[1] == n, fn, f"num_heads={n} but query has {query.shape[1]} heads")
    check(key.shape[1] == nkv and value.shape[:2] == key.shape[:2] and key.shape[2] == d, fn,
          f"key {tuple(key.shape)} / value {tuple(value.shape)} do not match (Tk, Nkv={nkv}, D={d})")
    check(n <= 256 and n % nkv == 0 and n // nkv <= 64, fn, f"num_heads={n}, num_key_value_heads={nkv}")
    if (d, dv) != (128, 128):
        raise NotModelled(f"{fn}: non-paged TND with D={d}, Dv={dv} is not modelled (D = 128 only)")
    for name in ("actual_seq_lengths", "actual_seq_lengths_kv"):
        check(kw[name] is not None, fn, f"TND requires {name} (cumulative)")
    cum_q = host_ints(fn, "actual_seq_lengths", kw["actual_seq_lengths"])
    cum_k = host_ints(fn, "actual_seq_lengths_kv", kw["actual_seq_lengths_kv"])
    for name, cum, total in (("actual_seq_lengths", cum_q, t), ("actual_seq_lengths_kv", cum_k, key.shape[0])):
        check(all(x <= y for x, y in zip([0, *cum], cum, strict=False)), fn,
              f"TND {name} must be cumulative (non-decreasing, no leading 0): {cum[:8]}")
        check(bool(cum) and cum[-1] == total, fn, f"TND {name} must end at {total}, got {cum[-1:]}")
    check(len(cum_k) == len(cum_q), fn, f"{len(cum_q)} query vs {len(cum_k)} key batches")
    if mode in (3, 4):
        _check_compressed(fn, mask, mode)
    elif mode == 0:
        check(mask is None, fn, "a full mask with TND is not modelled")
    else:
        raise NotModelled(f"{fn}: sparse_mode {mode} is not modelled")
    check(kw["inner_precise"] in (0, 1, 2, 3), fn, f"inner_precise {kw['inner_precise']} invalid")
    empty_rows = "zero" if kw["inner_precise"] in (2, 3) else "nan"
    pre, nxt = kw["pre_tokens"], kw["next_tokens"]
    out = torch.full((t, n, dv), float("nan"), dtype=torch.float32)
    spans_q, spans_k = zip([0, *cum_q], cum_q, strict=False), zip([0, *cum_k], cum_k, strict=False)
    for (q0, q1), (k0, k1) in zip(spans_q, spans_k, strict=True):
        q_len, k_len = q1 - q0, k1 - k0
        if q_len == 0:
            continue
        rows, cols = torch.arange(q_len).unsqueeze(1), torch.arange(k_len).unsqueeze(0)
        p = rows + (k_len - q_len)
        if mode == 0:
            allowed = torch.ones(q_len, k_len, dtype=torch.bool)
        elif mode == 3:
            allowed = cols <= p
        else:
            allowed = (cols >= p - pre) & (cols <= p + nxt)
        out[q0:q1] = attend(query[q0:q1], key[k0:k1], value[k0:k1], kw["scale"], allowed, empty_rows)
    return out.to(query.dtype), torch.full((1,), float("nan"))


_NOT_MODELLED = (
    "pse_shift", "dequant_scale1", "quant_scale1", "dequant_scale2", "quant_scale2", "quant_offset2",
    "antiquant_scale", "antiquant_offset", "key_antiquant_scale", "key_antiquant_offset",
    "value_antiquant_scale", "value_antiquant_offset", "query_padding_size", "kv_padding_size",
    "key_shared_prefix", "value_shared_prefix", "actual_shared_prefix_len", "query_rope", "key_rope",
    "key_rope_antiquant_scale",
)


def npu_fused_infer_attention_score(
    query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, *,
    atten_mask: torch.Tensor | None = None, actual_seq_lengths: Any = None,
    actual_seq_lengths_kv: Any = None, block_table: torch.Tensor | None = None,
    num_heads: int = 1, scale: float = 1.0, pre_tokens: int = INT_MAX, next_tokens: int = INT_MAX,
    input_layout: str = "BSH", num_key_value_heads: int = 0, sparse_mode: int = 0,
    inner_precise: int = 0, block_size: int = 0, antiquant_mode: int = 0,
    key_antiquant_mode: int = 0, value_antiquant_mode: int = 0, softmax_lse_flag: bool = False,
    **not_modelled: Any,
) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.6 (OP-YAML; OP-DOC:npu_fused_infer_attention_score; SPARSE; OP-META).

    out = softmax(scale·QKᵀ masked)·V; scale default 1.0; TND wants cumulative query lengths,
    paged KV lengths are per sequence (host data); GQA §1.3; sparse_mode 0/3/4 as tabled in §2.6.
    """
    fn = "npu_fused_infer_attention_score"
    for name, val in not_modelled.items():
        if name not in _NOT_MODELLED:
            raise TypeError(f"{fn}() got an unexpected keyword argument {name!r}")
        if val is not None:
            raise NotModelled(f"{fn}: {name} is not modelled")
    if softmax_lse_flag:
        raise NotModelled(f"{fn}: softmax_lse_flag=True is not modelled")
    check(isinstance(scale, float), fn, f"scale must be a float, got {type(scale).__name__}")
    kw = dict(atten_mask=atten_mask, actual_seq_lengths=actual_seq_lengths,
              actual_seq_lengths_kv=actual_seq_lengths_kv, block_table=block_table,
              num_heads=num_heads, scale=scale, pre_tokens=pre_tokens, next_tokens=next_tokens,
              input_layout=input_layout, num_key_value_heads=num_key_value_heads,
              sparse_mode=sparse_mode, inner_precise=inner_precise, block_size=block_size)
    g = capturing_graph()
    if g is None:
        return _fia_impl(query, key, value, **kw)
    # Captured: host lengths are baked now (read as host values), updatable via graph.update.
    for name in ("actual_seq_lengths", "actual_seq_lengths_kv"):
        if kw[name] is not None:
            kw[name] = host_ints(fn, name, kw[name])
    with suspended():
        out, lse = _fia_impl(query, key, value, **kw)
    g.record_kernel(UpdatableNode(fn, _fia_impl, (query, key, value), kw, out,
                                  ("actual_seq_lengths", "actual_seq_lengths_kv")))
    return out, lse


def _check_packed(fn: str, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                  seq_len: torch.Tensor, num_heads: int, num_kv_heads: int, out: torch.Tensor,
                  scale_value: float) -> list[int]:
    device_tensor(fn, "query", query, dtypes=HALF_DTYPES, dim=3)
    device_tensor(fn, "key", key, dtypes=(query.dtype,), dim=3)
    device_tensor(fn, "value", value, dtypes=(query.dtype,), dim=3)
    device_tensor(fn, "out", out, dtypes=(query.dtype,), dim=3)
    t, d = query.shape[0], query.shape[2]
    check(query.shape[1] == num_heads, fn, f"num_heads={num_heads} but query has {query.shape[1]}")
    check(num_kv_heads > 0 and num_heads % num_kv_heads == 0, fn, "num_heads % num_kv_heads != 0")
    check(tuple(key.shape) == (t, num_kv_heads, d), fn, f"key {tuple(key.shape)} != {(t, num_kv_heads, d)}")
    check(value.shape[:2] == key.shape[:2], fn, f"value {tuple(value.shape)} vs key {tuple(key.shape)}")
    check(tuple(out.shape) == (t, num_heads, value.shape[2]), fn, f"out shape {tuple(out.shape)}")
    check(d <= 256 and value.shape[2] <= 256, fn, f"head size {d}/{value.shape[2]} > 256 (ATB-SA)")
    check(isinstance(scale_value, float), fn, "scale_value must be a float")
    lens = host_ints(fn, "seq_len", seq_len, tensor_only=True)
    check(all(x >= 0 for x in lens) and sum(lens) == t, fn,
          f"seq_len must be per-sequence lengths summing to ntokens={t}, got {lens[:8]}")
    return lens


def _npu_flash_attention(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                         mask: torch.Tensor, seq_len: torch.Tensor, scale_value: float,
                         num_heads: int, num_kv_heads: int, out: torch.Tensor) -> None:
    """docs/vendor-semantics.md §2.14 (OP-ATB:SelfAttentionAtb.cpp; ATB-SA; OP-TEST:atb_flash_attention).

    PA_ENCODER with a full mask applied to each sequence's top-left block; mask dtype = q dtype.
    bf16 (high-precision path): masked value must be 1. fp16: the golden mask is additive
    -10000; whether value 1 masks is UNCONFIRMED (§5.2), so only 0 / <= -10000 are accepted.
    """
    fn = "_npu_flash_attention"
    lens = _check_packed(fn, query, key, value, seq_len, num_heads, num_kv_heads, out, scale_value)
    device_tensor(fn, "mask", mask, dtypes=(query.dtype,))
    check(mask.dim() in (2, 3), fn, f"mask must be (max_seq,max_seq) or (B,max_seq,max_seq), got {mask.dim()}-D")
    mx = max(lens, default=0)
    check(mask.shape[-1] >= mx and mask.shape[-2] >= mx, fn, f"mask {tuple(mask.shape)} < max_seq {mx}")
    if mask.dim() == 3:
        check(mask.shape[0] == len(lens), fn, "per-batch mask needs one matrix per sequence")
    vals = mask.float()
    if query.dtype == torch.bfloat16:
        check(bool(((vals == 0) | (vals == 1)).all()), fn, "bf16 mask must hold 0 (attend) / 1 (masked)")
    elif not bool(((vals == 0) | (vals <= -10000)).all()):
        raise Unconfirmed(f"{fn}: fp16 mask values other than 0 / additive <= -10000 (§5.2)")
    start = 0
    for i, n in enumerate(lens):
        m = mask[i] if mask.dim() == 3 else mask
        allowed = m[:n, :n] == 0
        sl = slice(start, start + n)
        out[sl] = attend(query[sl], key[sl], value[sl], scale_value, allowed, "nan").to(out.dtype)
        start += n


def _npu_flash_attention_unpad(query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                               seq_len: torch.Tensor, scale_value: float, num_heads: int,
                               num_kv_heads: int, out: torch.Tensor) -> None:
    """docs/vendor-semantics.md §2.15 (OP-ATB:SelfAttentionUnpadAtb.cpp; OP-TEST:atb_flash_attention_unpad).

    No mask: bidirectional attention within each packed sequence; seq_len CPU int32 per sequence.
    """
    fn = "_npu_flash_attention_unpad"
    lens = _check_packed(fn, query, key, value, seq_len, num_heads, num_kv_heads, out, scale_value)
    start = 0
    for n in lens:
        sl = slice(start, start + n)
        allowed = torch.ones(n, n, dtype=torch.bool)
        out[sl] = attend(query[sl], key[sl], value[sl], scale_value, allowed, "nan").to(out.dtype)
        start += n


def default_scale(d: int) -> float:
    """1/sqrt(d) (used by tests)."""
    return 1.0 / math.sqrt(d)
