"""KV-cache writes on tmo.reshape_paged_cache (docs/vendor-semantics.md §3.4)."""

from __future__ import annotations

import torch

from dlinfer_camb.ops._common import K, require_half, require_layout


def fill_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    kv_layout: str | None,
) -> None:
    """key [T, Hkv, D], value [T, Hkv, Dv] -> HND caches [NB, Hkv, BS, D|Dv] at slot_mapping [T]; -1 skips."""
    require_layout("fill_kv_cache", kv_layout)
    require_half("fill_kv_cache", key)
    slots = slot_mapping if slot_mapping.dtype == torch.int32 else slot_mapping.to(torch.int32)
    # LMDeploy's key/value are head slices of the fused qkv output; §3.4 does not say the kernel honours strides
    K.tmo.reshape_paged_cache(key.contiguous(), value.contiguous(), key_cache, value_cache, slots)
