"""Simulated tmo.fused_rms_norm (docs/vendor-semantics.md §3.1, TMO-NEW _ops.py)."""

from __future__ import annotations

import torch

from ._contract import HALF, NotModelled, fail, same_dtype, shape, tensor


def fused_rms_norm(
    x: torch.Tensor,
    residual: torch.Tensor | None,
    gamma: torch.Tensor,
    beta: torch.Tensor | None,
    bias: torch.Tensor | None,
    eps: float,
    store_output_before_norm: bool,
    quant_scale: torch.Tensor | None = None,
    out: torch.Tensor | None = None,
    *,
    dynamic_quant: bool = False,
    store_output_after_norm: bool = False,
) -> torch.Tensor | tuple[torch.Tensor, ...]:
    """§3.1: x1 = x (+bias) (+residual); y = x1 * rsqrt(mean(x1^2) + eps) * gamma (+beta), fp32 inside.

    x 2-D/3-D [..., H] half/bf16; gamma [H]. Returns y, or (y, x1) with store_output_before_norm.
    Flags after the 9th argument are keyword-only here: their 1.5.0 positions are UNCONFIRMED (§5 item 6).
    """
    fn = "fused_rms_norm"
    tensor(fn, "x", x, ndim=(2, 3), dtypes=HALF)
    h = x.shape[-1]
    tensor(fn, "gamma", gamma, ndim=1)
    shape(fn, "gamma", gamma, (h,))
    same_dtype(fn, "gamma", gamma, x, "x")
    if not isinstance(eps, float):
        raise fail(fn, "eps", f"expected a float, got {type(eps).__name__}")
    if not isinstance(store_output_before_norm, bool):
        raise fail(fn, "store_output_before_norm", f"expected a bool, got {type(store_output_before_norm).__name__}")
    if dynamic_quant or store_output_after_norm or quant_scale is not None:
        raise NotModelled(f"torch_mlu_ops.{fn}: quantised outputs are not modelled (smoothing detail UNCONFIRMED)")
    x1 = x.float()
    for name, extra in (("bias", bias), ("residual", residual)):
        if extra is not None:
            tensor(fn, name, extra, dtypes=(x.dtype,))
            if name == "residual":
                shape(fn, name, extra, tuple(x.shape))
            else:
                shape(fn, name, extra, (h,))
            x1 = x1 + extra.float()
    y = x1 * torch.rsqrt(x1.pow(2).mean(-1, keepdim=True) + eps) * gamma.float()
    if beta is not None:
        tensor(fn, "beta", beta, ndim=1, dtypes=(x.dtype,))
        y = y + beta.float()
    y = y.to(x.dtype)
    if out is not None:
        tensor(fn, "out", out, dtypes=(x.dtype,))
        shape(fn, "out", out, tuple(x.shape))
        out.copy_(y)
        y = out
    return (y, x1.to(x.dtype)) if store_output_before_norm else y
