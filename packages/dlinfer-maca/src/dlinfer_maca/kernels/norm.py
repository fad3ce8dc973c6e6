"""Row-wise fused kernels: RMSNorm (+ residual add) (+ per-token int8 quantisation).

One program handles one row of ``H`` elements held entirely in registers, so every input
is read once and every output written once: the kernels are bandwidth-bound by design.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._utils import interpreting, next_pow2, round_half_even
from .configs import QUANT_NORM_MANY_ROWS


@triton.jit
def _rint(x, HW_RINT: tl.constexpr):
    """Round to nearest, ties to even: one ``cvt.rni`` on the GPU, arithmetic in the interpreter."""
    if HW_RINT:
        return tl.extra.cuda.libdevice.rint(x)
    else:
        return round_half_even(x)


@triton.jit
def _quantize_row(y, cols, mask, q_ptr, scale_ptr, row, stride_q, HW_RINT: tl.constexpr):
    """Symmetric per-row int8: scale = max|y| / 127, q = round(y / scale)."""
    amax = tl.max(tl.abs(y), axis=0)  # masked lanes hold 0
    scale = amax / 127.0
    safe = tl.where(scale == 0.0, 1.0, scale)
    # y * (1 / scale) may differ from torch's y / scale by one step at exact ties (the spec allows it).
    # No clamp: |y| <= amax, so |y * (1 / scale)| <= 127 * (1 + 2**-23)**2 < 127.5 rounds into [-127, 127]
    # for finite rows (the min/max pair cost 20-25 % of the kernel at H 14336 on the H200, quant_row_probe_gpu.py)
    inv = 1.0 / safe
    if inv == float("inf"):  # a subnormal scale (max |y| < 3.7e-37): 1/scale overflows, so divide (one branch per row)
        q = _rint(tl.math.div_rn(y, safe), HW_RINT)
    else:
        q = _rint(y * inv, HW_RINT)
    tl.store(q_ptr + row * stride_q + cols, q.to(tl.int8), mask=mask)
    tl.store(scale_ptr + row, scale)


@triton.jit
def _rms_norm_kernel(
    x_ptr, res_ptr, w_ptr, out_ptr, added_ptr, scale_ptr,
    stride_x, stride_r, stride_o, stride_a,
    H: tl.constexpr, eps,
    BLOCK: tl.constexpr, HAS_RES: tl.constexpr, QUANT: tl.constexpr, HW_RINT: tl.constexpr, I64: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) if I64 else tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0)
    if HAS_RES:
        r = tl.load(res_ptr + row * stride_r + cols, mask=mask, other=0.0)
        s = (x.to(tl.float32) + r.to(tl.float32)).to(x.dtype)  # rounded sum, as the spec says
        tl.store(added_ptr + row * stride_a + cols, s, mask=mask)
        x = s
    xf = x.to(tl.float32)
    rstd = 1.0 / tl.sqrt(tl.sum(xf * xf, axis=0) / H + eps)
    w = tl.load(w_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    y = xf * rstd * w
    if QUANT:
        # quantise the normed row as rms_norm would return it (rounded to x.dtype)
        _quantize_row(y.to(x.dtype).to(tl.float32), cols, mask, out_ptr, scale_ptr, row, stride_o, HW_RINT)
    else:
        tl.store(out_ptr + row * stride_o + cols, y.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def _dynamic_quant_kernel(x_ptr, q_ptr, scale_ptr, stride_x: tl.constexpr, stride_q: tl.constexpr, H: tl.constexpr,
                          BLOCK: tl.constexpr, HW_RINT: tl.constexpr, I64: tl.constexpr):
    """One row per program. Strides and H are compile-time (a model has few distinct values): address math
    folds and a power-of-two H needs no mask."""
    row = tl.program_id(0).to(tl.int64) if I64 else tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    mask = cols < H
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    _quantize_row(x, cols, mask, q_ptr, scale_ptr, row, stride_q, HW_RINT)


def _rows(x: torch.Tensor) -> torch.Tensor:
    """View ``x`` as ``[rows, H]`` with a unit last stride (copies only when it must)."""
    x2 = x.reshape(-1, x.shape[-1])
    return x2 if x2.stride(-1) == 1 else x2.contiguous()


def _warps(block: int, quant: bool = False, rows: int = 1) -> int:
    """Warps per row program: one per 256 elements, at most 16; the quantising kernels (a second reduction over
    the row) at most 8, and 4 for rows of <= 4096 elements in batches of >= ``QUANT_NORM_MANY_ROWS`` rows (H200
    sweep, tools/tune_norm_decode_gpu.py)."""
    if quant:
        return 4 if block <= 4096 and rows >= QUANT_NORM_MANY_ROWS else min(max(block // 256, 1), 8)
    return min(max(block // 256, 1), 16)


def _hw_rint() -> bool:
    return not interpreting()


def _needs_i64(rows: int, cols: int, *row_strides: int) -> bool:
    """64-bit row offsets only where an element offset of a ``[rows, cols]`` view can pass 2**31."""
    return rows * max(row_strides) + cols >= 2**31


def rms_norm_fwd(
    x: torch.Tensor,
    weight: torch.Tensor,
    eps: float,
    residual: torch.Tensor | None = None,
    quant: bool = False,
    num_warps: int | None = None,
) -> tuple[torch.Tensor, ...]:
    """RMSNorm over the last dim of ``x [..., H]`` (fp16/bf16/fp32, weight ``[H]``).

    Returns ``(normed,)``, ``(normed, added)`` with a residual, and with ``quant`` the
    normed output is replaced by ``(x_q int8 [..., H], scale fp32 [...])``.
    """
    H = x.shape[-1]
    lead = x.shape[:-1]
    x2 = _rows(x)
    M = x2.shape[0]
    r2 = _rows(residual) if residual is not None else x2
    added = torch.empty_like(x2) if residual is not None else x2
    if quant:
        out = torch.empty((M, H), dtype=torch.int8, device=x.device)
        scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    else:
        out = torch.empty_like(x2)
        scale = out
    if M > 0:
        block = next_pow2(H)
        strides = (x2.stride(0), r2.stride(0), out.stride(0), added.stride(0))
        _rms_norm_kernel[(M,)](
            x2, r2, weight.contiguous(), out, added, scale,
            *strides,
            H, float(eps),
            BLOCK=block, HAS_RES=residual is not None, QUANT=quant, HW_RINT=quant and _hw_rint(),
            I64=_needs_i64(M, H, *strides),
            num_warps=_warps(block, quant, M) if num_warps is None else num_warps,
        )
    res: tuple[torch.Tensor, ...]
    res = (out.view(*lead, H), scale.view(lead)) if quant else (out.view(*lead, H),)
    if residual is not None:
        res = res + (added.view(*lead, H),)
    return res


def dynamic_quant_fwd(x: torch.Tensor, num_warps: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token symmetric int8 quantisation of ``x [..., H]`` -> ``(int8 [..., H], fp32 [...])``."""
    H = x.shape[-1]
    lead = x.shape[:-1]
    x2 = _rows(x)
    M = x2.shape[0]
    q = torch.empty((M, H), dtype=torch.int8, device=x.device)
    scale = torch.empty((M,), dtype=torch.float32, device=x.device)
    if M > 0:
        block = next_pow2(H)
        _dynamic_quant_kernel[(M,)](x2, q, scale, x2.stride(0), q.stride(0), H, BLOCK=block, HW_RINT=_hw_rint(),
                                    I64=_needs_i64(M, H, x2.stride(0), q.stride(0)),
                                    num_warps=_warps(block, True, M) if num_warps is None else num_warps)
    return q.view(*lead, H), scale.view(lead)
