"""W8A8 (dynamic per-token int8) linear and norms, and W4A16 (AWQ) linear, on ``dlinfer.ops``."""

from __future__ import annotations

import torch
import torch.distributed as dist
from dlinfer import ops
from lmdeploy.pytorch.backends.awq_modules import LinearW4A16Impl
from lmdeploy.pytorch.backends.qmodules import LinearW8A8Impl, RMSNormW8A8Impl
from lmdeploy.pytorch.models.q_modules import QTensor

from dlinfer_lmdeploy.impls._errors import unsupported
from dlinfer_lmdeploy.impls.dense import tp_reduce


def _check_int8(op: str, quant_dtype: torch.dtype | None) -> None:
    if quant_dtype not in (None, torch.int8):
        raise unsupported(op, "quant_dtype", f"{quant_dtype} (dlinfer's W8A8 ops are int8)")


class DlinferRMSNormW8A8Impl(RMSNormW8A8Impl):
    def __init__(self, hidden_size: int, eps: float = 1e-6, quant_dtype: torch.dtype = torch.int8) -> None:
        _check_int8("rms_norm_w8a8", quant_dtype)
        self.hidden_size = hidden_size
        self.eps = eps

    def forward(
        self, x: torch.Tensor, weight: torch.Tensor, residual: torch.Tensor | None = None
    ) -> QTensor | tuple[QTensor, torch.Tensor]:
        if residual is None:
            x_q, scale = ops.rms_norm_w8a8(x, weight, eps=self.eps)
            return QTensor(x_q, scale)
        x_q, scale, summed = ops.add_rms_norm_w8a8(x, residual, weight, eps=self.eps)
        return QTensor(x_q, scale), summed


class DlinferLinearW8A8Impl(LinearW8A8Impl):
    def __init__(self, out_dtype: torch.dtype | None, quant_dtype: torch.dtype | None) -> None:
        _check_int8("linear_w8a8", quant_dtype)
        self.out_dtype = out_dtype or torch.float16

    def update_weights(
        self, weight: torch.Tensor, scale: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        # LMDeploy stores the per-channel weight scale as [out, 1]; the spec takes [out] fp32.
        return weight, scale.reshape(-1).float(), bias

    def forward(
        self,
        x: QTensor | torch.Tensor,
        weight: torch.Tensor,
        scale: torch.Tensor,
        bias: torch.Tensor | None = None,
        all_reduce: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> torch.Tensor:
        if isinstance(x, QTensor):
            x_q, x_scale = x.tensor, x.scale
        else:
            x_q, x_scale = ops.dynamic_quant(x, dtype=torch.int8)
        w_scale = scale.reshape(-1)
        out = ops.linear_w8a8(x_q, weight, x_scale.reshape(x_q.shape[:-1]), w_scale, bias, out_dtype=self.out_dtype)
        return tp_reduce(out, all_reduce, group, 0, None)


class DlinferLinearW4A16Impl(LinearW4A16Impl):
    """AWQ int4 weights; the backend converts the canonical AWQ layout once, in ``update_weights``."""

    def __init__(self, in_features: int, out_features: int, w_bit: int, group_size: int) -> None:
        if w_bit != 4:
            raise unsupported("weight_quant_matmul", "w_bit", f"{w_bit}-bit weights")
        self.in_features = in_features
        self.out_features = out_features
        self.group_size = group_size

    def update_weights(
        self, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, bias: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
        qweight, scales, qzeros = ops.weight_quant_prepare(qweight, scales, qzeros, group_size=self.group_size)
        return qweight, scales, qzeros, bias

    def forward(
        self,
        x: torch.Tensor,
        qweight: torch.Tensor,
        scales: torch.Tensor,
        qzeros: torch.Tensor,
        bias: torch.Tensor | None = None,
        all_reduce: bool = False,
        group: dist.ProcessGroup | None = None,
    ) -> torch.Tensor:
        out = ops.weight_quant_matmul(x, qweight, scales, qzeros, bias, group_size=self.group_size)
        return tp_reduce(out, all_reduce, group, 0, None)
