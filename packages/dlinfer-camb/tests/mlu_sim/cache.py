"""Simulated tmo.reshape_paged_cache (docs/vendor-semantics.md §3.4; VMLU, TMO-NEW)."""

from __future__ import annotations

import torch

from ._contract import HALF, fail, same_dtype, tensor


def _scatter(fn: str, name: str, src: torch.Tensor, cache: torch.Tensor, slots: list[int]) -> None:
    """src [T, H, d] into cache [NB, H, BS, d] at slot s -> (s // BS, :, s % BS, :); negative slots skipped."""
    tensor(fn, name, cache, ndim=4)
    same_dtype(fn, name, cache, src, "k")
    nb, h, bs, d = cache.shape
    if src.shape[1] != h or src.shape[2] != d:
        raise fail(fn, name, f"cache [num_blocks, kv_heads, block_size, d] = {list(cache.shape)} does not match "
                             f"tokens [T, kv_heads, d] = {list(src.shape)}")
    if max(slots, default=-1) >= nb * bs:
        raise fail(fn, "slot_mapping", f"slot {max(slots)} outside the cache ({nb} blocks x {bs})")
    for i, s in enumerate(slots):
        if s >= 0:
            cache[s // bs, :, s % bs, :] = src[i]


def reshape_paged_cache(
    k: torch.Tensor,
    v: torch.Tensor | None,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor | None,
    slot_mapping: torch.Tensor,
) -> None:
    """§3.4: in-place scatter of k/v [tokens, kv_heads, d] into heads-first caches; int32 slots, -1 skipped."""
    fn = "reshape_paged_cache"
    tensor(fn, "k", k, ndim=3, dtypes=HALF)
    tensor(fn, "slot_mapping", slot_mapping, ndim=1, dtypes=(torch.int32,))
    if slot_mapping.shape[0] != k.shape[0]:
        raise fail(fn, "slot_mapping", f"{slot_mapping.shape[0]} slots for {k.shape[0]} tokens")
    slots = slot_mapping.tolist()
    _scatter(fn, "k_cache", k, k_cache, slots)
    if v is not None:
        tensor(fn, "v", v, ndim=3, dtypes=(k.dtype,))
        if v.shape[:2] != k.shape[:2]:
            raise fail(fn, "v", f"shape {list(v.shape)} does not match k {list(k.shape)} in tokens / heads")
        if v_cache is None:
            raise fail(fn, "v_cache", "required when v is given")
        if v_cache.shape[:3] != k_cache.shape[:3]:
            raise fail(fn, "v_cache", f"shape {list(v_cache.shape)} does not match k_cache {list(k_cache.shape)}")
        _scatter(fn, "v_cache", v, v_cache, slots)
