"""Simulated activations (torch.ops.npu.npu_swiglu / npu_silu)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._contract import FLOAT_DTYPES, check, device_tensor


def npu_swiglu(x: torch.Tensor, dim: int = -1) -> torch.Tensor:
    """docs/vendor-semantics.md §2.5 (OP-DOC:(beta)npu_swiglu): out = silu(a)·b, a/b = first/second half on dim."""
    fn = "npu_swiglu"
    device_tensor(fn, "self", x, dtypes=FLOAT_DTYPES)
    check(x.shape[dim] % 2 == 0, fn, f"size {x.shape[dim]} along dim {dim} must be even")
    a, b = x.float().chunk(2, dim=dim)
    return (F.silu(a) * b).to(x.dtype)


def npu_silu(x: torch.Tensor) -> torch.Tensor:
    """docs/vendor-semantics.md §2.5 (OP-YAML): plain SiLU."""
    device_tensor("npu_silu", "self", x, dtypes=FLOAT_DTYPES)
    return F.silu(x.float()).to(x.dtype)
