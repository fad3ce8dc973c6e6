"""Simulated RMSNorm kernels (torch.ops.npu.npu_rms_norm / npu_add_rms_norm)."""

from __future__ import annotations

import torch

from ._contract import FLOAT_DTYPES, check, device_tensor


def _rms(x32: torch.Tensor, gamma: torch.Tensor, eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    dims = tuple(range(x32.dim() - gamma.dim(), x32.dim()))
    rstd = torch.rsqrt(x32.pow(2).mean(dim=dims, keepdim=True) + eps)
    return x32 * rstd * gamma.float(), rstd


def _check_gamma(fn: str, x: torch.Tensor, gamma: torch.Tensor) -> None:
    device_tensor(fn, "gamma", gamma, dtypes=FLOAT_DTYPES)
    check(gamma.dim() <= x.dim() and tuple(x.shape[x.dim() - gamma.dim():]) == tuple(gamma.shape),
          fn, f"gamma shape {tuple(gamma.shape)} must equal the trailing dims of x {tuple(x.shape)}")
    check(gamma.dtype in (x.dtype, torch.float32), fn,
          f"gamma dtype must be x dtype or float32, got {gamma.dtype} for x {x.dtype}")


def npu_rms_norm(x: torch.Tensor, gamma: torch.Tensor, epsilon: float = 1e-6
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.1 (OP-YAML; OP-META; OP-DOC:npu_rms_norm; OP-TEST golden).

    y = x·rsqrt(mean(x², gamma dims)+eps)·gamma in fp32, cast to x dtype; rstd fp32.
    """
    fn = "npu_rms_norm"
    device_tensor(fn, "self", x, dtypes=FLOAT_DTYPES)
    _check_gamma(fn, x, gamma)
    y, rstd = _rms(x.float(), gamma, epsilon)
    return y.to(x.dtype), rstd


def npu_add_rms_norm(x1: torch.Tensor, x2: torch.Tensor, gamma: torch.Tensor,
                     epsilon: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """docs/vendor-semantics.md §2.2 (OP-DOC:npu_add_rms_norm; OP-TEST golden).

    x = x1 + x2 rounded to the input dtype; y = rmsnorm(x) (fp32) in x1 dtype; returns (y, rstd, x).
    """
    fn = "npu_add_rms_norm"
    device_tensor(fn, "x1", x1, dtypes=FLOAT_DTYPES)
    device_tensor(fn, "x2", x2, dtypes=(x1.dtype,))
    check(x1.shape == x2.shape, fn, f"x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)} must match")
    _check_gamma(fn, x1, gamma)
    s = x1 + x2
    y, rstd = _rms(s.float(), gamma, epsilon)
    return y.to(x1.dtype), rstd, s
