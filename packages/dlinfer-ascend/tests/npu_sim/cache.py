"""Simulated KV-cache write: torch.ops.atb._npu_reshape_and_cache."""

from __future__ import annotations

import torch

from ._contract import FLOAT_DTYPES, check, device_tensor
from .graphs import one_kernel


@one_kernel  # selects the non-negative slots on the host: one graph node, run at replay (§2.28)
def _npu_reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, slot_indices: torch.Tensor) -> None:
    """vendor-apis.md §2.10 (OP-ATB:ReshapeAndCachAtb.cpp; golden skips negative slots).

    key [T,Hkv,Dk], value [T,Hkv,Dv], caches ND [nb,bs,Hkv,D*] mutated in place,
    slot_indices int32 [T] on device = block*bs + offset. Errors on an empty slot tensor
    (observed caveat, DL comment).
    """
    fn = "_npu_reshape_and_cache"
    device_tensor(fn, "key", key, dtypes=FLOAT_DTYPES, dim=3)
    device_tensor(fn, "value", value, dtypes=(key.dtype,), dim=3)
    device_tensor(fn, "key_cache", key_cache, dtypes=(key.dtype,), dim=4)
    device_tensor(fn, "value_cache", value_cache, dtypes=(key.dtype,), dim=4)
    device_tensor(fn, "slot_indices", slot_indices, dtypes=(torch.int32,), dim=1)
    t, h, dk = key.shape
    check(slot_indices.numel() > 0, fn, "empty slot_indices is rejected")
    check(slot_indices.shape[0] == t and value.shape[:2] == key.shape[:2], fn,
          f"key {tuple(key.shape)}, value {tuple(value.shape)}, slots {tuple(slot_indices.shape)} disagree")
    nb, bs = key_cache.shape[:2]
    check(tuple(key_cache.shape[2:]) == (h, dk), fn, f"key_cache {tuple(key_cache.shape)} is not (nb,bs,{h},{dk})")
    check(tuple(value_cache.shape) == (nb, bs, h, value.shape[2]), fn,
          f"value_cache {tuple(value_cache.shape)} is not ({nb},{bs},{h},{value.shape[2]})")
    slots = slot_indices.long()
    check(bool((slots < nb * bs).all()), fn, f"slot index >= num_blocks*block_size = {nb * bs}")
    keep = slots >= 0
    s = slots[keep]
    key_cache[s // bs, s % bs] = key[keep]
    value_cache[s // bs, s % bs] = value[keep]
