"""Quantised GEMMs: W8A8 (int8 x int8 -> int32, scaled epilogue) and W4A16 (AWQ-style, dequant in the K loop).

W4A16 layout (produced once at load time by :func:`awq_prepare`; only :func:`w4a16_fwd` reads it).
The canonical AWQ ``qweight int32 [IN, OUT/8]`` holds in nibble i of word c the column
``8c + AWQ_ORDER[i]``. We repack the columns in chunks of ``NCHUNK = 128``: in chunk t, nibble
i of word ``16t + c`` holds column ``128t + 16i + c`` (OUT padded with zero columns up to a
multiple of 128). Shifting a loaded ``[BLOCK_K, BLOCK_N/8]`` tile of words by ``4i`` then gives
the weights of 16 contiguous columns per chunk directly, in the loaded register layout, so the
kernel needs no reshape/join (each of the 8 nibble planes is its own ``tl.dot`` into its own
accumulator). ``qzeros [IN/g, OUT/8]`` gets the same permutation; ``scales [IN/g, OUT]`` is kept.
The layout depends on no kernel configuration (any ``BLOCK_N`` that is a multiple of 128 works).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import configs
from ._utils import arrival_counters, cdiv, inline_ptx, interpreting, last_arrival, num_sms
from .configs import W4A16_TABLE, W8A8_TABLE, GemmConfig, pick_config

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
NCHUNK = 128  # W4A16 layout: columns interleaved within chunks of 128 (16 words x 8 nibbles)


@triton.jit
def _group_pid(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Grouped program order (GROUP_M row-tiles share each column tile's weights in L2)."""
    width = GROUP_M * num_n
    first_m = (pid // width) * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (pid % width) % size_m, (pid % width) // size_m


# ----------------------------------------------------------------------------- configs


# GemmConfig, the tables by M and pick_config live in configs.py (no Triton): the plugin declares its prefill
# warm-up sizes from the same bounds. M and the split count change from step to step and are not specialised
# on (do_not_specialize), so one M per bucket end compiles what every M of the bucket runs.
_INTERP = GemmConfig(16, 128, 32, 4, 1, 0, 1, 0, 8, 1)  # interpreter: few, large blocks (Python overhead per op)


def _auto_split(tiles: int, k_iters: int, device: torch.device, num_warps: int, M: int, K: int,
                whole_waves: bool = False, programs_per_sm: int = 0) -> int:
    """Split K until the programs fill the SMs' slots (``programs_per_sm`` each; 0: 16 warps' worth), keeping at
    least 2 K steps per program and the fp32 partials (``split * M`` values per column) small against the weights
    (K values per column). ``whole_waves`` (``GemmConfig.split_k == -1``): at most as many programs as slots, so
    that no second, nearly empty wave follows (the default rounds up: 5 x 112 tiles = 560 programs on 528 slots)."""
    slots = num_sms(device) * (programs_per_sm if programs_per_sm > 0 else max(1, 16 // num_warps))
    fill = slots // tiles if whole_waves else cdiv(slots, tiles)
    return max(1, min(fill, k_iters // 2, K // (16 * M)))


def _split_count(split_k: int | None, cfg: GemmConfig, tiles: int, k_iters: int, device: torch.device, M: int,
                 K: int) -> int:
    """The split count a quantised GEMM launch asks for: the caller's, the config's, or the automatic one (0: fill
    the SMs, rounding up; -1: whole waves)."""
    if (split_k is not None and split_k < 0) or cfg.split_k < -1:
        raise ValueError(f"quantised GEMM: split_k must be >= 1 (caller) or -1 / 0 / >= 1 (config), got "
                         f"{split_k if split_k is not None and split_k < 0 else cfg.split_k}")
    if cfg.programs_per_sm < 0:
        raise ValueError(f"quantised GEMM: programs_per_sm must be >= 0 (0: 16 warps per SM), got "
                         f"{cfg.programs_per_sm}")
    if split_k:
        return split_k
    if cfg.split_k > 0:
        return cfg.split_k
    return _auto_split(tiles, k_iters, device, cfg.num_warps, M, K, whole_waves=cfg.split_k == -1,
                       programs_per_sm=cfg.programs_per_sm)


# ----------------------------------------------------------------------------- W8A8


@triton.jit(do_not_specialize=["M", "n_split"])
def _w8a8_kernel(
    a_ptr, b_ptr, o_ptr, as_ptr, bs_ptr, bias_ptr, ws_ptr, cnt_ptr, M, N, K, K_PER_SPLIT, n_split,
    stride_am, stride_bn, stride_om,
    SPLIT: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
):
    """Program ``(tile, s)`` covers ``K_PER_SPLIT`` of K for one output tile; with ``n_split > 1``
    it stores an int32 partial to ``ws [SPLIT_K, M, N]`` and (REDUCE=1) the last program of the
    tile sums them (exact in int32) and applies the scales."""
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _group_pid(tile, num_m, num_n, GROUP_M)
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    mmask = offs_m < M
    nmask = offs_n < N
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    a_ptrs = a_ptr + offs_m.to(tl.int64)[:, None] * stride_am + (k_lo + offs_k)[None, :]
    b_ptrs = b_ptr + offs_n.to(tl.int64)[None, :] * stride_bn + (k_lo + offs_k)[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kmask = (k0 + offs_k) < k_hi
        a = tl.load(a_ptrs, mask=mmask[:, None] & kmask[None, :], other=0)
        b = tl.load(b_ptrs, mask=kmask[:, None] & nmask[None, :], other=0)
        acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        a_ptrs += BLOCK_K
        b_ptrs += BLOCK_K
    omask = mmask[:, None] & nmask[None, :]
    mn = offs_m.to(tl.int64)[:, None] * N + offs_n[None, :]
    if not SPLIT:
        _w8_epilogue(acc, o_ptr, as_ptr, bs_ptr, bias_ptr, offs_m, offs_n, mmask, nmask, stride_om, HAS_BIAS)
    else:
        tl.store(ws_ptr + pid_k * M * N + mn, acc, mask=omask)
        if REDUCE == 1:  # noqa: SIM102 - constexpr, then a runtime branch
            if last_arrival(cnt_ptr, tile, n_split):
                acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int32)
                for s in range(n_split):
                    acc += tl.load(ws_ptr + s * M * N + mn, mask=omask, other=0, cache_modifier=".cg")
                _w8_epilogue(acc, o_ptr, as_ptr, bs_ptr, bias_ptr, offs_m, offs_n, mmask, nmask, stride_om,
                             HAS_BIAS)


@triton.jit
def _w8_epilogue(acc, o_ptr, as_ptr, bs_ptr, bias_ptr, offs_m, offs_n, mmask, nmask, stride_om,
                 HAS_BIAS: tl.constexpr):
    sa = tl.load(as_ptr + offs_m, mask=mmask, other=0.0)
    sb = tl.load(bs_ptr + offs_n, mask=nmask, other=0.0)
    out = acc.to(tl.float32) * sa[:, None] * sb[None, :]
    if HAS_BIAS:
        out += tl.load(bias_ptr + offs_n, mask=nmask, other=0.0).to(tl.float32)[None, :]
    tl.store(o_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
             out.to(o_ptr.dtype.element_ty), mask=mmask[:, None] & nmask[None, :])


def linear_w8a8_fwd(
    x_q: torch.Tensor, w_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
    bias: torch.Tensor | None, out_dtype: torch.dtype, config: GemmConfig | None = None,
) -> torch.Tensor:
    """``(x_q [..., IN] @ w_q [OUT, IN]^T) * x_scale[..., None] * w_scale (+ bias)`` -> ``[..., OUT]``.
    ``config`` overrides the table (sweeps)."""
    K = x_q.shape[-1]
    N = w_q.shape[0]
    lead = x_q.shape[:-1]
    a = x_q.reshape(-1, K).contiguous()
    M = a.shape[0]
    w = w_q.contiguous()
    sa = x_scale.reshape(-1).contiguous()
    out = torch.empty((M, N), dtype=out_dtype, device=x_q.device)
    if M == 0 or N == 0:
        return out.view(*lead, N)
    cfg = config or (_INTERP._replace(block_k=64) if interpreting() else pick_config(W8A8_TABLE, M))
    tiles = cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n)
    k_iters = cdiv(K, cfg.block_k)
    split = _split_count(None, cfg, tiles, k_iters, x_q.device, M, K)
    split = max(1, min(split, k_iters))
    k_per_split = cdiv(k_iters, split) * cfg.block_k
    split = cdiv(K, k_per_split)
    ws = torch.empty((split, M, N), dtype=torch.int32, device=x_q.device) if split > 1 else out
    cnt = arrival_counters(x_q.device, tiles) if split > 1 and cfg.reduce == 1 else None
    reduce = int(cnt is not None)
    _w8a8_kernel[(tiles, split)](
        a, w, out, sa, w_scale.contiguous(), bias if bias is not None else sa, ws, ws if cnt is None else cnt,
        M, N, K, k_per_split, split,
        a.stride(0), w.stride(0), out.stride(0),
        SPLIT=split > 1, REDUCE=reduce, HAS_BIAS=bias is not None, BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n,
        BLOCK_K=cfg.block_k, GROUP_M=cfg.group_m, num_warps=cfg.num_warps, num_stages=cfg.num_stages,
    )
    if split > 1 and not reduce:
        acc = ws.sum(dim=0, dtype=torch.int32).float() * sa[:, None] * w_scale.float()
        if bias is not None:
            acc += bias.float()
        out = acc.to(out_dtype)
    return out.view(*lead, N)


# ----------------------------------------------------------------------------- W4A16


def _awq_unpack(packed: torch.Tensor) -> torch.Tensor:
    """AWQ int32 [R, C/8] -> uint8 values [R, C] in 0..15 (column order)."""
    p = packed.to(torch.int32)
    vals = torch.empty(*p.shape, 8, dtype=torch.uint8, device=p.device)
    for i, col in enumerate(AWQ_ORDER):
        vals[..., col] = ((p >> (4 * i)) & 0xF).to(torch.uint8)
    return vals.flatten(-2)


def _chunk_pack(vals: torch.Tensor) -> torch.Tensor:
    """uint8 values [R, N] -> int32 [R, ceil(N/128)*16]: nibble i of word 16t + c holds column 128t + 16i + c
    (int32 shifts wrap into the sign bit, which is the intended bit pattern)."""
    R, N = vals.shape
    n_pad = cdiv(N, NCHUNK) * NCHUNK
    v = torch.zeros(R, n_pad, dtype=torch.uint8, device=vals.device)
    v[:, :N] = vals
    v = v.view(R, n_pad // NCHUNK, 8, NCHUNK // 8)  # [r, t, i, c]
    packed = torch.zeros(R, n_pad // NCHUNK, NCHUNK // 8, dtype=torch.int32, device=vals.device)
    for i in range(8):
        packed |= v[:, :, i, :].to(torch.int32) << (4 * i)
    return packed.view(R, n_pad // 8)


def _check_group(op: str, group_size: int) -> None:
    """Each K step of the W4A16 kernels lies in one quantisation group: blocks of 16 rows at least."""
    if group_size % 16 != 0 or group_size <= 0:
        raise NotImplementedError(f"dlinfer.ops.{op}: group_size={group_size} is not supported by 'maca' "
                                  "(needs a positive multiple of 16)")


def awq_prepare(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load-time conversion of a canonical AWQ checkpoint (see the module docstring) to the chunked layout:
    qweight int32 [IN, ceil(OUT/128)*16], scales [IN/g, OUT] (kept), qzeros int32 [IN/g, ceil(OUT/128)*16].
    Refuses a group size the kernels cannot serve here, at weight load (engine build), not at the first matmul."""
    _check_group("weight_quant_prepare", group_size)
    arrival_counters(qweight.device, 0)  # outside any graph capture
    N = scales.shape[-1]
    qw = _chunk_pack(_awq_unpack(qweight)[:, :N])
    qz = _chunk_pack(_awq_unpack(qzeros)[:, :N])
    return qw, scales.contiguous(), qz


@triton.jit
def _w4_weights(p, zw, P: tl.constexpr, UNPACK: tl.constexpr, dtype: tl.constexpr):
    """Nibble plane P of the packed tile as ``q - z`` (small integers, exact) in ``dtype``."""
    q = (p >> (4 * P)) & 0xF
    z = ((zw >> (4 * P)) & 0xF)[None, :]
    if UNPACK == 1:  # 16-bit float with the nibble in its low mantissa bits: (magic + q) - (magic + z) exactly
        if dtype == tl.bfloat16:
            MAGIC: tl.constexpr = 0x4300  # 128.0
        else:
            MAGIC: tl.constexpr = 0x6400  # 1024.0
        wq = (q | MAGIC).to(tl.int16).to(dtype, bitcast=True)
        wz = (z | MAGIC).to(tl.int16).to(dtype, bitcast=True)
        return wq - wz
    else:
        return (q - z).to(dtype)


@triton.jit
def _nibble_pairs(word, TOP: tl.constexpr, MAGIC: tl.constexpr, dtype: tl.constexpr, ASM: tl.constexpr):
    """Two nibbles of each int32 in one ``LOP3`` (``(word & mask) | MAGIC``): bits 0-3 (``TOP``: 4-7) of each
    16-bit half land in the low mantissa bits of the 16-bit float MAGIC, returned as (low half, high half).
    ``ASM`` False: the same bits with Triton integer ops (the interpreter runs no inline PTX)."""
    mask = tl.full(word.shape, 0x00F000F0 if TOP else 0x000F000F, tl.int32)
    magic = tl.full(word.shape, MAGIC, tl.int32)
    if not ASM:
        bits = (word & mask) | magic
        return (bits.to(tl.int16).to(dtype, bitcast=True), (bits >> 16).to(tl.int16).to(dtype, bitcast=True))
    asm: tl.constexpr = "{ .reg .b32 t; lop3.b32 t, $2, $3, $4, 0xea; mov.b32 {$0, $1}, t; }"  # (a & b) | c
    if dtype == tl.float16:
        return tl.inline_asm_elementwise(asm, "=h,=h,r,r,r", [word, mask, magic], dtype=(tl.float16, tl.float16),
                                         is_pure=True, pack=1)
    else:
        return tl.inline_asm_elementwise(asm, "=h,=h,r,r,r", [word, mask, magic],
                                         dtype=(tl.bfloat16, tl.bfloat16), is_pure=True, pack=1)


@triton.jit
def _w4_joined_magic(p, dtype: tl.constexpr, ASM: tl.constexpr):
    """``[R, W]`` packed words -> ``[R, 8 W]`` 16-bit floats, column ``8 j + t`` = plane ``t // 2 + 4 (t % 2)`` of
    word j, two nibbles per ``LOP3`` (``UNPACK`` 2; inline PTX on a GPU). fp16: MAGIC + q for the even planes
    (bits 0-3 of a half) and MAGIC + 16 q for the odd ones (bits 4-7; exact below 2048), the upper byte by one
    shift; bf16 (7 mantissa bits): bits 0-3 only, one shift per pair. Subtracting the zeros' tile gives q - z
    (even planes) and 16 (q - z) (odd planes, fp16) exactly."""
    R: tl.constexpr = p.shape[0]
    W: tl.constexpr = p.shape[1]
    if dtype == tl.float16:
        MAGIC: tl.constexpr = 0x64006400
        p8 = p >> 8
        q0, q4 = _nibble_pairs(p, False, MAGIC, dtype, ASM)
        q1, q5 = _nibble_pairs(p, True, MAGIC, dtype, ASM)
        q2, q6 = _nibble_pairs(p8, False, MAGIC, dtype, ASM)
        q3, q7 = _nibble_pairs(p8, True, MAGIC, dtype, ASM)
    else:
        MAGIC: tl.constexpr = 0x43004300
        q0, q4 = _nibble_pairs(p, False, MAGIC, dtype, ASM)
        q1, q5 = _nibble_pairs(p >> 4, False, MAGIC, dtype, ASM)
        q2, q6 = _nibble_pairs(p >> 8, False, MAGIC, dtype, ASM)
        q3, q7 = _nibble_pairs(p >> 12, False, MAGIC, dtype, ASM)
    # the two halves of each LOP3 result end up in adjacent columns (the last join is lows, highs), so the f16x2
    # registers become MMA operand pairs without byte permutes: column 8 j + t holds plane t // 2 + 4 (t % 2)
    joined = tl.join(tl.join(tl.join(q0, q2), tl.join(q1, q3)), tl.join(tl.join(q4, q6), tl.join(q5, q7)))
    return tl.reshape(joined, (R, W * 8))


@triton.jit
def _w4_plane(acc, x, p, zw, s_ptrs, cols, N, P: tl.constexpr, UNPACK: tl.constexpr, DOT_PREC: tl.constexpr):
    """Accumulate nibble plane P: ``acc += (x @ (q_P - z_P)) * s_P`` for the plane's ``[BLOCK_N/8]`` columns."""
    w = _w4_weights(p, zw, P, UNPACK, x.dtype)
    s = tl.load(s_ptrs + 16 * P, mask=(cols + 16 * P) < N, other=0.0).to(tl.float32)
    return acc + tl.dot(x, w, input_precision=DOT_PREC) * s[None, :]


@triton.jit
def _w4_store(acc, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, P: tl.constexpr, HAS_BIAS: tl.constexpr):
    c = cols + 16 * P
    cmask = c < N
    if HAS_BIAS:
        acc += tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)[None, :]
    tl.store(o_ptr + rows[:, None] * stride_om + c[None, :], acc.to(o_ptr.dtype.element_ty),
             mask=mmask[:, None] & cmask[None, :])


@triton.jit
def _w4_partial(acc, ws_ptr, rows, mmask, cols, N, P: tl.constexpr):
    c = cols + 16 * P
    tl.store(ws_ptr + rows[:, None] * N + c[None, :], acc, mask=mmask[:, None] & (c < N)[None, :])


@triton.jit
def _w4_gather(ws_ptr, rows, mmask, cols, M, N, P: tl.constexpr, n_split,
               BLOCK_M: tl.constexpr, SUB: tl.constexpr):
    c = cols + 16 * P
    ptrs = ws_ptr + rows[:, None] * N + c[None, :]
    mask = mmask[:, None] & (c < N)[None, :]
    acc = tl.zeros([BLOCK_M, SUB], dtype=tl.float32)
    for s in range(n_split):
        acc += tl.load(ptrs + s * M * N, mask=mask, other=0.0, cache_modifier=".cg")
    return acc


@triton.jit
def _tile_words(pid_n, NW, BLOCK_N: tl.constexpr):
    """The column tile's packed words ``[BLOCK_N/8]``, their mask, and the column of nibble 0 of each word."""
    j = tl.arange(0, BLOCK_N // 8)
    words = pid_n * (BLOCK_N // 8) + j
    return words, words < NW, pid_n * BLOCK_N + (j // 16) * 128 + j % 16


@triton.jit
def _zeros8(R: tl.constexpr, C: tl.constexpr):
    """Eight fp32 ``[R, C]`` accumulators (one per nibble plane)."""
    return (tl.zeros([R, C], dtype=tl.float32), tl.zeros([R, C], dtype=tl.float32),
            tl.zeros([R, C], dtype=tl.float32), tl.zeros([R, C], dtype=tl.float32),
            tl.zeros([R, C], dtype=tl.float32), tl.zeros([R, C], dtype=tl.float32),
            tl.zeros([R, C], dtype=tl.float32), tl.zeros([R, C], dtype=tl.float32))


@triton.jit(do_not_specialize=["M", "n_split"])
def _w4a16_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, o_ptr, ws_ptr, cnt_ptr, M, N, K, NW, GROUP, K_PER_SPLIT, n_split,
    stride_xm, stride_qk, stride_sk, stride_zk, stride_om,
    SPLIT: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr, UNPACK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PREC: tl.constexpr,
):
    """``BLOCK_K`` divides the group size, so each K step lies in one quantisation group: the
    integer weights ``q - z`` (exact in fp16/bf16) go through the tensor cores and the group's
    per-column scale is applied to the fp32 partial sum, never rounding a dequantised weight.
    Word j of the tile (``BLOCK_N/8`` words per K row) covers columns ``base + 128*(j//16) + j%16
    + 16*i`` for nibble i (see :func:`awq_prepare`), so plane i is a plain shift of the loaded tile.
    Program ``(tile, s)`` covers ``K_PER_SPLIT`` of K; with ``n_split > 1`` it stores an fp32
    partial to ``ws [SPLIT_K, M, N]`` and (REDUCE=1) the last program of the tile sums them."""
    SUB: tl.constexpr = BLOCK_N // 8
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _group_pid(tile, num_m, num_n, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = rows < M
    rows = rows.to(tl.int64)
    words, wmask, cols = _tile_words(pid_n, NW, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _zeros8(BLOCK_M, SUB)
    for k0 in range(k_lo, k_hi, BLOCK_K):
        kk = k0 + offs_k
        kmask = kk < k_hi
        x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=mmask[:, None] & kmask[None, :], other=0.0)
        p = tl.load(qw_ptr + kk.to(tl.int64)[:, None] * stride_qk + words[None, :],
                    mask=kmask[:, None] & wmask[None, :], other=0)
        grp = k0 // GROUP
        zw = tl.load(z_ptr + grp * stride_zk + words, mask=wmask, other=0)
        s_ptrs = s_ptr + grp * stride_sk + cols
        acc0 = _w4_plane(acc0, x, p, zw, s_ptrs, cols, N, 0, UNPACK, DOT_PREC)
        acc1 = _w4_plane(acc1, x, p, zw, s_ptrs, cols, N, 1, UNPACK, DOT_PREC)
        acc2 = _w4_plane(acc2, x, p, zw, s_ptrs, cols, N, 2, UNPACK, DOT_PREC)
        acc3 = _w4_plane(acc3, x, p, zw, s_ptrs, cols, N, 3, UNPACK, DOT_PREC)
        acc4 = _w4_plane(acc4, x, p, zw, s_ptrs, cols, N, 4, UNPACK, DOT_PREC)
        acc5 = _w4_plane(acc5, x, p, zw, s_ptrs, cols, N, 5, UNPACK, DOT_PREC)
        acc6 = _w4_plane(acc6, x, p, zw, s_ptrs, cols, N, 6, UNPACK, DOT_PREC)
        acc7 = _w4_plane(acc7, x, p, zw, s_ptrs, cols, N, 7, UNPACK, DOT_PREC)
    if not SPLIT:
        _w4_store8(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om,
                   HAS_BIAS)
    else:
        wp = ws_ptr + pid_k * M * N
        _w4_partial(acc0, wp, rows, mmask, cols, N, 0)
        _w4_partial(acc1, wp, rows, mmask, cols, N, 1)
        _w4_partial(acc2, wp, rows, mmask, cols, N, 2)
        _w4_partial(acc3, wp, rows, mmask, cols, N, 3)
        _w4_partial(acc4, wp, rows, mmask, cols, N, 4)
        _w4_partial(acc5, wp, rows, mmask, cols, N, 5)
        _w4_partial(acc6, wp, rows, mmask, cols, N, 6)
        _w4_partial(acc7, wp, rows, mmask, cols, N, 7)
        if REDUCE == 1:  # noqa: SIM102 - constexpr, then a runtime branch
            if last_arrival(cnt_ptr, tile, n_split):
                _w4_store8(_w4_gather(ws_ptr, rows, mmask, cols, M, N, 0, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 1, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 2, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 3, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 4, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 5, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 6, n_split, BLOCK_M, SUB),
                           _w4_gather(ws_ptr, rows, mmask, cols, M, N, 7, n_split, BLOCK_M, SUB),
                           o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, HAS_BIAS)


@triton.jit
def _w4_store8(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om,
               HAS_BIAS: tl.constexpr):
    _w4_store(acc0, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 0, HAS_BIAS)
    _w4_store(acc1, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 1, HAS_BIAS)
    _w4_store(acc2, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 2, HAS_BIAS)
    _w4_store(acc3, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 3, HAS_BIAS)
    _w4_store(acc4, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 4, HAS_BIAS)
    _w4_store(acc5, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 5, HAS_BIAS)
    _w4_store(acc6, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 6, HAS_BIAS)
    _w4_store(acc7, o_ptr, bias_ptr, rows, mmask, cols, N, stride_om, 7, HAS_BIAS)


@triton.jit(do_not_specialize=["M", "n_split"])
def _w4a16_join_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, o_ptr, ws_ptr, cnt_ptr, M, N, K, NW, GROUP, K_PER_SPLIT, n_split,
    stride_xm, stride_qk, stride_sk, stride_zk, stride_om,
    SPLIT: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr, UNPACK: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    DOT_PREC: tl.constexpr, FOLD: tl.constexpr, EVEN_K: tl.constexpr = False, ASM: tl.constexpr = True,
):
    """The same product as :func:`_w4a16_kernel` with one ``tl.dot`` per K step (large M: one wide MMA
    instead of 8 narrow ones): the 8 nibble planes are joined into a ``[BLOCK_K, BLOCK_N]`` operand whose
    tile column ``8j + P`` is plane P of word j, and the accumulator is permuted back to column order once,
    before the epilogue. ``FOLD``: scale the weights before the MMA (one rounding of each dequantised weight
    to x's dtype, as LMDeploy's kernel does) so the MMA accumulates in place, instead of scaling each
    partial product (exact weights, but a second fp32 tile live per K step). In fp16 the fold is a 16-bit
    multiply (the product is exact before its one rounding); in bf16 it goes through fp32."""
    SUB: tl.constexpr = BLOCK_N // 8
    CH: tl.constexpr = BLOCK_N // 128
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    tile = tl.program_id(0)
    pid_k = tl.program_id(1)
    pid_m, pid_n = _group_pid(tile, num_m, num_n, GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = rows < M
    rows = rows.to(tl.int64)
    words = pid_n * SUB + tl.arange(0, SUB)
    wmask = words < NW
    jj = tl.arange(0, BLOCK_N)
    if UNPACK == 2:  # plane of tile column jj (see _w4_joined_magic)
        plane = (jj % 8) // 2 + 4 * (jj % 2)
    else:
        plane = jj % 8
    pcols = pid_n * BLOCK_N + (jj // 128) * 128 + (jj // 8) % 16 + 16 * plane  # column of tile column jj
    offs_k = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if EVEN_K:  # scalar base pointers advanced per K step over loop-invariant 32-bit tile offsets
        x_base = x_ptr + (pid_m * BLOCK_M).to(tl.int64) * stride_xm + k_lo
        x_off = tl.arange(0, BLOCK_M)[:, None] * stride_xm + offs_k[None, :]
        p_base = qw_ptr + k_lo.to(tl.int64) * stride_qk + pid_n * SUB
        p_off = offs_k[:, None] * stride_qk + tl.arange(0, SUB)[None, :]
    for k0 in range(k_lo, k_hi, BLOCK_K):
        if EVEN_K:  # every K step is whole: only the loop-invariant row / word masks
            x = tl.load(x_base + x_off, mask=mmask[:, None], other=0.0)
            p = tl.load(p_base + p_off, mask=wmask[None, :], other=0)
            x_base += BLOCK_K
            p_base += BLOCK_K * stride_qk
        else:
            kk = k0 + offs_k
            kmask = kk < k_hi
            x = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=mmask[:, None] & kmask[None, :],
                        other=0.0)
            p = tl.load(qw_ptr + kk.to(tl.int64)[:, None] * stride_qk + words[None, :],
                        mask=kmask[:, None] & wmask[None, :], other=0)
        grp = k0 // GROUP
        zw = tl.load(z_ptr + grp * stride_zk + words, mask=wmask, other=0)
        if UNPACK == 2:  # joined first, zeros subtracted on whole f16x2 registers; odd fp16 planes hold 16 (q - z)
            w = _w4_joined_magic(p, x.dtype, ASM) - _w4_joined_magic(zw[None, :], x.dtype, ASM)
        else:
            w04 = tl.join(_w4_weights(p, zw, 0, UNPACK, x.dtype), _w4_weights(p, zw, 4, UNPACK, x.dtype))
            w26 = tl.join(_w4_weights(p, zw, 2, UNPACK, x.dtype), _w4_weights(p, zw, 6, UNPACK, x.dtype))
            w15 = tl.join(_w4_weights(p, zw, 1, UNPACK, x.dtype), _w4_weights(p, zw, 5, UNPACK, x.dtype))
            w37 = tl.join(_w4_weights(p, zw, 3, UNPACK, x.dtype), _w4_weights(p, zw, 7, UNPACK, x.dtype))
            w = tl.reshape(tl.join(tl.join(w04, w26), tl.join(w15, w37)), (BLOCK_K, BLOCK_N))  # 4a+2b+c = plane
        s = tl.load(s_ptr + grp * stride_sk + pcols, mask=pcols < N, other=0.0)
        if FOLD:  # dequantised weight rounded to x's dtype once; the MMA accumulates in place
            if x.dtype == tl.float16:
                # q - z (at most 4 bits) times an fp16 s is exact before its one rounding, so the fp16 multiply
                # (HMUL2 on sm_90) is the correctly rounded w * s of the fp32 path below, in fewer instructions
                # (sm_90 K loop of the 128-row tile: 368 against 440). The odd planes of unpack 2 hold 16 (q - z),
                # and / 16 is exact in fp16.
                if UNPACK == 2:
                    w = w * tl.where(plane % 2 == 1, 0.0625, 1.0).to(tl.float16)[None, :]
                ws_ = w * s.to(tl.float16)[None, :]
            else:  # bf16: the same rounding through fp32 (the interpreter has no bf16 arithmetic)
                ws_ = (w.to(tl.float32) * s.to(tl.float32)[None, :]).to(x.dtype)
            acc = tl.dot(x, ws_, acc, input_precision=DOT_PREC)
        else:  # exact integer weights, the group scale applied to the fp32 partial product
            if UNPACK == 2 and x.dtype == tl.float16:  # the odd planes' factor 16, undone exactly in the scale
                s = s.to(tl.float32) * tl.where(plane % 2 == 1, 0.0625, 1.0)
            acc += tl.dot(x, w, input_precision=DOT_PREC) * s.to(tl.float32)[None, :]
    # tile column 8j + P with j = 16t + c holds column 128t + 16P + c: back to column order
    if UNPACK == 2:  # tile column 8 j + 2 k + h holds plane k + 4 h
        acc = tl.reshape(tl.permute(tl.reshape(acc, (BLOCK_M, CH, 16, 4, 2)), (0, 1, 4, 3, 2)), (BLOCK_M, BLOCK_N))
    else:
        acc = tl.reshape(tl.permute(tl.reshape(acc, (BLOCK_M, CH, 16, 8)), (0, 1, 3, 2)), (BLOCK_M, BLOCK_N))
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    omask = mmask[:, None] & (cols < N)[None, :]
    mn = rows[:, None] * N + cols[None, :]
    if not SPLIT:
        _w4_full_store(acc, o_ptr, bias_ptr, rows, omask, cols, N, stride_om, HAS_BIAS)
    else:
        tl.store(ws_ptr + pid_k * M * N + mn, acc, mask=omask)
        if REDUCE == 1:  # noqa: SIM102 - constexpr, then a runtime branch
            if last_arrival(cnt_ptr, tile, n_split):
                acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
                for sp in range(n_split):
                    acc += tl.load(ws_ptr + sp * M * N + mn, mask=omask, other=0.0, cache_modifier=".cg")
                _w4_full_store(acc, o_ptr, bias_ptr, rows, omask, cols, N, stride_om, HAS_BIAS)


@triton.jit
def _gemv_plane(p, p12, P: tl.constexpr, ASM: tl.constexpr):
    """Nibble plane P of a tile of words (``p``, and ``p12 = p >> 12``) as fp32 ``2**23 + q * 16**e``: the nibble
    masked in place and OR-ed into the mantissa of 2**23, with ``e = P`` for planes 0-4 and ``P - 3`` for planes
    5-7 (read from ``p12``), so that ``q * 16**e < 2**23`` stays exact. Subtracting the zero point made the same way
    gives ``(q - z) * 16**e`` exactly; :func:`_gemv_out` multiplies the plane's sums by :func:`_gemv_unit`. ``ASM``: one
    ``LOP3`` with both constants in registers (ptxas emits two when they are immediates); False: Triton integer ops
    (the interpreter runs no inline PTX)."""
    src = p if P < 5 else p12
    mask = tl.full(p.shape, 0xF << (4 * (P if P < 5 else P - 3)), tl.int32)
    magic = tl.full(p.shape, 0x4B000000, tl.int32)
    if ASM:
        return tl.inline_asm_elementwise("lop3.b32 $0, $1, $2, $3, 0xea;", "=r,r,r,r", [src, mask, magic],
                                         dtype=tl.float32, is_pure=True, pack=1)
    return ((src & mask) | magic).to(tl.float32, bitcast=True)


@triton.jit
def _gemv_zeros(zw, ASM: tl.constexpr):
    """The eight planes' zero points of a group's ``[SUB]`` words, made as :func:`_gemv_plane` makes the weights."""
    zw12 = zw >> 12
    return (_gemv_plane(zw, zw12, 0, ASM), _gemv_plane(zw, zw12, 1, ASM), _gemv_plane(zw, zw12, 2, ASM),
            _gemv_plane(zw, zw12, 3, ASM), _gemv_plane(zw, zw12, 4, ASM), _gemv_plane(zw, zw12, 5, ASM),
            _gemv_plane(zw, zw12, 6, ASM), _gemv_plane(zw, zw12, 7, ASM))


@triton.jit
def _gemv_unit(P: tl.constexpr):
    """``16**-e`` of plane P (exact in fp32)."""
    if P < 5:
        return 1.0 / (1 << (4 * P))
    else:
        return 1.0 / (1 << (4 * (P - 3)))


@triton.jit
def _gemv_fold(c, FOLD: tl.constexpr):
    """``[BLOCK_K, SUB]`` contributions summed over ``FOLD`` row blocks into ``[BLOCK_K / FOLD, SUB]``: row
    ``i * BLOCK_K / FOLD + j`` onto row j. The blocked layout repeats a thread's rows every ``BLOCK_K / FOLD`` rows
    when that is the rows one pass of the program's threads covers, so the sum stays inside each thread."""
    if FOLD == 1:
        return c
    else:
        return tl.sum(tl.reshape(c, (FOLD, c.shape[0] // FOLD, c.shape[1])), axis=0)


@triton.jit
def _gemv_out(acc, P: tl.constexpr, o_ptr, bias_ptr, ws_ptr, row, cols, N, stride_om, STORE_PARTIAL: tl.constexpr,
              HAS_BIAS: tl.constexpr):
    """Reduce the plane's ``[BLOCK_K, SUB]`` accumulator over K, undo its ``16**e`` and store it (output row or fp32
    partial)."""
    out = tl.sum(acc, axis=0) * _gemv_unit(P)
    c = cols + 16 * P
    cmask = c < N
    if STORE_PARTIAL:
        tl.store(ws_ptr + row * N + c, out, mask=cmask)
    else:
        if HAS_BIAS:
            out += tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        tl.store(o_ptr + row * stride_om + c, out.to(o_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _gemv_reduce(ws_ptr, o_ptr, bias_ptr, row, cols, M, N, n_split, stride_om, P: tl.constexpr,
                 HAS_BIAS: tl.constexpr):
    c = cols + 16 * P
    cmask = c < N
    out = tl.load(ws_ptr + row * N + c, mask=cmask, other=0.0, cache_modifier=".cg")
    for sp in range(1, n_split):
        out += tl.load(ws_ptr + (sp * M + row) * N + c, mask=cmask, other=0.0, cache_modifier=".cg")
    if HAS_BIAS:
        out += tl.load(bias_ptr + c, mask=cmask, other=0.0).to(tl.float32)
    tl.store(o_ptr + row * stride_om + c, out.to(o_ptr.dtype.element_ty), mask=cmask)


@triton.jit
def _gemv_step(p, x, z0, z1, z2, z3, z4, z5, z6, z7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7, ASM: tl.constexpr,
               FOLD: tl.constexpr):
    """One K step: the ``[BLOCK_K, SUB]`` words ``p`` times ``x [BLOCK_K]`` added to the group's plane sums."""
    p12 = p >> 12
    xk = x[:, None]
    ga0 += _gemv_fold(xk * (_gemv_plane(p, p12, 0, ASM) - z0[None, :]), FOLD)
    ga1 += _gemv_fold(xk * (_gemv_plane(p, p12, 1, ASM) - z1[None, :]), FOLD)
    ga2 += _gemv_fold(xk * (_gemv_plane(p, p12, 2, ASM) - z2[None, :]), FOLD)
    ga3 += _gemv_fold(xk * (_gemv_plane(p, p12, 3, ASM) - z3[None, :]), FOLD)
    ga4 += _gemv_fold(xk * (_gemv_plane(p, p12, 4, ASM) - z4[None, :]), FOLD)
    ga5 += _gemv_fold(xk * (_gemv_plane(p, p12, 5, ASM) - z5[None, :]), FOLD)
    ga6 += _gemv_fold(xk * (_gemv_plane(p, p12, 6, ASM) - z6[None, :]), FOLD)
    ga7 += _gemv_fold(xk * (_gemv_plane(p, p12, 7, ASM) - z7[None, :]), FOLD)
    return ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7


@triton.jit
def _gemv_scale(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7, s_row, cols,
                N):
    """A group's plane sums times its scales (``s_row``: the group's scale row at the tile's columns) into the
    output accumulators."""
    acc0 += ga0 * tl.load(s_row, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    acc1 += ga1 * tl.load(s_row + 16, mask=cols + 16 < N, other=0.0).to(tl.float32)[None, :]
    acc2 += ga2 * tl.load(s_row + 32, mask=cols + 32 < N, other=0.0).to(tl.float32)[None, :]
    acc3 += ga3 * tl.load(s_row + 48, mask=cols + 48 < N, other=0.0).to(tl.float32)[None, :]
    acc4 += ga4 * tl.load(s_row + 64, mask=cols + 64 < N, other=0.0).to(tl.float32)[None, :]
    acc5 += ga5 * tl.load(s_row + 80, mask=cols + 80 < N, other=0.0).to(tl.float32)[None, :]
    acc6 += ga6 * tl.load(s_row + 96, mask=cols + 96 < N, other=0.0).to(tl.float32)[None, :]
    acc7 += ga7 * tl.load(s_row + 112, mask=cols + 112 < N, other=0.0).to(tl.float32)[None, :]
    return acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7


@triton.jit
def _gemv_group_end(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7, s_row,
                    cols, N, z_words, wmask, ACC_K: tl.constexpr, SUB: tl.constexpr, ASM: tl.constexpr):
    """A group's last K step: its plane sums scaled into the output accumulators (:func:`_gemv_scale`), fresh
    sums, and the zero points of the group whose words ``z_words`` points at. Returns the 8 + 8 + 8 tensors."""
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _gemv_scale(
        acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7, s_row, cols, N)
    ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _zeros8(ACC_K, SUB)
    zw = tl.load(z_words, mask=wmask, other=0)
    z0, z1, z2, z3, z4, z5, z6, z7 = _gemv_zeros(zw, ASM)
    return (acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
            z0, z1, z2, z3, z4, z5, z6, z7)


@triton.jit(do_not_specialize=["M", "n_split"])
def _w4a16_gemv_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, o_ptr, ws_ptr, cnt_ptr, M, N, NW, K_PER_SPLIT, K, n_split,
    stride_xm, stride_qk, stride_sk, stride_zk, stride_om,
    SPLIT: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, ASM: tl.constexpr = True,
    STAGES: tl.constexpr = 2, FOLD: tl.constexpr = 1, PIPELINED: tl.constexpr = False,
):
    """One row of ``x @ dequant(W)`` on the CUDA cores (``GemmConfig.gemv``; decode rows): program
    ``(column tile, K split, row)``. Each thread keeps its own K rows of a ``[BLOCK_K, SUB]`` fp32 accumulator per
    nibble plane: per weight one logic op, one subtraction (``q - z`` exactly) and one FMA with x, no
    reduction across threads inside the K loop. A group's accumulators are scaled once at the group's end (one FMA
    per accumulator element per group); the K axis is reduced across threads once, after the loop. ``K_PER_SPLIT`` is
    a whole number of groups; with ``n_split > 1`` the programs store fp32 partials ``ws [n_split, M, N]`` and
    (REDUCE=1) the last of a (tile, row) to arrive sums them. ``STAGES`` (``GemmConfig.num_stages``): without
    ``PIPELINED`` (2-4) the weight tiles in registers, the one in use and ``STAGES - 1`` loaded ahead by hand; with
    ``PIPELINED`` (``GemmConfig.pipelined``) the K loop is ``tl.range(num_stages=STAGES)`` and Triton's pipeliner
    copies ``STAGES - 1`` steps ahead into shared memory asynchronously, so the bytes in flight cost no registers.
    ``FOLD`` (``GemmConfig.fold``): the accumulators hold ``BLOCK_K / FOLD`` K rows, each step's contributions summed
    onto them (:func:`_gemv_fold`), so a step may load more rows per thread than the accumulators hold."""
    tl.static_assert(PIPELINED or (STAGES >= 2 and STAGES <= 4),
                     "gemv: num_stages (the weight tiles held by hand) must be 2 to 4")
    SUB: tl.constexpr = BLOCK_N // 8
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)
    words, wmask, cols = _tile_words(pid_n, NW, BLOCK_N)
    offs_k = tl.arange(0, BLOCK_K)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    ACC_K: tl.constexpr = BLOCK_K // FOLD
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _zeros8(ACC_K, SUB)
    x_row = x_ptr + row * stride_xm
    w_tile = qw_ptr + offs_k[:, None] * stride_qk + words[None, :]
    k_last = k_hi - BLOCK_K
    if PIPELINED:
        zw = tl.load(z_ptr + (k_lo // GROUP) * stride_zk + words, mask=wmask, other=0)
        z0, z1, z2, z3, z4, z5, z6, z7 = _gemv_zeros(zw, ASM)
        ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _zeros8(ACC_K, SUB)
        for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):  # K is a whole number of groups: no K mask
            p = tl.load(w_tile + k0 * stride_qk, mask=wmask[None, :], other=0)
            x = tl.load(x_row + k0 + offs_k).to(tl.float32)
            ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _gemv_step(p, x, z0, z1, z2, z3, z4, z5, z6, z7, ga0, ga1, ga2,
                                                                ga3, ga4, ga5, ga6, ga7, ASM, FOLD)
            if (k0 + BLOCK_K) % GROUP == 0:  # the group's last step: scale its sums, take the next zero points
                (acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
                 z0, z1, z2, z3, z4, z5, z6, z7) = _gemv_group_end(
                    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
                    s_ptr + (k0 // GROUP) * stride_sk + cols, cols, N,
                    z_ptr + (tl.minimum(k0 + BLOCK_K, k_last) // GROUP) * stride_zk + words, wmask, ACC_K, SUB, ASM)
    else:
        # the K loop carries this step's words and x (p, x) and STAGES - 1 later steps' (p1, x1 ...), and loads the
        # step STAGES - 1 ahead; loads past the split's end re-read its last step, in range (their values are never
        # used)
        p = tl.load(w_tile + k_lo * stride_qk, mask=wmask[None, :], other=0)
        x = tl.load(x_row + k_lo + offs_k).to(tl.float32)
        if STAGES >= 3:
            p1 = tl.load(w_tile + tl.minimum(k_lo + BLOCK_K, k_last) * stride_qk, mask=wmask[None, :], other=0)
            x1 = tl.load(x_row + tl.minimum(k_lo + BLOCK_K, k_last) + offs_k).to(tl.float32)
        if STAGES >= 4:
            p2 = tl.load(w_tile + tl.minimum(k_lo + 2 * BLOCK_K, k_last) * stride_qk, mask=wmask[None, :], other=0)
            x2 = tl.load(x_row + tl.minimum(k_lo + 2 * BLOCK_K, k_last) + offs_k).to(tl.float32)
        zw = tl.load(z_ptr + (k_lo // GROUP) * stride_zk + words, mask=wmask, other=0)
        z0, z1, z2, z3, z4, z5, z6, z7 = _gemv_zeros(zw, ASM)
        ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _zeros8(ACC_K, SUB)
        for k0 in range(k_lo, k_hi, BLOCK_K):  # K is a whole number of groups: no K mask
            kn = tl.minimum(k0 + BLOCK_K, k_last)  # the next step (its group's zero points at a group end)
            ka = tl.minimum(k0 + (STAGES - 1) * BLOCK_K, k_last)  # the step loaded now
            p_next = tl.load(w_tile + ka * stride_qk, mask=wmask[None, :], other=0)
            x_next = tl.load(x_row + ka + offs_k).to(tl.float32)
            ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _gemv_step(p, x, z0, z1, z2, z3, z4, z5, z6, z7, ga0, ga1, ga2,
                                                                ga3, ga4, ga5, ga6, ga7, ASM, FOLD)
            if (k0 + BLOCK_K) % GROUP == 0:  # the group's last step: scale its sums, take the next zero points
                (acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
                 z0, z1, z2, z3, z4, z5, z6, z7) = _gemv_group_end(
                    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
                    s_ptr + (k0 // GROUP) * stride_sk + cols, cols, N, z_ptr + (kn // GROUP) * stride_zk + words,
                    wmask, ACC_K, SUB, ASM)
            if STAGES == 2:
                p = p_next
                x = x_next
            elif STAGES == 3:
                p = p1
                x = x1
                p1 = p_next
                x1 = x_next
            else:
                p = p1
                x = x1
                p1 = p2
                x1 = x2
                p2 = p_next
                x2 = x_next
    _gemv_epilogue(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, o_ptr, bias_ptr, ws_ptr, cnt_ptr, row, cols, pid_n,
                   pid_k, M, N, n_split, stride_om, SPLIT, REDUCE, HAS_BIAS)


@triton.jit
def _gemv_epilogue(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, o_ptr, bias_ptr, ws_ptr, cnt_ptr, row, cols, pid_n,
                   pid_k, M, N, n_split, stride_om, SPLIT: tl.constexpr, REDUCE: tl.constexpr,
                   HAS_BIAS: tl.constexpr):
    """The 8 planes' sums over K stored (output row, or fp32 partials that the last split of the (tile, row) to
    arrive sums when REDUCE=1)."""
    wp = ws_ptr + pid_k * M * N
    _gemv_out(acc0, 0, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc1, 1, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc2, 2, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc3, 3, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc4, 4, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc5, 5, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc6, 6, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    _gemv_out(acc7, 7, o_ptr, bias_ptr, wp, row, cols, N, stride_om, SPLIT, HAS_BIAS)
    if SPLIT and REDUCE == 1:  # noqa: SIM102 - constexpr, then a runtime branch
        if last_arrival(cnt_ptr, row * tl.num_programs(0) + pid_n, n_split):
            for P in tl.static_range(8):
                _gemv_reduce(ws_ptr, o_ptr, bias_ptr, row, cols, M, N, n_split, stride_om, P, HAS_BIAS)


@triton.jit(do_not_specialize=["M", "n_split", "WSTRIDE"])
def _w4a16_gemv_col_kernel(
    x_ptr, qw_ptr, s_ptr, z_ptr, bias_ptr, o_ptr, ws_ptr, cnt_ptr, M, N, NW, K_PER_SPLIT, K, n_split,
    stride_xm, stride_qk, stride_sk, stride_zk, stride_om, WSTRIDE,
    SPLIT: tl.constexpr, REDUCE: tl.constexpr, HAS_BIAS: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP: tl.constexpr, ROWS: tl.constexpr, ASM: tl.constexpr = True,
    STAGES: tl.constexpr = 1,
):
    """:func:`_w4a16_gemv_kernel` with one packed word column per thread (``GemmConfig.column_threads``): a pass
    over ``ROWS = 32 * num_warps / (BLOCK_N / 8)`` K rows gives each thread one word, and a K step of
    ``BLOCK_K`` is ``BLOCK_K / ROWS`` passes summed into the same registers. Each thread thus holds one accumulator
    per nibble plane (8, against 32 for the vector-load kernel's 4 words), so a group ends with 8 FMAs and the kernel
    needs about a third of the registers (more warps per SM to hide the loads). ``WSTRIDE`` (1 at run time, not
    specialised) hides the words' contiguity from the compiler, which would otherwise give each thread 4
    neighbouring words of one row. The K loop is ``tl.range(num_stages=STAGES)`` (1: no software pipeline)."""
    SUB: tl.constexpr = BLOCK_N // 8
    PASSES: tl.constexpr = BLOCK_K // ROWS
    pid_n = tl.program_id(0)
    pid_k = tl.program_id(1)
    row = tl.program_id(2).to(tl.int64)
    words, wmask, cols = _tile_words(pid_n, NW, BLOCK_N)
    offs_r = tl.arange(0, ROWS)
    k_lo = pid_k * K_PER_SPLIT
    k_hi = tl.minimum(k_lo + K_PER_SPLIT, K)
    k_last = k_hi - BLOCK_K
    acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7 = _zeros8(ROWS, SUB)
    x_row = x_ptr + row * stride_xm + offs_r
    w_pass = qw_ptr + offs_r[:, None] * stride_qk + (words * WSTRIDE)[None, :]
    zw = tl.load(z_ptr + (k_lo // GROUP) * stride_zk + words, mask=wmask, other=0)
    z0, z1, z2, z3, z4, z5, z6, z7 = _gemv_zeros(zw, ASM)
    ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _zeros8(ROWS, SUB)
    for k0 in tl.range(k_lo, k_hi, BLOCK_K, num_stages=STAGES):  # K is a whole number of groups: no K mask
        for i in tl.static_range(PASSES):
            p = tl.load(w_pass + (k0 + i * ROWS) * stride_qk, mask=wmask[None, :], other=0)
            x = tl.load(x_row + k0 + i * ROWS).to(tl.float32)
            ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7 = _gemv_step(p, x, z0, z1, z2, z3, z4, z5, z6, z7, ga0, ga1, ga2,
                                                                ga3, ga4, ga5, ga6, ga7, ASM, 1)
        if (k0 + BLOCK_K) % GROUP == 0:  # the group's last step: scale its sums, take the next zero points
            (acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
             z0, z1, z2, z3, z4, z5, z6, z7) = _gemv_group_end(
                acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, ga0, ga1, ga2, ga3, ga4, ga5, ga6, ga7,
                s_ptr + (k0 // GROUP) * stride_sk + cols, cols, N,
                z_ptr + (tl.minimum(k0 + BLOCK_K, k_last) // GROUP) * stride_zk + words, wmask, ROWS, SUB, ASM)
    _gemv_epilogue(acc0, acc1, acc2, acc3, acc4, acc5, acc6, acc7, o_ptr, bias_ptr, ws_ptr, cnt_ptr, row, cols, pid_n,
                   pid_k, M, N, n_split, stride_om, SPLIT, REDUCE, HAS_BIAS)


@triton.jit
def _w4_full_store(acc, o_ptr, bias_ptr, rows, omask, cols, N, stride_om, HAS_BIAS: tl.constexpr):
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=cols < N, other=0.0).to(tl.float32)[None, :]
    tl.store(o_ptr + rows[:, None] * stride_om + cols[None, :], acc.to(o_ptr.dtype.element_ty), mask=omask)


@triton.jit
def _w4a16_dequant_kernel(qw_ptr, s_ptr, z_ptr, o_ptr, K, N, NW, GROUP, stride_qk, stride_sk, stride_zk, stride_ok,
                          BLOCK_K: tl.constexpr, BLOCK_N: tl.constexpr):
    """``o [K, N] = (q - z) * s`` rounded once to o's dtype, from :func:`awq_prepare`'s layout: program
    ``(k block, n block)`` loads ``[BLOCK_K, BLOCK_N/8]`` words and stores the 8 nibble planes, each to its 16
    contiguous columns per chunk of 128."""
    SUB: tl.constexpr = BLOCK_N // 8
    kk = tl.program_id(0) * BLOCK_K + tl.arange(0, BLOCK_K)
    pid_n = tl.program_id(1)
    j = tl.arange(0, SUB)
    words = pid_n * SUB + j
    kmask = kk < K
    wmask = words < NW
    cols = pid_n * BLOCK_N + (j // 16) * 128 + j % 16
    p = tl.load(qw_ptr + kk.to(tl.int64)[:, None] * stride_qk + words[None, :], mask=kmask[:, None] & wmask[None, :],
                other=0)
    grp = kk // GROUP
    zw = tl.load(z_ptr + grp[:, None] * stride_zk + words[None, :], mask=kmask[:, None] & wmask[None, :], other=0)
    rows = o_ptr + kk.to(tl.int64)[:, None] * stride_ok
    for P in tl.static_range(8):
        c = cols + 16 * P
        mask = kmask[:, None] & (c < N)[None, :]
        w = (((p >> (4 * P)) & 0xF) - ((zw >> (4 * P)) & 0xF)).to(tl.float32)
        sc = tl.load(s_ptr + grp[:, None] * stride_sk + c[None, :], mask=mask, other=0.0).to(tl.float32)
        tl.store(rows + c[None, :], (w * sc).to(o_ptr.dtype.element_ty), mask=mask)


def w4a16_dequant(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int,
                  dtype: torch.dtype) -> torch.Tensor:
    """The dequantised weight ``[IN, OUT]`` in ``dtype`` from :func:`awq_prepare`'s layout (each weight
    ``(q - z) * s`` computed in fp32 and rounded once)."""
    K, NW = qweight.shape
    N = scales.shape[-1]
    out = torch.empty((K, N), dtype=dtype, device=qweight.device)
    block_k, block_n = (16, 128) if interpreting() else (32, 256)
    _w4a16_dequant_kernel[(cdiv(K, block_k), cdiv(N, block_n))](
        qweight, scales, qzeros, out, K, N, NW, group_size, qweight.stride(0), scales.stride(0), qzeros.stride(0),
        out.stride(0), BLOCK_K=block_k, BLOCK_N=block_n, num_warps=4,
    )
    return out


def w4_unpack(unpack: int, dtype: torch.dtype, ptx: bool, interpreter: bool) -> int:
    """The int4 unpack a launch runs for a config's ``unpack``. Only 16-bit floats have the magic-number unpacks.
    ``unpack=2`` (two nibbles per ``LOP3``) is inline PTX: where that is unavailable (a non-NVIDIA device) the
    launch runs ``unpack=1``, the same exact weights in plain Triton. The interpreter runs unpack 2's bits with
    integer ops instead, in fp16; in bf16 it falls back to 0 (it subtracts bf16 as raw uint16 bits, so the magic
    paths are checked on a GPU only)."""
    if dtype not in (torch.float16, torch.bfloat16):
        return 0
    if interpreter:
        return 0 if dtype == torch.bfloat16 else unpack
    return 1 if unpack == 2 and not ptx else unpack


def gemv_column_rows(cfg: GemmConfig) -> int:
    """K rows one pass of the program covers with ``GemmConfig.column_threads``: one packed word per thread."""
    return 32 * cfg.num_warps // (cfg.block_n // 8)


def _w4a16_gemv(a: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
                bias: torch.Tensor | None, out: torch.Tensor, group_size: int, cfg: GemmConfig, bk: int,
                split_k: int | None) -> None:
    """``out [M, N] = a [M, K] @ dequant(W) (+ bias)`` with :func:`_w4a16_gemv_kernel`; K splits in whole groups."""
    M, K = a.shape
    N = out.shape[1]
    NW = qweight.shape[1]
    if M > 65535:
        raise ValueError(f"w4a16: the gemv config runs one program row per input row; M={M} exceeds 65535")
    tiles = cdiv(N, cfg.block_n)
    groups = K // group_size
    split = _split_count(split_k, cfg, tiles * M, 2 * groups, a.device, M, K)
    split = max(1, min(split, groups))
    k_per_split = cdiv(groups, split) * group_size
    split = cdiv(K, k_per_split)
    ws = torch.empty((split, M, N), dtype=torch.float32, device=a.device) if split > 1 else out
    cnt = arrival_counters(a.device, tiles * M) if split > 1 and cfg.reduce == 1 else None
    reduce = int(cnt is not None)
    args = (a, qweight, scales, qzeros, bias if bias is not None else a, out, ws, ws if cnt is None else cnt,
            M, N, NW, k_per_split, K, split,
            a.stride(0), qweight.stride(0), scales.stride(0), qzeros.stride(0), out.stride(0))
    common = dict(SPLIT=split > 1, REDUCE=reduce, HAS_BIAS=bias is not None, BLOCK_N=cfg.block_n, BLOCK_K=bk,
                  GROUP=group_size, ASM=inline_ptx(a.device), STAGES=cfg.num_stages, num_warps=cfg.num_warps,
                  num_stages=cfg.num_stages)
    if cfg.column_threads:
        _w4a16_gemv_col_kernel[(tiles, split, M)](*args, 1, ROWS=gemv_column_rows(cfg), **common)
    else:
        _w4a16_gemv_kernel[(tiles, split, M)](*args, FOLD=cfg.fold, PIPELINED=cfg.pipelined, **common)
    if split > 1 and not reduce:
        acc = ws.sum(dim=0)
        if bias is not None:
            acc += bias.float()
        out.copy_(acc.to(out.dtype))


def w4a16_fwd(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
    bias: torch.Tensor | None, group_size: int, split_k: int | None = None, config: GemmConfig | None = None,
) -> torch.Tensor:
    """``x [..., IN] @ dequant(W)`` with W from :func:`awq_prepare`'s layout -> ``[..., OUT]``.
    From ``configs.W4A16_DEQUANT_MIN_M`` rows on: :func:`w4a16_dequant` + ``torch.mm``; below, the fused kernel
    with the table's config. ``split_k`` / ``config`` force the fused kernel (tests, sweeps)."""
    _check_group("weight_quant_matmul", group_size)
    K = x.shape[-1]
    N = scales.shape[-1]
    NW = cdiv(N, NCHUNK) * (NCHUNK // 8)
    if tuple(qweight.shape) != (K, NW) or qzeros.shape[-1] != NW:
        raise ValueError(f"dlinfer.ops.weight_quant_matmul: qweight {tuple(qweight.shape)} / qzeros "
                         f"{tuple(qzeros.shape)} are not in maca's layout for IN={K}, OUT={N} (expected qweight "
                         f"({K}, {NW})); pass the output of weight_quant_prepare")
    lead = x.shape[:-1]
    a = x.reshape(-1, K)
    a = a if a.stride(-1) == 1 else a.contiguous()
    M = a.shape[0]
    table_cfg = configs.w4a16_config(M, N)  # None: from W4A16_DEQUANT_MIN_M rows on
    if config is None and split_k is None and N > 0 and table_cfg is None:
        w = w4a16_dequant(qweight, scales, qzeros, group_size, x.dtype)  # transient [K, N]
        return (torch.addmm(bias, a, w) if bias is not None else torch.mm(a, w)).view(*lead, N)
    out = torch.empty((M, N), dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.view(*lead, N)
    cfg = config or (_INTERP if interpreting() else table_cfg or pick_config(W4A16_TABLE, M))
    if cfg.block_n % NCHUNK:
        raise ValueError(f"w4a16: BLOCK_N={cfg.block_n} must be a multiple of {NCHUNK}")
    bk = next(b for b in (cfg.block_k, 128, 64, 32, 16) if b <= group_size and group_size % b == 0)
    if cfg.gemv:
        if cfg.join or cfg.unpack or cfg.even_k:
            raise ValueError(f"w4a16: the gemv kernel has no join / unpack / even_k variants; got join={cfg.join}, "
                             f"unpack={cfg.unpack}, even_k={cfg.even_k}")
        if cfg.column_threads:
            rows = gemv_column_rows(cfg)
            if cfg.pipelined or cfg.fold != 1 or not 1 <= cfg.num_stages <= 8:
                raise ValueError(f"w4a16: column_threads runs Triton's pipeline over 1 to 8 stages (num_stages) and "
                                 f"folds its rows itself; got num_stages={cfg.num_stages}, pipelined={cfg.pipelined}, "
                                 f"fold={cfg.fold}")
            if rows < 1 or 32 * cfg.num_warps % (cfg.block_n // 8) or bk % rows:
                raise ValueError(f"w4a16: column_threads needs the tile's {cfg.block_n // 8} words to divide the "
                                 f"{32 * cfg.num_warps} threads into rows that divide the K step {bk}; got block_n="
                                 f"{cfg.block_n}, num_warps={cfg.num_warps}")
        elif not 2 <= cfg.num_stages <= (8 if cfg.pipelined else 4):
            raise ValueError(f"w4a16: the gemv kernel holds 2 to 4 weight tiles in flight by hand, or pipelines 2 to "
                             f"8 stages through shared memory (pipelined); got num_stages={cfg.num_stages}, "
                             f"pipelined={cfg.pipelined}")
        if cfg.fold < 1 or cfg.fold & (cfg.fold - 1) or bk % cfg.fold or bk // cfg.fold < 2:
            raise ValueError(f"w4a16: gemv fold must be a power of two that leaves at least 2 of the K step's {bk} "
                             f"rows; got {cfg.fold}")
        _w4a16_gemv(a, qweight, scales, qzeros, bias, out, group_size, cfg, bk, split_k)
        return out.view(*lead, N)
    if cfg.fold != 1 or cfg.pipelined or cfg.column_threads:
        raise ValueError(f"w4a16: fold, pipelined and column_threads apply to the gemv kernel only; got "
                         f"fold={cfg.fold}, pipelined={cfg.pipelined}, column_threads={cfg.column_threads} "
                         f"without gemv")
    tiles = cdiv(M, cfg.block_m) * cdiv(N, cfg.block_n)
    k_iters = cdiv(K, bk)
    split = _split_count(split_k, cfg, tiles, k_iters, x.device, M, K)
    split = max(1, min(split, k_iters))
    k_per_split = cdiv(k_iters, split) * bk
    split = cdiv(K, k_per_split)
    ws = torch.empty((split, M, N), dtype=torch.float32, device=x.device) if split > 1 else out
    cnt = arrival_counters(x.device, tiles) if split > 1 and cfg.reduce == 1 else None
    reduce = int(cnt is not None)
    if cfg.unpack == 2 and not cfg.join:
        raise ValueError("w4a16: unpack=2 (two nibbles per LOP3) needs the joined kernel (join 1 or 2)")
    ptx = inline_ptx(x.device)
    unpack = w4_unpack(cfg.unpack, x.dtype, ptx, interpreting())
    kernel, extra = ((_w4a16_join_kernel, {"FOLD": cfg.join == 2, "EVEN_K": cfg.even_k and K % bk == 0, "ASM": ptx})
                     if cfg.join else (_w4a16_kernel, {}))
    kernel[(tiles, split)](
        a, qweight, scales, qzeros, bias if bias is not None else a, out, ws, ws if cnt is None else cnt,
        M, N, K, NW, group_size,
        k_per_split, split, a.stride(0), qweight.stride(0), scales.stride(0), qzeros.stride(0), out.stride(0),
        SPLIT=split > 1, REDUCE=reduce, HAS_BIAS=bias is not None, UNPACK=unpack,
        BLOCK_M=cfg.block_m, BLOCK_N=cfg.block_n, BLOCK_K=bk, GROUP_M=cfg.group_m,
        DOT_PREC="ieee" if x.dtype == torch.float32 else "tf32", num_warps=cfg.num_warps, num_stages=cfg.num_stages,
        **extra,
    )
    if split > 1 and not reduce:
        acc = ws.sum(dim=0)
        if bias is not None:
            acc += bias.float()
        out = acc.to(x.dtype)
    return out.view(*lead, N)
