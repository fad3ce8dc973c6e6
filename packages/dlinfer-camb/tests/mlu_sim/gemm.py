"""Simulated tmo.matmul (§3.13), tmo.per_token_smooth_quantize (§3.15) and tmo.smooth_quant_matmul (§3.16)
(docs/vendor-semantics.md; TMO-1.3.2, TMO-NEW, VMLU)."""

from __future__ import annotations

import torch

from ._contract import HALF, NotModelled, fail, shape, tensor


def matmul(
    a: torch.Tensor,
    b: torch.Tensor,
    bias: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    act_mode: str = "none",
    alpha: float = 1.0,
    beta: float = 0.0,
    fast_act: bool = True,
    approximate: bool = True,
) -> torch.Tensor:
    """§3.13: a [m, k], b [n, k] (nn.Linear layout, transposed inside) -> a @ b^T + bias, [m, n] in a's dtype.
    2-D only. alpha/beta/c/activation are not modelled (their order relative to bias is UNCONFIRMED)."""
    fn = "matmul"
    tensor(fn, "a", a, ndim=2, dtypes=HALF)
    tensor(fn, "b", b, ndim=2, dtypes=(a.dtype,))
    if b.shape[1] != a.shape[1]:
        raise fail(fn, "b", f"expected [n, {a.shape[1]}] (nn.Linear layout), got {list(b.shape)}")
    if c is not None or act_mode != "none" or alpha != 1.0 or beta != 0.0:
        raise NotModelled(f"torch_mlu_ops.{fn}: c / alpha / beta / activations are not modelled")
    out = a.float() @ b.float().t()
    if bias is not None:
        tensor(fn, "bias", bias, ndim=1, dtypes=(a.dtype,))
        shape(fn, "bias", bias, (b.shape[0],))
        out = out + bias.float()
    return out.to(a.dtype)


def per_token_smooth_quantize(
    x: torch.Tensor,
    smooth: torch.Tensor,
    zero: torch.Tensor | None = None,
    token_count: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """§3.15: xs = x * smooth (fp32 [H], mandatory); scale = max|xs| / 127 per token (fp32 x.shape[:-1]);
    q = round(xs / scale).clamp(-128, 127) int8. Exact math UNCONFIRMED; all-zero rows (scale 0) give q = 0 here
    (device behaviour UNCONFIRMED). x is taken as [tokens, H]."""
    fn = "per_token_smooth_quantize"
    tensor(fn, "x", x, ndim=2, dtypes=HALF)
    tensor(fn, "smooth", smooth, ndim=1, dtypes=(torch.float32,))
    shape(fn, "smooth", smooth, (x.shape[-1],))
    if zero is not None or token_count is not None:
        raise NotModelled(f"torch_mlu_ops.{fn}: zero / token_count are not modelled")
    xs = x.float() * smooth
    scale = xs.abs().amax(-1) / 127.0
    safe = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(xs / safe[..., None]).clamp(-128, 127).to(torch.int8)
    return q, scale


def smooth_quant_matmul(
    a: torch.Tensor,
    a_scale: torch.Tensor | None,
    b: torch.Tensor,
    b_scale: torch.Tensor,
    dtype: torch.dtype,
    bias: torch.Tensor | None = None,
    c: torch.Tensor | None = None,
    act_mode: str = "none",
    alpha: float = 1.0,
    beta: float = 1.0,
    use_hp_active: bool = False,
) -> torch.Tensor:
    """§3.16: a int8 [M, K], a_scale fp32 [M] (or None), b int8 [N, K], b_scale fp32 [N]
    -> (a @ b^T) * a_scale[m] * b_scale[n] + bias, [M, N] in ``dtype`` (half / bf16 / fp32)."""
    fn = "smooth_quant_matmul"
    tensor(fn, "a", a, ndim=2, dtypes=(torch.int8,))
    tensor(fn, "b", b, ndim=2, dtypes=(torch.int8,))
    if b.shape[1] != a.shape[1]:
        raise fail(fn, "b", f"expected [N, {a.shape[1]}], got {list(b.shape)}")
    tensor(fn, "b_scale", b_scale, ndim=1, dtypes=(torch.float32,))
    shape(fn, "b_scale", b_scale, (b.shape[0],))
    if dtype not in (*HALF, torch.float32):
        raise fail(fn, "dtype", f"expected half / bfloat16 / float32, got {dtype}")
    if c is not None or act_mode != "none" or alpha != 1.0:
        raise NotModelled(f"torch_mlu_ops.{fn}: c / activations / alpha are not modelled")
    acc = a.double() @ b.double().t()  # exact int32 accumulation
    if a_scale is not None:
        tensor(fn, "a_scale", a_scale, ndim=1, dtypes=(torch.float32,))
        shape(fn, "a_scale", a_scale, (a.shape[0],))
        acc = acc * a_scale.double()[:, None]
    out = acc * b_scale.double()
    if bias is not None:
        tensor(fn, "bias", bias, ndim=1, dtypes=(dtype,))
        shape(fn, "bias", bias, (b.shape[0],))
        out = out + bias.double()
    return out.to(dtype)
