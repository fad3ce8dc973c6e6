"""Bandwidth-bound elementwise kernels: rotary embedding, SiLU-and-mul, KV-cache fill."""

from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from ._utils import cdiv, next_pow2

# ----------------------------------------------------------------------------- rotary


@triton.jit
def _rope_rows(
    x_row, o_row, c_row, s_row, rmask, HALF,
    BLOCK_HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
):
    """Rotates the first ``2 * HALF`` dims of the ``[BLOCK_H, 1]`` head rows at ``x_row`` into ``o_row``.

    Every element is loaded before any is stored, so ``o_row`` may be ``x_row`` (in place)."""
    i = tl.arange(0, BLOCK_HALF)
    imask = i < HALF
    if INTERLEAVED:
        i1 = 2 * i
        i2 = 2 * i + 1
    else:
        i1 = i
        i2 = i + HALF
    c1 = tl.load(c_row + i1, mask=imask, other=0.0).to(tl.float32)[None, :]
    c2 = tl.load(c_row + i2, mask=imask, other=0.0).to(tl.float32)[None, :]
    s1 = tl.load(s_row + i1, mask=imask, other=0.0).to(tl.float32)[None, :]
    s2 = tl.load(s_row + i2, mask=imask, other=0.0).to(tl.float32)[None, :]
    m = rmask[:, None] & imask[None, :]
    x1 = tl.load(x_row + i1[None, :], mask=m, other=0.0)
    x2 = tl.load(x_row + i2[None, :], mask=m, other=0.0)
    x1f = x1.to(tl.float32)
    x2f = x2.to(tl.float32)
    tl.store(o_row + i1[None, :], (x1f * c1 - x2f * s1).to(x1.dtype), mask=m)
    tl.store(o_row + i2[None, :], (x2f * c2 + x1f * s2).to(x1.dtype), mask=m)


@triton.jit
def _rope_kernel(
    q_ptr, k_ptr, qo_ptr, ko_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh,
    stride_qot, stride_qoh, stride_kot, stride_koh,
    stride_cos, stride_sin,
    Hq, Hkv, HALF, D,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, BLOCK_PASS: tl.constexpr,
    INTERLEAVED: tl.constexpr, HAS_PASS: tl.constexpr,
):
    """Rows ``[hb * BLOCK_H, ...)`` of token ``t`` in the joint head space ``q heads ++ k heads``:
    every program is full whatever Hq / Hkv are, and cos/sin are read once per program."""
    t = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    is_q = rows < Hq
    rmask = rows < Hq + Hkv
    kh = tl.where(is_q, 0, rows - Hq)
    x_row = tl.where(is_q, q_ptr + t * stride_qt + rows * stride_qh, k_ptr + t * stride_kt + kh * stride_kh)
    o_row = tl.where(is_q, qo_ptr + t * stride_qot + rows * stride_qoh, ko_ptr + t * stride_kot + kh * stride_koh)
    x_row = x_row[:, None]
    o_row = o_row[:, None]
    _rope_rows(x_row, o_row, cos_ptr + t * stride_cos, sin_ptr + t * stride_sin, rmask, HALF,
               BLOCK_HALF, INTERLEAVED)
    if HAS_PASS:
        p = 2 * HALF + tl.arange(0, BLOCK_PASS)
        pm = rmask[:, None] & (p < D)[None, :]
        tl.store(o_row + p[None, :], tl.load(x_row + p[None, :], mask=pm), mask=pm)


@triton.jit
def _rope_inplace_kernel(
    q_ptr, k_ptr, cos_ptr, sin_ptr,
    stride_qt, stride_qh, stride_kt, stride_kh, stride_cs,
    Hq, Hkv, HALF,
    BLOCK_H: tl.constexpr, BLOCK_HALF: tl.constexpr, INTERLEAVED: tl.constexpr,
):
    """``_rope_kernel`` writing back where it read: no output pointers, no pass-through copy (dims >= R are
    already in place), one cos/sin stride. q / k may be strided views (e.g. slices of a fused qkv buffer)."""
    t = tl.program_id(0).to(tl.int64)
    rows = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    is_q = rows < Hq
    rmask = rows < Hq + Hkv
    kh = tl.where(is_q, 0, rows - Hq)
    x_row = tl.where(is_q, q_ptr + t * stride_qt + rows * stride_qh, k_ptr + t * stride_kt + kh * stride_kh)
    x_row = x_row[:, None]
    _rope_rows(x_row, x_row, cos_ptr + t * stride_cs, sin_ptr + t * stride_cs, rmask, HALF, BLOCK_HALF,
               INTERLEAVED)


def _unit_last(x: torch.Tensor) -> torch.Tensor:
    return x if x.stride(-1) == 1 else x.contiguous()


@functools.cache
def _rope_block_h(rows: int) -> int:
    """4-16 head rows of D elements per program, chosen to leave the least padding in Hq + Hkv rows."""
    return min((8, 16, 4), key=lambda b: (cdiv(rows, b) * b - rows, -b))


def rotary_fwd(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """q ``[T, Hq, D]`` and k ``[T, Hkv, D]`` rotated by cos/sin ``[T, R]`` in one launch."""
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    R = cos.shape[-1]
    q, k, cos, sin = _unit_last(q), _unit_last(k), _unit_last(cos), _unit_last(sin)
    qo = torch.empty((T, Hq, D), dtype=q.dtype, device=q.device)
    ko = torch.empty((T, Hkv, D), dtype=k.dtype, device=k.device)
    if T == 0:
        return qo, ko
    half = R // 2
    block_half = next_pow2(half)
    block_pass = next_pow2(D - R) if D > R else 1
    rows = Hq + Hkv
    block_h = _rope_block_h(rows)
    grid = (T, cdiv(rows, block_h))
    _rope_kernel[grid](
        q, k, qo, ko, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1),
        qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1),
        cos.stride(0), sin.stride(0),
        Hq, Hkv, half, D,
        BLOCK_H=block_h, BLOCK_HALF=block_half, BLOCK_PASS=block_pass,
        INTERLEAVED=interleaved, HAS_PASS=D > R, num_warps=4,
    )
    return qo, ko


def rotary_inplace(q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, interleaved: bool) -> None:
    """Rotates q ``[T, Hq, D]`` and k ``[T, Hkv, D]`` where they are, in one launch.

    q / k must have a unit last stride (the caller checks); any token / head strides are served. cos and
    sin share one row stride (made contiguous if they do not: [T, R] is small)."""
    T, Hq, _ = q.shape
    if T == 0:
        return
    Hkv = k.shape[1]
    if cos.stride(-1) != 1 or sin.stride(-1) != 1 or cos.stride(0) != sin.stride(0):
        cos, sin = cos.contiguous(), sin.contiguous()
    half = cos.shape[-1] // 2
    rows = Hq + Hkv
    block_h = _rope_block_h(rows)
    _rope_inplace_kernel[(T, cdiv(rows, block_h))](
        q, k, cos, sin,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), cos.stride(0),
        Hq, Hkv, half,
        BLOCK_H=block_h, BLOCK_HALF=next_pow2(half), INTERLEAVED=interleaved, num_warps=4,
    )


# ----------------------------------------------------------------------------- silu_and_mul


@triton.jit
def _silu_and_mul_kernel(x_ptr, o_ptr, stride_x, stride_o, N, BLOCK: tl.constexpr):
    row = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < N
    g = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    u = tl.load(x_ptr + row * stride_x + N + cols, mask=mask, other=0.0)
    gf = g.to(tl.float32)
    y = gf / (1.0 + tl.exp(-gf)) * u.to(tl.float32)
    tl.store(o_ptr + row * stride_o + cols, y.to(g.dtype), mask=mask)


def silu_and_mul_fwd(x: torch.Tensor) -> torch.Tensor:
    """``silu(x[..., :I]) * x[..., I:]`` for ``x [..., 2I]``; computed in fp32."""
    N = x.shape[-1] // 2
    lead = x.shape[:-1]
    x2 = _unit_last(x.reshape(-1, 2 * N))
    M = x2.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M > 0 and N > 0:
        block = min(next_pow2(N), 2048)
        _silu_and_mul_kernel[(M, cdiv(N, block))](
            x2, out, x2.stride(0), out.stride(0), N, BLOCK=block, num_warps=min(max(block // 256, 1), 8)
        )
    return out.view(*lead, N)


# ----------------------------------------------------------------------------- fill_kv_cache


@triton.jit
def _fill_one(src_ptr, dst_ptr, t, blk, off, stride_st, stride_sh, stride_db, stride_ds, stride_dh, H, D,
              BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    h = tl.arange(0, BLOCK_H)
    d = tl.arange(0, BLOCK_D)
    m = (h < H)[:, None] & (d < D)[None, :]
    v = tl.load(src_ptr + t * stride_st + h[:, None] * stride_sh + d[None, :], mask=m)
    tl.store(dst_ptr + blk * stride_db + off * stride_ds + h[:, None] * stride_dh + d[None, :], v, mask=m)


@triton.jit
def _fill_kv_kernel(
    k_ptr, v_ptr, kc_ptr, vc_ptr, slot_ptr,
    stride_kt, stride_kh, stride_vt, stride_vh,
    stride_kcb, stride_kcs, stride_kch, stride_vcb, stride_vcs, stride_vch,
    H, D, DV, BS,
    BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_DV: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + t).to(tl.int64)
    if slot >= 0:
        blk = slot // BS
        off = slot % BS
        _fill_one(k_ptr, kc_ptr, t, blk, off, stride_kt, stride_kh, stride_kcb, stride_kcs, stride_kch, H, D,
                  BLOCK_H, BLOCK_D)
        _fill_one(v_ptr, vc_ptr, t, blk, off, stride_vt, stride_vh, stride_vcb, stride_vcs, stride_vch, H, DV,
                  BLOCK_H, BLOCK_DV)


def kv_strides(cache: torch.Tensor, layout: str) -> tuple[int, int, int, int]:
    """(block, slot-in-block, head) strides and block size of a paged cache in ``layout``."""
    if layout == "NHD":
        return cache.stride(0), cache.stride(1), cache.stride(2), cache.shape[1]
    return cache.stride(0), cache.stride(2), cache.stride(1), cache.shape[2]


def fill_kv_cache_fwd(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    slot_mapping: torch.Tensor, layout: str,
) -> None:
    """Scatter ``key [T, Hkv, D]`` / ``value [T, Hkv, Dv]`` into the paged caches; slot -1 is skipped."""
    T, H, D = key.shape
    DV = value.shape[-1]
    if T == 0:
        return
    key, value = _unit_last(key), _unit_last(value)
    kb, ks, kh, bs = kv_strides(key_cache, layout)
    vb, vs, vh, _ = kv_strides(value_cache, layout)
    block_h, block_d, block_dv = next_pow2(H), next_pow2(D), next_pow2(DV)
    _fill_kv_kernel[(T,)](
        key, value, key_cache, value_cache, slot_mapping,
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        kb, ks, kh, vb, vs, vh,
        H, D, DV, bs,
        BLOCK_H=block_h, BLOCK_D=block_d, BLOCK_DV=block_dv,
        num_warps=min(max(block_h * max(block_d, block_dv) // 512, 1), 8),
    )
