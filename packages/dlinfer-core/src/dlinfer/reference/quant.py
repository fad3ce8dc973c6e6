"""Per-token int8 quantisation, W8A8 linear and AWQ W4A16 matmul."""

from __future__ import annotations

import torch

from dlinfer.spec import AWQ_ORDER

_INT8_MAX = 127.0


def dynamic_quant(x: torch.Tensor, *, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric per-token: scale = max|x| / 127 (fp32 [...]); x_q = round(x / scale) (int8 [..., H])."""
    if dtype != torch.int8:
        raise NotImplementedError(
            f"dlinfer.ops.dynamic_quant: dtype={dtype} is not supported by 'reference' (int8 only)"
        )
    x32 = x.float()
    scale = x32.abs().amax(-1) / _INT8_MAX
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    x_q = torch.round(x32 / safe[..., None]).clamp_(-_INT8_MAX, _INT8_MAX).to(torch.int8)
    return x_q, scale


def linear_w8a8(
    x_q: torch.Tensor,
    w_q: torch.Tensor,
    x_scale: torch.Tensor,
    w_scale: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """(x_q @ w_q.T) * x_scale[..., None] * w_scale (+ bias); the int GEMM is exact (fp64)."""
    acc = torch.matmul(x_q.double(), w_q.double().t())
    out = acc * x_scale.double()[..., None] * w_scale.double()
    if bias is not None:
        out = out + bias.double()
    return out.to(out_dtype)


def unpack_awq(packed: torch.Tensor) -> torch.Tensor:
    """int32 [R, C/8] in AWQ nibble order -> int32 [R, C] of 4-bit values in column order."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    nibbles = (packed[..., None] >> shifts) & 0xF  # [R, C/8, 8]; nibble i is column AWQ_ORDER[i]
    inverse = [AWQ_ORDER.index(j) for j in range(8)]
    return nibbles[..., inverse].reshape(packed.shape[0], -1)


def dequant_awq(qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, group_size: int) -> torch.Tensor:
    """Canonical AWQ tensors -> fp32 weight [IN, OUT]."""
    q = unpack_awq(qweight).float()
    z = unpack_awq(qzeros).float().repeat_interleave(group_size, 0)
    s = scales.float().repeat_interleave(group_size, 0)
    return (q - z) * s


def weight_quant_prepare(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, *, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The reference consumes the canonical AWQ layout as it is."""
    return qweight, scales, qzeros


def weight_quant_matmul(
    x: torch.Tensor,
    qweight: torch.Tensor,
    scales: torch.Tensor,
    qzeros: torch.Tensor,
    bias: torch.Tensor | None,
    *,
    group_size: int,
) -> torch.Tensor:
    """x [..., IN] @ dequant(W) [IN, OUT] (+ bias) in fp32, returned in x.dtype."""
    out = torch.matmul(x.float(), dequant_awq(qweight, scales, qzeros, group_size))
    if bias is not None:
        out = out + bias.float()
    return out.to(x.dtype)
