"""Quantised ops.

dynamic_quant        -> npu_dynamic_quant (§2.23).
linear_w8a8          -> npu_quant_matmul (§2.24) within its A2/A3 dtype table: bf16 output with
                        fp32 per-token scale and fp32 bias; fp16 output with per-token scale and the
                        bias added afterwards (no bias dtype is listed for that pair); fp32 output
                        via the int32-output form, dequantised here.
weight_quant_prepare -> AWQ checkpoint to the npu_weight_quant_batchmatmul int4 layout (§2.22):
                        int32 [IN, OUT/8], column 8c+i in bits 4i..4i+3 (LSB first), signed
                        (q - 8), with antiquant offset 8 - z so (q - z)*s == (q_signed + off)*s.
weight_quant_matmul  -> npu_weight_quant_batchmatmul with per-group (g % 32 == 0, g < IN) or
                        per-channel (g == IN) scale/offset.
"""

from __future__ import annotations

import torch
from dlinfer.spec import AWQ_ORDER

from dlinfer_ascend.ops._common import unsupported
from dlinfer_ascend.ops._kernels import K


def dynamic_quant(x: torch.Tensor, *, dtype: torch.dtype = torch.int8
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H] -> (int8 [..., H], fp32 scale [...]), scale = max|x|/127 per token."""
    if dtype != torch.int8:
        raise unsupported("dynamic_quant", "dtype", f"{dtype}; only int8 is wired")
    return K.npu.npu_dynamic_quant(x.contiguous())


def linear_w8a8(x_q: torch.Tensor, w_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
                bias: torch.Tensor | None = None, *, out_dtype: torch.dtype = torch.float16
                ) -> torch.Tensor:
    """(x_q [...,IN] @ w_q [OUT,IN].T) * x_scale[..., None] * w_scale (+ bias) -> [..., OUT]."""
    lead, n_in = x_q.shape[:-1], x_q.shape[-1]
    x2 = x_q.reshape(-1, n_in)
    xs = x_scale.reshape(-1).float()
    ws = w_scale.float()
    if out_dtype == torch.bfloat16:
        y = K.npu.npu_quant_matmul(x2, w_q.t(), ws, pertoken_scale=xs,
                                   bias=None if bias is None else bias.float(),
                                   output_dtype=torch.bfloat16)
    elif out_dtype == torch.float16:
        y = K.npu.npu_quant_matmul(x2, w_q.t(), ws, pertoken_scale=xs, output_dtype=torch.float16)
        if bias is not None:
            y = (y.float() + bias.float()).to(torch.float16)
    elif out_dtype == torch.float32:
        acc = K.npu.npu_quant_matmul(x2, w_q.t(), torch.ones_like(ws), output_dtype=torch.int32)
        y = acc.float() * xs[:, None] * ws
        if bias is not None:
            y = y + bias.float()
    else:
        raise unsupported("linear_w8a8", "out_dtype", f"{out_dtype}")
    return y.reshape(*lead, w_q.shape[0])


def _unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] in AWQ nibble order -> int32 [R, C] (values 0..15, column order)."""
    shifts = torch.arange(0, 32, 4, dtype=torch.int32, device=packed.device)
    nib = (packed.unsqueeze(-1) >> shifts) & 0xF
    inverse = [AWQ_ORDER.index(j) for j in range(8)]
    return nib[..., inverse].reshape(packed.shape[0], -1)


def _pack_int4_lsb(values: torch.Tensor) -> torch.Tensor:
    """int [R, C] in -8..7 -> int32 [R, C/8]; column 8c+i in bits 4i..4i+3 (two's complement)."""
    r, c = values.shape
    nib = (values.to(torch.int64) & 0xF).reshape(r, c // 8, 8)
    shifts = torch.arange(0, 32, 4, dtype=torch.int64, device=values.device)
    packed = (nib << shifts).sum(-1)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)


def weight_quant_prepare(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, *,
                         group_size: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """AWQ (qweight int32 [IN,OUT/8], scales [IN/g,OUT], qzeros int32 [IN/g,OUT/8]) ->
    (int4-packed int32 [IN,OUT/8], scales [IN/g,OUT], antiquant offset [IN/g,OUT] in scales' dtype)."""
    n_in = qweight.shape[0]
    if group_size != n_in and (group_size % 32 or group_size < 32):
        raise unsupported("weight_quant_matmul", "group_size",
                          f"{group_size}; npu_weight_quant_batchmatmul needs a multiple of 32 or IN")
    q = _unpack_awq(qweight) - 8
    offset = (8 - _unpack_awq(qzeros)).to(scales.dtype)
    return _pack_int4_lsb(q), scales, offset


def weight_quant_matmul(x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor,
                        qzeros: torch.Tensor, bias: torch.Tensor | None = None, *, group_size: int
                        ) -> torch.Tensor:
    """x [..., IN] @ dequant(W) -> [..., OUT], with (qweight, scales, qzeros) from weight_quant_prepare."""
    lead, n_in = x.shape[:-1], x.shape[-1]
    n_out = scales.shape[-1]
    per_group = group_size < n_in
    sc = scales if scales.dtype == x.dtype else scales.to(x.dtype)
    off = qzeros if qzeros.dtype == x.dtype else qzeros.to(x.dtype)
    if not per_group:
        sc, off = sc.reshape(1, n_out), off.reshape(1, n_out)
    b = None
    if bias is not None:
        b = bias.to(torch.float16) if x.dtype == torch.float16 else bias.float()
    y = K.npu.npu_weight_quant_batchmatmul(x.reshape(-1, n_in).contiguous(), qweight, sc, off,
                                           bias=b, antiquant_group_size=group_size if per_group else 0)
    return y.reshape(*lead, n_out)
