"""Paged KV cache: writing new tokens and gathering a sequence's context."""

from __future__ import annotations

import torch


def block_size(cache: torch.Tensor, kv_layout: str) -> int:
    return cache.shape[1] if kv_layout == "NHD" else cache.shape[2]


def fill_kv_cache(
    key: torch.Tensor,
    value: torch.Tensor,
    key_cache: torch.Tensor,
    value_cache: torch.Tensor,
    slot_mapping: torch.Tensor,
    *,
    kv_layout: str | None,
) -> None:
    """Scatter key/value [T, Hkv, D(v)] into the caches at slot_mapping [T]; -1 slots are skipped."""
    layout = kv_layout or "NHD"
    bs = block_size(key_cache, layout)
    keep = slot_mapping >= 0
    slots = slot_mapping[keep].long()
    blocks, offsets = slots // bs, slots % bs
    if layout == "NHD":
        key_cache[blocks, offsets] = key[keep].to(key_cache.dtype)
        value_cache[blocks, offsets] = value[keep].to(value_cache.dtype)
    else:
        key_cache[blocks, :, offsets] = key[keep].to(key_cache.dtype)
        value_cache[blocks, :, offsets] = value[keep].to(value_cache.dtype)


def gather(cache: torch.Tensor, blocks: torch.Tensor, length: int, kv_layout: str) -> torch.Tensor:
    """The first ``length`` tokens of one sequence from its block ids -> [length, Hkv, D]."""
    picked = cache[blocks.long()]
    if kv_layout == "HND":
        picked = picked.transpose(1, 2)
    return picked.reshape(-1, *picked.shape[2:])[:length]
