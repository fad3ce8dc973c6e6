"""Helpers shared by the camb op adaptors: the bound tmo module and NotImplementedError messages."""

from __future__ import annotations

from types import ModuleType

import torch

from dlinfer_camb import BACKEND_NAME

#: Activation dtypes the torch_mlu_ops kernels serve (docs/vendor-semantics.md §3: "half/bf16 (some fp32)").
HALF_DTYPES = (torch.float16, torch.bfloat16)
#: The KV-cache layout of every camb cache / paged-attention kernel (docs/vendor-semantics.md §3 intro).
KV_LAYOUT = "HND"


class _Kernels:
    """Holds the torch_mlu_ops module once ``load_ops`` has imported and checked it."""

    tmo: ModuleType


K = _Kernels()


def bind(tmo: ModuleType) -> None:
    K.tmo = tmo


def unsupported(op: str, option: str, why: str) -> NotImplementedError:
    return NotImplementedError(f"dlinfer.ops.{op}: {option} is not supported by the '{BACKEND_NAME}' backend ({why})")


def require_half(op: str, *tensors: torch.Tensor) -> None:
    """Refuse dtypes the kernels do not take (fp16 / bf16 only)."""
    for t in tensors:
        if t.dtype not in HALF_DTYPES:
            raise unsupported(op, f"dtype={t.dtype}", "torch_mlu_ops kernels take float16 / bfloat16")


def require_layout(op: str, kv_layout: str | None) -> None:
    if kv_layout not in (None, KV_LAYOUT):
        raise unsupported(op, f"kv_layout={kv_layout!r}",
                          "torch_mlu_ops caches are HND: (num_blocks, kv_heads, block_size, head_dim)")
