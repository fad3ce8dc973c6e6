"""Simulated KV-cache writes: torch.ops.atb._npu_reshape_and_cache, torch.ops.npu.npu_scatter_pa_kv_cache_functional."""

from __future__ import annotations

import torch

from ._contract import FLOAT_DTYPES, NotModelled, Unconfirmed, check, device_tensor
from .graphs import one_kernel


@one_kernel  # selects the non-negative slots on the host: one graph node, run at replay (§2.28)
def _npu_reshape_and_cache(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                           value_cache: torch.Tensor, slot_indices: torch.Tensor) -> None:
    """docs/vendor-semantics.md §2.10 (OP-ATB:ReshapeAndCachAtb.cpp; golden skips negative slots).

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


def npu_scatter_pa_kv_cache_functional(key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor,
                                       value_cache: torch.Tensor, slot_mapping: torch.Tensor, *,
                                       compress_lens: torch.Tensor | None = None,
                                       compress_seq_offsets: torch.Tensor | None = None,
                                       seq_lens: torch.Tensor | None = None,
                                       cache_mode: str | None = "PA_NZ") -> tuple[torch.Tensor, torch.Tensor]:
    """torch_npu 2.13.0 ``_op_plugin_docs.py:npu_scatter_pa_kv_cache`` scenario 2 (ND caches, ``cache_mode``
    'Norm'); functional form per ``_meta_registrations.py`` (returns new caches) and torchair's converter
    (``ge_converter/custom/npu_scatter_pa_kv_cache.py``: TensorMove of each cache, then ScatterPaKvCache).

    key [T,H,Dk], value [T,H,Dv], caches [nb,bs,H,D*] (same dtype as key), slot_mapping int32/int64 [T]:
    ``cache.view(-1,H,D)[slot[t]] = key[t]``. The docstring bounds slots to ``[0, nb*bs-1]`` and leaves
    duplicates undefined; op-plugin's test golden (test_scatter_pa_kv_cache.py) skips negative slots, but the
    documented contract does not, so negative slots raise Unconfirmed. PA_NZ and the compress scenarios are not
    modelled.
    """
    fn = "npu_scatter_pa_kv_cache_functional"
    if cache_mode != "Norm" or compress_lens is not None or compress_seq_offsets is not None or seq_lens is not None:
        raise NotModelled(f"{fn}: only cache_mode='Norm' without compress arguments is modelled (got {cache_mode!r})")
    device_tensor(fn, "key", key, dtypes=FLOAT_DTYPES, dim=3)
    device_tensor(fn, "value", value, dtypes=(key.dtype,), dim=3)
    device_tensor(fn, "key_cache", key_cache, dtypes=(key.dtype,), dim=4)
    device_tensor(fn, "value_cache", value_cache, dtypes=(key.dtype,), dim=4)
    device_tensor(fn, "slot_mapping", slot_mapping, dtypes=(torch.int32, torch.int64), dim=1)
    for name, t in (("key", key), ("value", value), ("key_cache", key_cache), ("value_cache", value_cache),
                    ("slot_mapping", slot_mapping)):
        check(t.is_contiguous(), fn, f"{name} is not contiguous (non-contiguous inputs are not supported)")
    t, h, dk = key.shape
    check(slot_mapping.shape[0] == t and value.shape[:2] == key.shape[:2], fn,
          f"key {tuple(key.shape)}, value {tuple(value.shape)}, slots {tuple(slot_mapping.shape)} disagree")
    nb, bs = key_cache.shape[:2]
    check(tuple(key_cache.shape[2:]) == (h, dk), fn, f"key_cache {tuple(key_cache.shape)} is not (nb,bs,{h},{dk})")
    check(tuple(value_cache.shape) == (nb, bs, h, value.shape[2]), fn,
          f"value_cache {tuple(value_cache.shape)} is not ({nb},{bs},{h},{value.shape[2]})")
    s = slot_mapping.long()
    if bool((s < 0).any()):
        raise Unconfirmed(f"{fn}: negative slots (documented range [0, num_blocks*block_size-1])")
    check(bool((s < nb * bs).all()), fn, f"slot index >= num_blocks*block_size = {nb * bs}")
    check(s.unique().numel() == s.numel(), fn, "duplicate slots (correctness not guaranteed)")
    k_out, v_out = key_cache.clone(), value_cache.clone()
    k_out[s // bs, s % bs] = key
    v_out[s // bs, s % bs] = value
    return k_out, v_out
