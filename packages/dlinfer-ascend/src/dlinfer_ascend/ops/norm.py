"""RMSNorm ops -> torch.ops.npu.npu_rms_norm / npu_add_rms_norm (+ npu_dynamic_quant).

docs/vendor-semantics.md §2.1, §2.2, §2.23.
"""

from __future__ import annotations

import torch

from dlinfer_ascend.ops._kernels import K


def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in x.dtype (fp32 inside the kernel)."""
    return K.npu.npu_rms_norm(x.contiguous(), weight, eps)[0]


def add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rms_norm(x + residual), x + residual); the kernel rounds the sum to x.dtype first."""
    y, _rstd, added = K.npu.npu_add_rms_norm(x.contiguous(), residual.contiguous(), weight, eps)
    return y, added


def rms_norm_w8a8(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (int8 [..., H], fp32 scale [...]) = dynamic_quant(rms_norm(x))."""
    return K.npu.npu_dynamic_quant(rms_norm(x, weight, eps=eps))


def add_rms_norm_w8a8(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *,
                      eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (int8 [..., H], fp32 scale [...], x + residual)."""
    normed, added = add_rms_norm(x, residual, weight, eps=eps)
    x_q, scale = K.npu.npu_dynamic_quant(normed)
    return x_q, scale, added
