"""Quantised GEMMs: W8A8 (int8 x int8 -> int32, scaled epilogue) and W4A16 (AWQ-style, dequant in the K loop).

W4A16 layout (produced once at load time by :func:`awq_prepare`): the canonical AWQ
``qweight int32 [IN, OUT/8]`` has its nibbles in AWQ order (nibble i holds column
``8c + AWQ_ORDER[i]``); we repack so nibble i holds column ``8c + i``, which makes the
in-kernel unpack a plain shift by ``4 * (col % 8)``. ``qzeros`` is repacked the same way;
``scales [IN/g, OUT]`` is kept.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import interpreting, num_sms

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)


def _gemm_config(M: int, int8: bool) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages), skinny tiles for decode-sized M."""
    if interpreting():
        return 16, 64, 64, 4, 1  # few, large blocks: per-op Python overhead dominates
    bk = 128 if int8 else 64
    if M <= 16:
        return 16, 64, bk, 4, 4
    if M <= 64:
        return 64, 64, bk, 4, 4
    return 128, 128, bk, 8, 3


@triton.jit
def _w8a8_kernel(
    a_ptr, b_ptr, o_ptr, as_ptr, bs_ptr, bias_ptr, M, N, K,
    stride_am, stride_bn, stride_om,
    HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mmask = offs_m < M
    nmask = offs_n < N
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + offs_k[None, :]
    b_ptrs = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=mmask[:, None] & kmask[None, :], other=0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    sa = tl.load(as_ptr + offs_m, mask=mmask, other=0.0)
    sb = tl.load(bs_ptr + offs_n, mask=nmask, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(o_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def linear_w8a8_fwd(
    x_q: torch.Tensor, w_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype,
) -> torch.Tensor:
    """``(x_q [..., IN] @ w_q [OUT, IN]^T) * x_scale[..., None] * w_scale (+ bias)`` -> ``[..., OUT]``."""
    K = x_q.shape[-1]
    N = w_q.shape[0]
    lead = x_q.shape[:-1]
    a = x_q.reshape(-1, K).contiguous()
    M = a.shape[0]
    w = w_q.contiguous()
    sa = x_scale.reshape(-1).contiguous()
    out = torch.empty((M, N), dtype=out_dtype, device=x_q.device)
    if M > 0 and N > 0:
        bm, bn, bk, warps, stages = _gemm_config(M, True)
        _w8a8_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn))](
            a, w, out, sa, w_scale.contiguous(), bias if bias is not None else sa, M, N, K,
            a.stride(0), w.stride(0), out.stride(0),
            HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps, num_stages=stages,
        )
    return out.view(*lead, N)


# ----------------------------------------------------------------------------- W4A16


def _reorder_nibbles(packed: torch.Tensor) -> torch.Tensor:
    """AWQ nibble order -> natural order (nibble i holds column 8c + i)."""
    p = packed.to(torch.int32)
    out = torch.zeros_like(p)
    for i, col in enumerate(AWQ_ORDER):
        out |= ((p >> (4 * i)) & 0xF) << (4 * col)
    return out


def awq_prepare(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load-time conversion of a canonical AWQ checkpoint to this backend's natural nibble order."""
    del group_size
    return _reorder_nibbles(qweight).contiguous(), scales.contiguous(), _reorder_nibbles(qzeros).contiguous()


@triton.jit
def _w4a16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, o_ptr, part_ptr, M, N, K, GROUP, K_PER_SPLIT,
    stride_xm, stride_qk, stride_sk, stride_zk, stride_om,
    SPLIT_K: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``BLOCK_K`` divides the group size, so each K step lies in one quantisation group: the
    integer weights ``q - z`` (exact in fp16/bf16) go through the tensor cores and the group's
    per-column scale is applied to the fp32 partial sum, never rounding a dequantised weight.
    Packed words are loaded once each (``[BLOCK_K, BLOCK_N / 8]`` int32) and unpacked in
    registers: nibble i of word c is column ``8c + i`` after :func:`awq_prepare`. With
    ``SPLIT_K > 1`` program ``(m, n, s)`` covers ``K_PER_SPLIT`` rows of K and writes an fp32
    partial tile (decode-sized M needs the extra programs to keep enough loads in flight)."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    pid_k = tl.program_id(2)
    PACK: tl.constexpr = BLOCK_N // 8
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_p = pid_n * PACK + tl.arange(0, PACK)
    offs_k = tl.arange(0, BLOCK_K)
    shifts = (tl.arange(0, 8) * 4)[None, None, :]
    mmask = offs_m < M
    nmask = offs_n < N
    pmask = offs_p < tl.cdiv(N, 8)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    k_lo = pid_k * K_PER_SPLIT
    for k0 in range(k_lo, tl.minimum(k_lo + K_PER_SPLIT, K), BLOCK_K):
        kk = k0 + offs_k
        kmask = kk < K
        x = tl.load(x_ptr + offs_m.to(tl.int64)[:, None] * stride_xm + kk[None, :],
                    mask=mmask[:, None] & kmask[None, :], other=0.0)
        packed = tl.load(qw_ptr + kk.to(tl.int64)[:, None] * stride_qk + offs_p[None, :],
                         mask=kmask[:, None] & pmask[None, :], other=0)
        grp = k0 // GROUP
        zp = tl.load(z_ptr + grp * stride_zk + offs_p, mask=pmask, other=0)
        s = tl.load(s_ptr + grp * stride_sk + offs_n, mask=nmask, other=0.0).to(tl.float32)
        q = tl.reshape((packed[:, :, None] >> shifts) & 0xF, (BLOCK_K, BLOCK_N))
        z = tl.reshape((zp[None, :, None] >> shifts) & 0xF, (1, BLOCK_N))
        part = tl.dot(x, (q - z).to(x.dtype), input_precision=DOT_PREC)
        acc += part * s[None, :]
    omask = mmask[:, None] & nmask[None, :]
    if SPLIT_K > 1:
        tl.store(part_ptr + (pid_k * M + offs_m.to(tl.int64))[:, None] * N + offs_n[None, :], acc, mask=omask)
    else:
        if HAS_BIAS:
            acc += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
        tl.store(o_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
                 acc.to(o_ptr.dtype.element_ty), mask=omask)


def _w4a16_config(M: int) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages): narrow N tiles at decode sizes for more programs."""
    if interpreting():
        return 16, 64, 64, 4, 1
    if M <= 16:
        return 16, 64, 128, 4, 3
    if M <= 64:
        return 64, 64, 128, 4, 3
    return 64, 128, 64, 4, 3


def w4a16_fwd(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
    bias: torch.Tensor | None, group_size: int, split_k: int | None = None,
) -> torch.Tensor:
    """``x [..., IN] @ dequant(W)`` with W from :func:`awq_prepare`'s layout -> ``[..., OUT]``."""
    K = x.shape[-1]
    N = scales.shape[-1]
    lead = x.shape[:-1]
    a = x.reshape(-1, K)
    a = a if a.stride(-1) == 1 else a.contiguous()
    M = a.shape[0]
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.view(*lead, N)
    bm, bn, bk, warps, stages = _w4a16_config(M)
    bk = next((b for b in (bk, 64, 32, 16) if b <= group_size and group_size % b == 0), 0)
    if bk == 0:
        raise NotImplementedError(f"dlinfer.ops.weight_quant_matmul: group_size={group_size} is not supported "
                                  "by 'maca' (needs a multiple of 16)")
    tiles = triton.cdiv(M, bm) * triton.cdiv(N, bn)
    k_iters = triton.cdiv(K, bk)
    if split_k is None:  # about 8 programs per SM, at least 2 K steps each
        split_k = max(1, min(triton.cdiv(8 * num_sms(x.device), tiles), k_iters // 2))
    split_k = max(1, min(split_k, k_iters))
    k_per_split = triton.cdiv(k_iters, split_k) * bk
    split_k = triton.cdiv(K, k_per_split)
    part = torch.empty((split_k, M, N), dtype=torch.float32, device=x.device) if split_k > 1 else out
    _w4a16_kernel[(triton.cdiv(M, bm), triton.cdiv(N, bn), split_k)](
        a, qweight, scales, qzeros, bias if bias is not None else a, out, part, M, N, K, group_size, k_per_split,
        a.stride(0), qweight.stride(0), scales.stride(0), qzeros.stride(0), out.stride(0),
        SPLIT_K=split_k, HAS_BIAS=bias is not None, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk,
        DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32", num_warps=warps, num_stages=stages,
    )
    if split_k > 1:
        acc = part.sum(dim=0)
        if bias is not None:
            acc += bias.float()
        out = acc.to(x.dtype)
    return out.view(*lead, N)
