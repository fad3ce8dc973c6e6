"""Attention kernels: split-K paged decode (flash-decoding) and varlen / paged prefill.

Scores follow the spec order: ``s = scale * q.k``, then softcap, then ALiBi, then the mask;
softmax runs in fp32 with an online (streaming) max/sum, using ``exp2``.

Decode: one program per (sequence, KV head, split). All ``G = Hq / Hkv`` query heads that
share a KV head are stacked into the M dimension of one ``tl.dot`` (GQA head grouping),
so every K/V byte is read once per group. The context is cut into splits so that small
batches with long contexts still fill the GPU. The splits are merged with their log-sum-exp:
up to a few splits by the last split program of each (sequence, KV head) to finish, found with
an atomic arrival counter (one launch), otherwise by a second small kernel. The split count is
a pure function of Python ints (batch, heads, ``max_seqlen_kv``), so it is CUDA-graph safe
and never autotuned on the hot path; each sequence's own length is divided among the splits
inside the kernel, so a graph captured for the longest context still runs a short one as a
few one-block programs.

Integers that change from step to step (the block-table width, the split and query-block counts) are not
specialised on (``do_not_specialize``): Triton would otherwise compile a new variant the first time such a value
is 1, a multiple of 16 or neither, in the middle of serving.

Prefill: FlashAttention-2 style forward, one program per (query block, sequence, query
head); keys are read from the packed k/v (``prefill_attention``) or gathered through the
block table (``paged_prefill_attention``). Key blocks that every query row can fully see
run without any masking arithmetic; only the diagonal / window / tail blocks are masked.
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ._utils import (
    arrival_counters,
    cdiv,
    dot_precision,
    interpreting,
    last_arrival,
    next_pow2,
    num_sms,
    programmatic_launch,
    tanh_f32,
)
from .elementwise import kv_strides

LOG2E = 1.4426950408889634
MERGE_TILE = 2048
"""fp32 values of one in-kernel merge tile ``[G, splits, Dv]`` (16 registers a thread at 4 warps); more splits
are merged in several tiles."""
DECODE_HEADS_FIRST = True
"""Grid order of the decode kernel: (KV head, sequence, split) when True, else (sequence, KV head, split). The
programs that run together then read all KV heads of the same pages (NHD: one head is 256 B of a 2 KB slot row):
1-3 % faster at B >= 64 on the H200 (B256 ctx4096 997 -> 978 us, B128 ctx8192 1034 -> 1017 us), equal below."""
MERGE_INLINE_MAX_SPLITS = 8
"""Up to this many splits the last split program merges them (one launch); above it a second launch does. On the
H200 the in-kernel merge took 13 % less time at 4 splits (B1 ctx256) and 1-4 % less at 2 (B32), was level at 9
(B8), and took 15-25 % more at 16-64 splits (B1; likely the last program's serial merge and the merge code's
registers, which every split program holds). 5-8 splits (batch 1 at 257-512 tokens of context: eager decode's
common case) lie between the measured 4 and 9 and were not timed; the bound is 8 rather than 4 because each merge
launch saved is host time in eager mode, where a decode step waits for its launches."""
DECODE_PAGE_LOOP = False
"""Decode key loop over page-aligned blocks (:func:`_decode_page_blocks`; pages a multiple of the key block): the
tile's address offsets are computed once and each block adds one scalar page base; scores are still masked per
key, and values past the sequence's end are not loaded.
sm_90 build of the batch-1 launch (``tools/decode_sass_compare.py``, 2 stages): 356 SASS instructions per 64-key
block at 101 registers, against the per-key loop's 436 at 89 and LMDeploy's split kernel's 269 at 122 (3 stages);
the difference is mostly address arithmetic (IMAD / IADD3 / LEA 49 against 113). Off until timed on a GPU (sweep cell
``default/page-loop``): fewer instructions at more registers was slower before (next sentence).
A loop that split the blocks into a masked head, an unmasked middle and a masked tail (``INTERIOR_UNMASKED``, removed)
was timed on the H200 and was slower at B8 / B32 (80.4 against 70.1 us at B8 ctx8192, 45.8 against 37.7 at B32
ctx1024; 128 registers against 89), level at batch 1 (2026-12-03 fifth session, ``tune-decode-pdl-unmasked.log``)."""
DECODE_MERGE_PDL = True
"""The merge pass is launched as a programmatic dependent of the split kernel where the device allows it
(:func:`programmatic_launch`: NVIDIA sm_90+): its launch overlaps the split kernel's tail, and it waits for the
split grid's completion before reading the partials. H200, batch 1, masked loop, PDL against the plain launch:
6.35 against 6.47 us (ctx 384 in a graph captured for 8192), 7.59 against 7.66 (2048 in 8192), 5.60 against 5.79
(1024), 11.01 against 11.09 (8192), 39.49 against 39.23 (32768) (2026-12-03 fifth session,
``tune-decode-pdl-unmasked.log``, cells ``default/masked`` against ``default/masked+no-pdl``)."""


@triton.jit
def _transform_scores(s, scale, softcap, slope, rel, USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr):
    """scale, then softcap, then ALiBi (``rel = j - p``, broadcastable to ``s``)."""
    s = s * scale
    if USE_SOFTCAP:
        s = softcap * tanh_f32(s / softcap)
    if USE_ALIBI:
        s = s + slope * rel
    return s


@triton.jit
def _online_softmax_step(s, m_i, l_i, acc):
    """Fold one masked score tile into the running (max, sum, rescaled accumulator)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    alpha = tl.exp2((m_i - m_safe) * 1.4426950408889634)
    p = tl.exp2((s - m_safe[:, None]) * 1.4426950408889634)
    l_i = l_i * alpha + tl.sum(p, axis=1)
    acc = acc * alpha[:, None]
    return p, m_new, l_i, acc


# ============================================================================ decode


@triton.jit(do_not_specialize=["stride_bt", "NUM_SPLITS"])
def _decode_split_kernel(
    q_ptr, kc_ptr, vc_ptr, bt_ptr, seqlens_ptr, slopes_ptr,
    o_ptr, part_o_ptr, part_lse_ptr, cnt_ptr,
    stride_qb, stride_qh,
    stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_bt, stride_ob, stride_oh,
    scale, softcap, window,
    G, Hq, NUM_SPLITS,
    PAGE: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, DIRECT: tl.constexpr, MERGE: tl.constexpr,
    HEADS_FIRST: tl.constexpr,
    BLOCK_G: tl.constexpr, BLOCK_N: tl.constexpr,
    BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, MERGE_G: tl.constexpr, MERGE_S: tl.constexpr,
    USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr,
    PAGE_LOOP: tl.constexpr = False, PDL_TRIGGER: tl.constexpr = False,
):
    """One (sequence, KV head, split) program. ``DIRECT``: a single split writes the normalised output.
    Otherwise each split that starts inside the sequence (:func:`_splits_used`) stores its normalised partial and
    log-sum-exp, and the splits past its end store nothing; with ``MERGE`` the last split of the (sequence, KV head)
    to arrive merges the used ones (one launch per call), else :func:`_decode_merge_kernel` does.
    ``PAGE_LOOP`` (``PAGE % BLOCK_N == 0``): the key loop of :func:`_decode_page_blocks`. ``PDL_TRIGGER``: let the
    merge launch (programmatic dependent launch, sm_90+) start once every program is past its key loop; the merge
    waits for this grid's completion."""
    if HEADS_FIRST:  # grid (Hkv, B, splits): the programs that run together read the KV heads of the same pages
        kvh = tl.program_id(0)
        b = tl.program_id(1).to(tl.int64)
        n_kvh = tl.num_programs(0)
    else:  # grid (B, Hkv, splits)
        b = tl.program_id(0).to(tl.int64)
        kvh = tl.program_id(1)
        n_kvh = tl.num_programs(1)
    sp = tl.program_id(2)
    seqlen = tl.load(seqlens_ptr + b)
    pos = seqlen - 1
    # the splits share this sequence's own length (not max_seqlen_kv, which is the capacity in a captured
    # graph): a short context in a graph sized for long ones runs as few one-block programs, not as a few
    # long serial ones; splits past the end exit at once
    chunk = tl.cdiv(tl.cdiv(seqlen, BLOCK_N), NUM_SPLITS) * BLOCK_N
    n_used = _splits_used(seqlen, NUM_SPLITS, BLOCK_N)
    start = sp * chunk
    end = tl.minimum(start + chunk, seqlen)
    if USE_WINDOW:
        start = tl.maximum(start, pos - window + 1)

    g = tl.arange(0, BLOCK_G)
    heads = kvh * G + g
    gmask = g < G
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    dmask = d < D
    dvmask = dv < DV
    q = tl.load(q_ptr + b * stride_qb + heads[:, None] * stride_qh + d[None, :],
                mask=gmask[:, None] & dmask[None, :], other=0.0)
    slope = tl.zeros([BLOCK_G, 1], dtype=tl.float32)
    if USE_ALIBI:
        slope = tl.load(slopes_ptr + heads, mask=gmask, other=0.0)[:, None]

    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_DV], dtype=tl.float32)
    bt_row = bt_ptr + b * stride_bt
    k_base = kc_ptr + kvh * stride_kh
    v_base = vc_ptr + kvh * stride_vh
    if PAGE_LOOP:
        m_i, l_i, acc = _decode_page_blocks(q, k_base, v_base, bt_row, start, end, pos, stride_kb, stride_ks,
                                            stride_vb, stride_vs, scale, softcap, slope, m_i, l_i, acc, d, dv,
                                            dmask, dvmask, PAGE, BLOCK_N, USE_SOFTCAP, USE_ALIBI, USE_WINDOW,
                                            DOT_PREC)
    else:
        for n0 in range((start // BLOCK_N) * BLOCK_N, end, BLOCK_N):
            m_i, l_i, acc = _decode_block(q, k_base, v_base, bt_row, n0, start, end, pos, stride_kb, stride_ks,
                                          stride_vb, stride_vs, scale, softcap, slope, m_i, l_i, acc, d, dv, dmask,
                                          dvmask, PAGE, BLOCK_N, USE_SOFTCAP, USE_ALIBI, DOT_PREC)
    if PDL_TRIGGER:
        tl.extra.cuda.gdc_launch_dependents()

    l_safe = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_safe[:, None]
    omask = gmask[:, None] & dvmask[None, :]
    if DIRECT:  # a single split: normalise and write the output here, no merge pass
        tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + dv[None, :],
                 out.to(o_ptr.dtype.element_ty), mask=omask)
    else:
        if sp < n_used:  # a split past the sequence's end has nothing to store (graphs sized for long contexts)
            lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.log(l_safe))
            row = (b * Hq + heads) * NUM_SPLITS + sp
            tl.store(part_o_ptr + row[:, None] * DV + dv[None, :], out, mask=omask)
            tl.store(part_lse_ptr + row, lse, mask=gmask)
        if MERGE:  # noqa: SIM102 - constexpr, then a runtime branch
            if last_arrival(cnt_ptr, b * n_kvh + kvh, NUM_SPLITS):  # every split arrives, used or not
                _merge_splits(part_o_ptr, part_lse_ptr, o_ptr, b, kvh, G, Hq, NUM_SPLITS, n_used, stride_ob,
                              stride_oh, DV, MERGE_G, MERGE_S, BLOCK_DV)


@triton.jit
def _decode_block(q, k_base, v_base, bt_row, n0, start, end, pos, stride_kb, stride_ks, stride_vb, stride_vs,
                  scale, softcap, slope, m_i, l_i, acc, d, dv, dmask, dvmask,
                  PAGE: tl.constexpr, BLOCK_N: tl.constexpr,
                  USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr, DOT_PREC: tl.constexpr):
    """Fold key block ``[n0, n0 + BLOCK_N)`` into the running softmax of one program's ``[BLOCK_G]`` heads; keys
    outside ``[start, end)`` are neither read nor counted (per-key page lookups and masks: any page size)."""
    offs = n0 + tl.arange(0, BLOCK_N)
    nmask = (offs >= start) & (offs < end)
    if PAGE % BLOCK_N == 0:  # the whole key block sits in one page: one table read
        page = tl.load(bt_row + n0 // PAGE).to(tl.int64)
    else:
        page = tl.load(bt_row + offs // PAGE, mask=nmask, other=0).to(tl.int64)
    slot = offs % PAGE
    krow = page * stride_kb + slot * stride_ks
    vrow = page * stride_vb + slot * stride_vs
    k = tl.load(k_base + krow[:, None] + d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
    s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
    s = _transform_scores(s, scale, softcap, slope, (offs - pos).to(tl.float32)[None, :], USE_SOFTCAP, USE_ALIBI)
    s = tl.where(nmask[None, :], s, float("-inf"))
    p, m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc)
    v = tl.load(v_base + vrow[:, None] + dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
    acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_i, l_i, acc


@triton.jit
def _decode_page_blocks(q, k_base, v_base, bt_row, start, end, pos, stride_kb, stride_ks, stride_vb, stride_vs,
                        scale, softcap, slope, m_i, l_i, acc, d, dv, dmask, dvmask,
                        PAGE: tl.constexpr, BLOCK_N: tl.constexpr, USE_SOFTCAP: tl.constexpr,
                        USE_ALIBI: tl.constexpr, USE_WINDOW: tl.constexpr, DOT_PREC: tl.constexpr):
    """The key loop over ``[start, end)`` in blocks that each lie in one page (``PAGE % BLOCK_N == 0``). The
    tile's offsets inside a page are loop invariant; a block adds one scalar base (its page and its offset in
    the page). Keys are read whole (the sequence's last page is allocated; its slots past the end may hold
    anything, NaN included) and their scores masked to ``[start, end)`` (``start`` is a block boundary unless a
    window moved it); values past the end are not loaded (zero), since a zero weight times NaN is NaN."""
    n = tl.arange(0, BLOCK_N)
    k_off = n[:, None] * stride_ks + d[None, :]
    v_off = n[:, None] * stride_vs + dv[None, :]
    for n0 in range((start // BLOCK_N) * BLOCK_N, end, BLOCK_N):
        page = tl.load(bt_row + n0 // PAGE).to(tl.int64)
        in_page = n0 % PAGE  # times a slot stride: below PAGE * stride_ks, an int32
        k = tl.load(k_base + page * stride_kb + in_page * stride_ks + k_off, mask=dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        offs = n0 + n
        s = _transform_scores(s, scale, softcap, slope, (offs - pos).to(tl.float32)[None, :], USE_SOFTCAP, USE_ALIBI)
        if USE_WINDOW:  # the window's first block starts mid-block
            keep = (offs >= start) & (offs < end)
        else:  # a split starts on a block boundary (whole blocks per split): only the end cuts a block
            keep = offs < end
        s = tl.where(keep[None, :], s, float("-inf"))
        p, m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc)
        # the keys before start are real (their weight 0 suffices); past the end the slots are unread: 0 * NaN is
        # NaN, so their values are not loaded (zero)
        v = tl.load(v_base + page * stride_vb + in_page * stride_vs + v_off,
                    mask=(offs < end)[:, None] & dvmask[None, :], other=0.0)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return m_i, l_i, acc


@triton.jit
def _splits_used(seqlen, NUM_SPLITS, BLOCK_N: tl.constexpr):
    """Splits that start inside a sequence of ``seqlen`` keys: each split covers ``cdiv(blocks, NUM_SPLITS)``
    whole key blocks of it, so a short sequence in a graph sized for long ones uses the first few (0 when empty)."""
    chunk = tl.cdiv(tl.cdiv(seqlen, BLOCK_N), NUM_SPLITS) * BLOCK_N
    return tl.cdiv(seqlen, tl.maximum(chunk, 1))


@triton.jit
def _merge_splits(part_o_ptr, part_lse_ptr, o_ptr, b, kvh, G, Hq, NUM_SPLITS, n_used, stride_ob, stride_oh,
                  DV: tl.constexpr, MERGE_G: tl.constexpr, MERGE_S: tl.constexpr, BLOCK_DV: tl.constexpr):
    """Merge the first ``n_used`` of the ``NUM_SPLITS`` partials of the G query heads of KV head ``kvh`` by their
    log-sum-exp, reading ``[MERGE_G, MERGE_S, DV]`` tiles from L2 (``.cg``: the other programs' stores are not in
    this SM's L1)."""
    g = tl.arange(0, MERGE_G)
    heads = kvh * G + g
    gmask = g < G
    dv = tl.arange(0, BLOCK_DV)
    dvmask = dv < DV
    rows = (b * Hq + heads) * NUM_SPLITS
    m = tl.full([MERGE_G], float("-inf"), dtype=tl.float32)
    tot = tl.zeros([MERGE_G], dtype=tl.float32)
    acc = tl.zeros([MERGE_G, BLOCK_DV], dtype=tl.float32)
    for s0 in range(0, n_used, MERGE_S):
        sp = s0 + tl.arange(0, MERGE_S)
        gs_mask = gmask[:, None] & (sp < n_used)[None, :]
        part = rows[:, None] + sp[None, :]
        lse = tl.load(part_lse_ptr + part, mask=gs_mask, other=float("-inf"), cache_modifier=".cg")
        o = tl.load(part_o_ptr + part[:, :, None] * DV + dv[None, None, :],
                    mask=gs_mask[:, :, None] & dvmask[None, None, :], other=0.0, cache_modifier=".cg")
        m_new = tl.maximum(m, tl.max(lse, axis=1))
        m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
        alpha = tl.exp(m - m_safe)
        w = tl.exp(lse - m_safe[:, None])
        tot = tot * alpha + tl.sum(w, axis=1)
        acc = acc * alpha[:, None] + tl.sum(w[:, :, None] * o, axis=1)
        m = m_new
    out = acc / tl.where(tot == 0.0, 1.0, tot)[:, None]
    tl.store(o_ptr + b * stride_ob + heads[:, None] * stride_oh + dv[None, :], out.to(o_ptr.dtype.element_ty),
             mask=gmask[:, None] & dvmask[None, :])


@triton.jit(do_not_specialize=["NUM_SPLITS"])
def _decode_merge_kernel(
    part_o_ptr, part_lse_ptr, o_ptr, seqlens_ptr, stride_ob, stride_oh, Hq, DV, NUM_SPLITS,
    BLOCK_S: tl.constexpr, BLOCK_DV: tl.constexpr, BLOCK_N: tl.constexpr, PDL_WAIT: tl.constexpr = False,
):
    """Program ``(sequence, query head)``: the used splits' partials (:func:`_splits_used`) merged by their
    log-sum-exp; the splits past the sequence's end stored nothing and are not read. ``PDL_WAIT``: launched as a
    programmatic dependent of the split kernel; it waits for that grid's completion before reading."""
    if PDL_WAIT:
        tl.extra.cuda.gdc_wait()
    b = tl.program_id(0).to(tl.int64)
    h = tl.program_id(1)
    s = tl.arange(0, BLOCK_S)
    dv = tl.arange(0, BLOCK_DV)
    smask = s < _splits_used(tl.load(seqlens_ptr + b), NUM_SPLITS, BLOCK_N)
    row = (b * Hq + h) * NUM_SPLITS + s
    lse = tl.load(part_lse_ptr + row, mask=smask, other=float("-inf"))
    m = tl.max(lse, axis=0)
    m_safe = tl.where(m == float("-inf"), 0.0, m)
    w = tl.exp(lse - m_safe)
    tot = tl.sum(w, axis=0)
    o = tl.load(part_o_ptr + row[:, None] * DV + dv[None, :], mask=smask[:, None] & (dv < DV)[None, :], other=0.0)
    out = tl.sum(w[:, None] * o, axis=0) / tl.where(tot == 0.0, 1.0, tot)
    tl.store(o_ptr + b * stride_ob + h * stride_oh + dv, out.to(o_ptr.dtype.element_ty), mask=dv < DV)


def decode_num_splits(batch: int, num_kv_heads: int, max_seqlen_kv: int, block_n: int, sms: int) -> int:
    """Splits of the context per (sequence, KV head); the kernel divides each sequence's own length among them
    (in whole key blocks). With two or more (sequence, KV head) programs per SM the context is not split
    (the merge pass would cost more than it gains); with one to two per SM, two splits (the second wave would
    otherwise run half empty: B32 x 8 KV heads on 132 SMs, 1.11x faster at ctx 8192 on the H200); below that,
    about four programs per SM, never less than one key block per split (H200 sweep,
    tools/tune_norm_decode_gpu.py). A CUDA graph passes its capacity as ``max_seqlen_kv``; two programs per SM
    there (33 splits at batch 1, 8 KV heads, captured for 8192) took 6.25 / 7.18 / 12.55 us at contexts of 384 /
    2048 / 8192 against 64 splits' 6.35 / 7.59 / 11.01 (H200, 2026-12-03 fifth session), and was not kept."""
    n_blocks = max(1, cdiv(max_seqlen_kv, block_n))
    programs = max(batch * num_kv_heads, 1)
    if programs >= 2 * sms:
        want = 1
    elif programs >= sms:
        want = 2
    else:
        want = cdiv(4 * sms, programs)
    return max(1, min(want, n_blocks, 64))


def paged_decode_fwd(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
    seqlens_kv: torch.Tensor, max_seqlen_kv: int, layout: str, scale: float | None = None,
    window: int | None = None, softcap: float | None = None, alibi_slopes: torch.Tensor | None = None,
    num_splits: int | None = None, tune: tuple[int, int, int] | None = None, merge_pass: bool = False,
    heads_first: bool | None = None, page_loop: bool | None = None, merge_pdl: bool | None = None,
) -> torch.Tensor:
    """Decode attention: ``q [B, Hq, D]`` over paged K/V -> ``[B, Hq, Dv]`` in q.dtype.

    ``num_splits`` and ``tune`` (BLOCK_N, num_warps, num_stages) override the heuristics, ``merge_pass`` merges
    the splits in a second launch even where the last split program would (benchmark sweeps); the second launch
    is also taken above :data:`MERGE_INLINE_MAX_SPLITS` splits and when the arrival counters would have to be
    allocated during CUDA-graph capture. ``heads_first`` orders the grid (KV head, sequence, split) instead of
    (sequence, KV head, split) (sweeps; default :data:`DECODE_HEADS_FIRST`). ``page_loop`` and
    ``merge_pdl`` override :data:`DECODE_PAGE_LOOP` and :data:`DECODE_MERGE_PDL` (sweeps); the page loop runs only
    where the page size is a multiple of the key block, PDL only where :func:`programmatic_launch` allows it."""
    B, Hq, D = q.shape
    kb, ks, kh, page = kv_strides(key_cache, layout)
    vb, vs, vh, _ = kv_strides(value_cache, layout)
    Hkv = key_cache.shape[2] if layout == "NHD" else key_cache.shape[1]
    DV = value_cache.shape[-1]
    out = torch.empty((B, Hq, DV), dtype=q.dtype, device=q.device)
    if B == 0:
        return out
    G = Hq // Hkv
    q = q if q.stride(-1) == 1 else q.contiguous()
    interp = interpreting()
    wide = max(D, DV) > 128
    block_n = 64 if interp else (32 if wide else 64)
    sms = num_sms(q.device)
    splits = decode_num_splits(B, Hkv, max_seqlen_kv, block_n, sms) if num_splits is None else max(1, num_splits)
    # many short splits (small batches): a shallower pipeline starts sooner (H200 sweep)
    warps, stages = (8, 2) if wide else (4, 2 if splits >= 16 else 3)
    if tune is not None:
        block_n, warps, stages = tune
    block_g = max(16, next_pow2(G))
    block_dv = next_pow2(DV)
    cnt = None
    if splits > 1:
        part_o = torch.empty((B, Hq, splits, DV), dtype=torch.float32, device=q.device)
        part_lse = torch.empty((B, Hq, splits), dtype=torch.float32, device=q.device)
        inline = not merge_pass and splits <= MERGE_INLINE_MAX_SPLITS
        cnt = arrival_counters(q.device, B * Hkv) if inline else None
    else:
        part_o = part_lse = out
    merge_g = next_pow2(G)
    merge_s = max(1, min(next_pow2(splits), MERGE_TILE // (merge_g * block_dv)))
    heads_first = DECODE_HEADS_FIRST if heads_first is None else heads_first
    paged_blocks = (DECODE_PAGE_LOOP if page_loop is None else page_loop) and page % block_n == 0
    pdl = (DECODE_MERGE_PDL if merge_pdl is None else merge_pdl) and splits > 1 and cnt is None \
        and programmatic_launch(q.device)
    _decode_split_kernel[(Hkv, B, splits) if heads_first else (B, Hkv, splits)](
        q, key_cache, value_cache, block_table, seqlens_kv,
        alibi_slopes if alibi_slopes is not None else q,
        out, part_o, part_lse, cnt if cnt is not None else part_lse,
        q.stride(0), q.stride(1), kb, ks, kh, vb, vs, vh,
        block_table.stride(0), out.stride(0), out.stride(1),
        float(scale if scale is not None else 1.0 / math.sqrt(D)),
        float(softcap or 1.0), int(window or 0),
        G, Hq, splits,
        PAGE=page, D=D, DV=DV, DIRECT=splits == 1, MERGE=cnt is not None, HEADS_FIRST=heads_first,
        BLOCK_G=block_g, BLOCK_N=block_n,
        BLOCK_D=next_pow2(D), BLOCK_DV=block_dv, MERGE_G=merge_g, MERGE_S=merge_s,
        USE_SOFTCAP=softcap is not None, USE_ALIBI=alibi_slopes is not None, USE_WINDOW=window is not None,
        DOT_PREC=dot_precision(q.dtype), PAGE_LOOP=paged_blocks, PDL_TRIGGER=pdl,
        num_warps=warps, num_stages=stages,
    )
    if splits > 1 and cnt is None:
        _decode_merge_kernel[(B, Hq)](
            part_o, part_lse, out, seqlens_kv, out.stride(0), out.stride(1), Hq, DV, splits,
            BLOCK_S=next_pow2(splits), BLOCK_DV=block_dv, BLOCK_N=block_n, PDL_WAIT=pdl, num_warps=4,
            **({"launch_pdl": True} if pdl else {}),
        )
    return out


# ============================================================================ prefill


@triton.jit
def _prefill_inner(
    acc, l_i, m_i, q, pos, slope, lo, hi, kv_len, kv_start,
    k_base, v_base, bt_row, stride_kb, stride_ks, stride_vb, stride_vs,
    scale, softcap, window, PAGE: tl.constexpr, D: tl.constexpr, DV: tl.constexpr,
    MASK: tl.constexpr, CAUSAL: tl.constexpr, PAGED: tl.constexpr,
    USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr, USE_WINDOW: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr, DOT_PREC: tl.constexpr,
):
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    dmask = d < D
    dvmask = dv < DV
    for n0 in range(lo, hi, BLOCK_N):
        offs = n0 + tl.arange(0, BLOCK_N)
        nmask = offs < kv_len
        if PAGED:
            if PAGE % BLOCK_N == 0:  # the whole key block sits in one page: one table read
                page = tl.load(bt_row + n0 // PAGE).to(tl.int64)
            else:
                page = tl.load(bt_row + offs // PAGE, mask=nmask, other=0).to(tl.int64)
            krow = page * stride_kb + (offs % PAGE) * stride_ks
            vrow = page * stride_vb + (offs % PAGE) * stride_vs
        else:
            krow = (kv_start + offs).to(tl.int64) * stride_kb
            vrow = (kv_start + offs).to(tl.int64) * stride_vb
        if MASK:
            k = tl.load(k_base + krow[:, None] + d[None, :], mask=nmask[:, None] & dmask[None, :], other=0.0)
        else:
            k = tl.load(k_base + krow[:, None] + d[None, :], mask=dmask[None, :], other=0.0)
        s = tl.dot(q, tl.trans(k), input_precision=DOT_PREC)
        s = _transform_scores(s, scale, softcap, slope, (offs[None, :] - pos[:, None]).to(tl.float32),
                              USE_SOFTCAP, USE_ALIBI)
        if MASK:
            valid = nmask[None, :]
            if CAUSAL:
                valid = valid & (offs[None, :] <= pos[:, None])
            if USE_WINDOW:
                valid = valid & (offs[None, :] > pos[:, None] - window)
            s = tl.where(valid, s, float("-inf"))
        p, m_i, l_i, acc = _online_softmax_step(s, m_i, l_i, acc)
        if MASK:
            v = tl.load(v_base + vrow[:, None] + dv[None, :], mask=nmask[:, None] & dvmask[None, :], other=0.0)
        else:
            v = tl.load(v_base + vrow[:, None] + dv[None, :], mask=dvmask[None, :], other=0.0)
        acc += tl.dot(p.to(v.dtype), v, input_precision=DOT_PREC)
    return acc, l_i, m_i


@triton.jit(do_not_specialize=["stride_bt", "NUM_M_BLOCKS"])
def _prefill_kernel(
    q_ptr, k_ptr, v_ptr, o_ptr, cu_q_ptr, seqlens_ptr, bt_ptr, slopes_ptr,
    stride_qt, stride_qh, stride_kb, stride_ks, stride_kh, stride_vb, stride_vs, stride_vh,
    stride_ot, stride_oh, stride_bt,
    scale, softcap, window, G, NUM_M_BLOCKS,
    PAGE: tl.constexpr, D: tl.constexpr, DV: tl.constexpr, PAGED: tl.constexpr, CAUSAL: tl.constexpr,
    USE_SOFTCAP: tl.constexpr, USE_ALIBI: tl.constexpr, USE_WINDOW: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    mb = NUM_M_BLOCKS - 1 - tl.program_id(0)  # heaviest (last) causal blocks first
    b = tl.program_id(1).to(tl.int64)
    h = tl.program_id(2)
    q_start = tl.load(cu_q_ptr + b)
    q_len = tl.load(cu_q_ptr + b + 1) - q_start
    m0 = mb * BLOCK_M
    if m0 >= q_len:
        return
    if PAGED:
        kv_len = tl.load(seqlens_ptr + b)
        kv_start = 0
    else:
        kv_len = q_len
        kv_start = q_start
    hist = kv_len - q_len
    kvh = h // G

    rows = m0 + tl.arange(0, BLOCK_M)
    rmask = rows < q_len
    pos = hist + rows
    d = tl.arange(0, BLOCK_D)
    dv = tl.arange(0, BLOCK_DV)
    q = tl.load(q_ptr + (q_start + rows).to(tl.int64)[:, None] * stride_qt + h * stride_qh + d[None, :],
                mask=rmask[:, None] & (d < D)[None, :], other=0.0)
    slope = 0.0
    if USE_ALIBI:
        slope = tl.load(slopes_ptr + h)

    if CAUSAL:
        hi = tl.minimum(hist + m0 + BLOCK_M, kv_len)
        full_end = (tl.minimum(hist + m0 + 1, kv_len) // BLOCK_N) * BLOCK_N
    else:
        hi = kv_len
        full_end = (kv_len // BLOCK_N) * BLOCK_N
    lo = 0
    if USE_WINDOW:
        lo = (tl.maximum(hist + m0 - window + 1, 0) // BLOCK_N) * BLOCK_N
        full_end = lo

    m_i = tl.full([BLOCK_M], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    k_base = k_ptr + kvh * stride_kh
    v_base = v_ptr + kvh * stride_vh
    bt_row = bt_ptr + b * stride_bt
    acc, l_i, m_i = _prefill_inner(
        acc, l_i, m_i, q, pos, slope, lo, full_end, kv_len, kv_start,
        k_base, v_base, bt_row, stride_kb, stride_ks, stride_vb, stride_vs,
        scale, softcap, window, PAGE, D, DV,
        False, CAUSAL, PAGED, USE_SOFTCAP, USE_ALIBI, USE_WINDOW, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_PREC,
    )
    acc, l_i, m_i = _prefill_inner(
        acc, l_i, m_i, q, pos, slope, full_end, hi, kv_len, kv_start,
        k_base, v_base, bt_row, stride_kb, stride_ks, stride_vb, stride_vs,
        scale, softcap, window, PAGE, D, DV,
        True, CAUSAL, PAGED, USE_SOFTCAP, USE_ALIBI, USE_WINDOW, BLOCK_N, BLOCK_D, BLOCK_DV, DOT_PREC,
    )
    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    tl.store(o_ptr + (q_start + rows).to(tl.int64)[:, None] * stride_ot + h * stride_oh + dv[None, :],
             out.to(o_ptr.dtype.element_ty), mask=rmask[:, None] & (dv < DV)[None, :])


def _prefill_config(d: int, dtype: torch.dtype) -> tuple[int, int, int, int]:
    """(BLOCK_M, BLOCK_N, num_warps, num_stages), sized for Hopper-class shared memory."""
    if interpreting():
        return 32, 64, 4, 1  # few, large blocks: per-op Python overhead dominates
    if dtype == torch.float32:
        return (64, 32, 4, 2) if d <= 128 else (32, 32, 4, 1)
    if d <= 64:
        return 128, 64, 4, 3
    if d <= 128:
        return 128, 64, 8, 3
    return 64, 32, 4, 2


def prefill_fwd(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, max_seqlen_q: int,
    causal: bool = True, scale: float | None = None, window: int | None = None, softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None,
    block_table: torch.Tensor | None = None, seqlens_kv: torch.Tensor | None = None, layout: str = "NHD",
) -> torch.Tensor:
    """Varlen prefill attention ``q [T, Hq, D]`` -> ``[T, Hq, Dv]``.

    Without ``block_table``, ``k [T, Hkv, D]`` / ``v [T, Hkv, Dv]`` are the packed new tokens;
    with it, ``k`` / ``v`` are the paged caches in ``layout`` and ``seqlens_kv [B]`` the context.
    """
    T, Hq, D = q.shape
    paged = block_table is not None
    if paged:
        kb, ks, kh, page = kv_strides(k, layout)
        vb, vs, vh, _ = kv_strides(v, layout)
        Hkv = k.shape[2] if layout == "NHD" else k.shape[1]
    else:
        k = k if k.stride(-1) == 1 else k.contiguous()
        v = v if v.stride(-1) == 1 else v.contiguous()
        kb, ks, kh, page = k.stride(0), 0, k.stride(1), 1
        vb, vs, vh = v.stride(0), 0, v.stride(1)
        Hkv = k.shape[1]
    DV = v.shape[-1]
    out = torch.empty((T, Hq, DV), dtype=q.dtype, device=q.device)
    B = cu_seqlens_q.shape[0] - 1
    if T == 0 or B == 0 or max_seqlen_q <= 0:
        return out
    q = q if q.stride(-1) == 1 else q.contiguous()
    block_m, block_n, warps, stages = _prefill_config(max(D, DV), q.dtype)
    n_m = cdiv(max_seqlen_q, block_m)
    _prefill_kernel[(n_m, B, Hq)](
        q, k, v, out, cu_seqlens_q,
        seqlens_kv if paged else cu_seqlens_q, block_table if paged else cu_seqlens_q,
        alibi_slopes if alibi_slopes is not None else q,
        q.stride(0), q.stride(1), kb, ks, kh, vb, vs, vh,
        out.stride(0), out.stride(1), block_table.stride(0) if paged else 0,
        float(scale if scale is not None else 1.0 / math.sqrt(D)),
        float(softcap or 1.0), int(window or 0), Hq // Hkv, n_m,
        PAGE=page, D=D, DV=DV, PAGED=paged, CAUSAL=causal,
        USE_SOFTCAP=softcap is not None, USE_ALIBI=alibi_slopes is not None, USE_WINDOW=window is not None,
        BLOCK_M=block_m, BLOCK_N=block_n, BLOCK_D=next_pow2(D), BLOCK_DV=next_pow2(DV),
        DOT_PREC=dot_precision(q.dtype), num_warps=warps, num_stages=stages,
    )
    return out
