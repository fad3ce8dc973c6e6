"""Argument translation shared by the camb attention ops (spec options -> tmo kernel arguments)."""

from __future__ import annotations

import math

import torch

from dlinfer_camb.ops._common import unsupported

#: flash_attention's paged mode serves block size 16 only (TMO-NEW; UNCONFIRMED for 1.5.0,
#: docs/vendor-semantics.md §3.5).
FLASH_PAGED_BLOCK_SIZES = (16,)
#: single_query_cached_kv_attn serves block sizes 1..64 (TMO-NEW, docs/vendor-semantics.md §3.6).
DECODE_MAX_BLOCK_SIZE = 64


def softmax_scale(scale: float | None, head_dim: int) -> float:
    return 1.0 / math.sqrt(head_dim) if scale is None else float(scale)


def window_left(op: str, window: int | None) -> int:
    """Spec window w (keys p-w < j <= p, w keys) -> tmo window_size_left w-1 (w-1 keys left of p); None -> -1."""
    if window is None:
        return -1
    if window < 1:
        raise unsupported(op, f"window={window}", "tmo windows keep at least the query's own key")
    return int(window) - 1


def refuse_softcap(op: str, softcap: float | None) -> None:
    if softcap is not None:
        raise unsupported(op, "softcap", "torch_mlu_ops attention kernels have no logit soft-capping argument")


def alibi(op: str, slopes: torch.Tensor | None, causal: bool) -> torch.Tensor | None:
    """ALiBi slopes fp32 [Hq]. Served for causal attention only, where every bias convention
    (slope*(j-p), -slope*|p-j|, slope*j) gives the same softmax; tmo's non-causal convention is UNCONFIRMED."""
    if slopes is None:
        return None
    if not causal:
        raise unsupported(op, "alibi_slopes with causal=False",
                          "the ALiBi bias of tmo.flash_attention for non-causal attention is not documented")
    return slopes.to(torch.float32).contiguous()
