"""Mixture-of-experts kernels: top-k softmax gating and the fused expert MLP.

``fused_moe`` runs in five launches, none of which needs a host synchronisation:

1. ``_moe_align_kernel`` (one program): histogram of the ``N = T * k`` routed rows per
   expert, each expert's segment padded to a multiple of ``BLOCK_M`` (so a GEMM tile holds
   one expert), the tile -> expert map, and the sorted-row buffer filled with a sentinel.
2. ``_moe_scatter_kernel``: each routed row claims its place in its expert's segment with an
   atomic counter (token sorting by expert).
3. ``_moe_gemm_kernel`` (gate/up): grouped GEMM over the tiles; gate and up columns are
   accumulated side by side and ``silu(gate) * up`` is applied in the epilogue, so the
   ``[N, 2I]`` intermediate never reaches memory.
4. ``_moe_gemm_kernel`` (down): grouped GEMM, scaled by the routing weight in the epilogue
   and scattered back to the row's original ``(t, j)`` slot.
5. a sum over the k slots of each token (fp32 accumulation).

Tiles past the last used one (the buffer is sized for the worst case) exit at once.
Row and tile counts that change from step to step (``N``, the padded sizes) are not specialised on
(``do_not_specialize``): Triton would otherwise compile new variants inside a request whenever such a count
becomes 1, a multiple of 16 or neither.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import cdiv, dot_precision, interpreting, next_pow2

# ----------------------------------------------------------------------------- gating


@triton.jit
def _topk_softmax_kernel(
    logits_ptr, w_ptr, ids_ptr, stride_l, E, K: tl.constexpr, BLOCK_E: tl.constexpr, RENORM: tl.constexpr,
):
    t = tl.program_id(0).to(tl.int64)
    e = tl.arange(0, BLOCK_E)
    emask = e < E
    x = tl.load(logits_ptr + t * stride_l + e, mask=emask, other=float("-inf")).to(tl.float32)
    x = x - tl.max(x, axis=0)
    p = tl.exp(x)
    p = p / tl.sum(p, axis=0)
    p = tl.where(emask, p, -1.0)
    k = tl.arange(0, K)
    wk = tl.zeros([K], dtype=tl.float32)
    ik = tl.zeros([K], dtype=tl.int32)
    for j in tl.static_range(K):
        best = tl.max(p, axis=0)
        idx = tl.min(tl.where(p == best, e, BLOCK_E), axis=0)  # lowest index among ties
        wk = tl.where(k == j, best, wk)
        ik = tl.where(k == j, idx, ik)
        p = tl.where(e == idx, -1.0, p)
    if RENORM:
        wk = wk / tl.sum(wk, axis=0)
    tl.store(w_ptr + t * K + k, wk)
    tl.store(ids_ptr + t * K + k, ik)


def topk_softmax_fwd(logits: torch.Tensor, topk: int, renormalize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 softmax over ``logits [T, E]`` then top-k -> (weights fp32 [T, k], ids int32 [T, k])."""
    T, E = logits.shape
    kp = next_pow2(topk)
    w = torch.empty((T, kp), dtype=torch.float32, device=logits.device)
    ids = torch.empty((T, kp), dtype=torch.int32, device=logits.device)
    if T > 0:
        logits = logits if logits.stride(-1) == 1 else logits.contiguous()
        _topk_softmax_kernel[(T,)](logits, w, ids, logits.stride(0), E, K=kp, BLOCK_E=next_pow2(E),
                                   RENORM=renormalize and kp == topk, num_warps=1)
    if kp != topk:  # k padded to a power of two: the extra picks are the next-best, dropped here
        w, ids = w[:, :topk].contiguous(), ids[:, :topk].contiguous()
        if renormalize:
            w = w / w.sum(dim=-1, keepdim=True)
    return w, ids


# ----------------------------------------------------------------------------- routing


@triton.jit(do_not_specialize=["N", "max_padded", "max_tiles"])
def _moe_align_kernel(
    ids_ptr, sorted_ptr, tile_expert_ptr, cursor_ptr, N, E, max_padded, max_tiles,
    BLOCK_M: tl.constexpr, BLOCK_E: tl.constexpr, CHUNK: tl.constexpr,
):
    e = tl.arange(0, BLOCK_E)
    counts = tl.zeros([BLOCK_E], dtype=tl.int32)
    for n0 in range(0, N, CHUNK):
        r = n0 + tl.arange(0, CHUNK)
        ids = tl.load(ids_ptr + r, mask=r < N, other=-1).to(tl.int32)
        ids = tl.where((r < N) & ((ids < 0) | (ids >= E)), 0, ids)  # out-of-range routes go to expert 0 at weight 0
        counts += tl.sum((ids[:, None] == e[None, :]).to(tl.int32), axis=0)
    padded = tl.cdiv(counts, BLOCK_M) * BLOCK_M
    ends = tl.cumsum(padded, axis=0)
    starts = ends - padded
    tl.store(cursor_ptr + e, starts, mask=e < E)
    ends_valid = tl.where(e < E, ends, 2147483647)
    for t0 in range(0, max_tiles, CHUNK):
        t = t0 + tl.arange(0, CHUNK)
        owner = tl.sum((ends_valid[None, :] <= (t * BLOCK_M)[:, None]).to(tl.int32), axis=1)
        tl.store(tile_expert_ptr + t, tl.where(owner < E, owner, -1), mask=t < max_tiles)
    for s0 in range(0, max_padded, CHUNK):
        s = s0 + tl.arange(0, CHUNK)
        tl.store(sorted_ptr + s, tl.full([CHUNK], 0, tl.int32) + N, mask=s < max_padded)


@triton.jit(do_not_specialize=["N"])
def _moe_scatter_kernel(ids_ptr, sorted_ptr, cursor_ptr, N, E, BLOCK: tl.constexpr):
    r = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = r < N
    ids = tl.load(ids_ptr + r, mask=mask, other=0).to(tl.int32)
    ids = tl.where((ids < 0) | (ids >= E), 0, ids)  # as _moe_align_kernel counted them: no write outside cursor
    dst = tl.atomic_add(cursor_ptr + ids, 1, mask=mask)
    tl.store(sorted_ptr + dst, r, mask=mask)


# ----------------------------------------------------------------------------- grouped GEMM


@triton.jit(do_not_specialize=["N_rows"])
def _moe_gemm_kernel(
    a_ptr, w_ptr, out_ptr, sorted_ptr, tile_expert_ptr, route_w_ptr, ids_ptr,
    N_rows, N_out, K, TOPK, E,
    stride_am, stride_we, stride_wn, stride_om,
    GATED: tl.constexpr, A_SORTED: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, DOT_PREC: tl.constexpr,
):
    """One ``BLOCK_M x BLOCK_N`` output tile of one expert.

    GATED: A rows are tokens (``row // TOPK``), W is ``[E, 2*N_out, K]``, the tile computes
    gate and up columns and stores ``silu(gate) * up`` at the tile's padded rows.
    Otherwise A rows are the padded rows (``A_SORTED``), W is ``[E, N_out, K]`` and the tile
    stores ``route_w[row] * (A W^T)`` at the routed row's original slot; a route whose expert id is outside
    ``[0, E)`` (invalid input; ``DLINFER_VALIDATE=full`` refuses it) was computed with expert 0 and is stored with
    weight 0, so it adds nothing and nothing is written outside the buffers.
    """
    tile = tl.program_id(0)
    expert = tl.load(tile_expert_ptr + tile)
    if expert < 0:
        return
    pid_n = tl.program_id(1)
    offs_m = tile * BLOCK_M + tl.arange(0, BLOCK_M)
    rows = tl.load(sorted_ptr + offs_m)
    rmask = rows < N_rows
    if A_SORTED:
        a_rows = offs_m.to(tl.int64)
    else:
        a_rows = (rows // TOPK).to(tl.int64)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    nmask = offs_n < N_out
    offs_k = tl.arange(0, BLOCK_K)
    a_ptrs = a_ptr + a_rows[:, None] * stride_am + offs_k[None, :]
    w_base = w_ptr + expert.to(tl.int64) * stride_we
    w_ptrs = w_base + offs_n[None, :].to(tl.int64) * stride_wn + offs_k[:, None]
    acc = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    if GATED:
        u_ptrs = w_ptrs + N_out * stride_wn
        acc_u = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kmask = (k0 + offs_k) < K
        a = tl.load(a_ptrs, mask=rmask[:, None] & kmask[None, :], other=0.0)
        w = tl.load(w_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
        acc += tl.dot(a, w, input_precision=DOT_PREC)
        if GATED:
            u = tl.load(u_ptrs, mask=kmask[:, None] & nmask[None, :], other=0.0)
            acc_u += tl.dot(a, u, input_precision=DOT_PREC)
            u_ptrs += BLOCK_K
        a_ptrs += BLOCK_K
        w_ptrs += BLOCK_K
    omask = rmask[:, None] & nmask[None, :]
    if GATED:
        act = acc / (1.0 + tl.exp(-acc)) * acc_u
        tl.store(out_ptr + offs_m.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
                 act.to(out_ptr.dtype.element_ty), mask=omask)
    else:
        rw = tl.load(route_w_ptr + rows, mask=rmask, other=0.0).to(tl.float32)
        route_ids = tl.load(ids_ptr + rows, mask=rmask, other=0)
        rw = tl.where((route_ids < 0) | (route_ids >= E), 0.0, rw)
        acc = acc * rw[:, None]
        tl.store(out_ptr + rows.to(tl.int64)[:, None] * stride_om + offs_n[None, :],
                 acc.to(out_ptr.dtype.element_ty), mask=omask)


def _gemm_config(rows_per_expert: float, dtype: torch.dtype) -> tuple[int, int, int, int, int]:
    """(BLOCK_M, BLOCK_N, BLOCK_K, num_warps, num_stages) by the average rows per expert."""
    if interpreting():
        return 16, 64, 64, 4, 1  # few, large blocks: per-op Python overhead dominates
    if dtype == torch.float32:
        return 32, 64, 32, 4, 2
    if rows_per_expert <= 16:
        return 16, 64, 128, 4, 4
    if rows_per_expert <= 48:
        return 32, 64, 128, 4, 4
    if rows_per_expert <= 128:
        return 64, 128, 64, 8, 3
    return 128, 128, 64, 8, 3


def fused_moe_fwd(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor,
) -> torch.Tensor:
    """``x [T, H]``, experts ``gate_up [E, 2I, H]`` / ``down [E, H, I]``, routing ``[T, k]`` -> ``[T, H]``."""
    T, H = x.shape
    E, I2, _ = gate_up.shape
    inter = I2 // 2
    k = topk_ids.shape[1]
    N = T * k
    if N == 0:
        return torch.zeros((T, H), dtype=x.dtype, device=x.device)
    x = x.contiguous()
    gate_up = gate_up if gate_up.stride(-1) == 1 else gate_up.contiguous()
    down = down if down.stride(-1) == 1 else down.contiguous()
    ids = topk_ids.reshape(-1)
    ids = ids if ids.is_contiguous() else ids.contiguous()
    route_w = topk_weights.reshape(-1).contiguous()

    bm, bn, bk, warps, stages = _gemm_config(N / E, x.dtype)
    max_padded = N + min(N, E) * (bm - 1)
    max_padded = cdiv(max_padded, bm) * bm
    max_tiles = max_padded // bm
    dev = x.device
    sorted_rows = torch.empty((max_padded,), dtype=torch.int32, device=dev)
    tile_expert = torch.empty((max_tiles,), dtype=torch.int32, device=dev)
    cursor = torch.empty((E,), dtype=torch.int32, device=dev)
    block_e = next_pow2(E)
    _moe_align_kernel[(1,)](ids, sorted_rows, tile_expert, cursor, N, E, max_padded, max_tiles,
                            BLOCK_M=bm, BLOCK_E=block_e, CHUNK=max(16, min(1024, 8192 // block_e)), num_warps=4)
    _moe_scatter_kernel[(cdiv(N, 256),)](ids, sorted_rows, cursor, N, E, BLOCK=256, num_warps=4)

    prec = dot_precision(x.dtype)
    act = torch.empty((max_padded, inter), dtype=x.dtype, device=dev)
    _moe_gemm_kernel[(max_tiles, cdiv(inter, bn))](
        x, gate_up, act, sorted_rows, tile_expert, route_w, ids,
        N, inter, H, k, E,
        x.stride(0), gate_up.stride(0), gate_up.stride(1), act.stride(0),
        GATED=True, A_SORTED=False, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PREC=prec,
        num_warps=warps, num_stages=stages,
    )
    out_rows = torch.empty((N, H), dtype=x.dtype if k == 1 else torch.float32, device=dev)
    _moe_gemm_kernel[(max_tiles, cdiv(H, bn))](
        act, down, out_rows, sorted_rows, tile_expert, route_w, ids,
        N, H, inter, k, E,
        act.stride(0), down.stride(0), down.stride(1), out_rows.stride(0),
        GATED=False, A_SORTED=True, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT_PREC=prec,
        num_warps=warps, num_stages=stages,
    )
    if k == 1:
        return out_rows
    return out_rows.view(T, k, H).sum(dim=1).to(x.dtype)
