"""fill_kv_cache -> torch.ops.atb._npu_reshape_and_cache (docs/vendor-semantics.md §2.10)."""

from __future__ import annotations

import torch

from dlinfer_ascend.ops._common import check_layout
from dlinfer_ascend.ops._kernels import K


def fill_kv_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                  value_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                  kv_layout: str | None = None) -> None:
    """Scatter key [T,Hkv,D] / value [T,Hkv,Dv] into NHD caches [NB,BS,Hkv,D*] at int32 slots.

    Negative slots are skipped by the kernel; an empty step is skipped here (ATB rejects it).
    """
    check_layout("fill_kv_cache", kv_layout)
    if key.shape[0] == 0:
        return None
    slots = slot_mapping if slot_mapping.dtype == torch.int32 else slot_mapping.to(torch.int32)
    K.atb._npu_reshape_and_cache(key.contiguous(), value.contiguous(), key_cache, value_cache, slots)
    return None
