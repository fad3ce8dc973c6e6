"""KV-cache storage for dlinfer devices: one contiguous tensor per cache and layer.

LMDeploy's default packs K, V and any extra caches of a layer into one uint8 pool, so a
layer's key cache is strided across blocks. Vendor kernels (and the spec's
``[num_blocks, *block_shape]`` caches) want each cache contiguous; LMDeploy 0.18's cache
backend hook selects that layout without patching the cache engine.
"""

from __future__ import annotations

from lmdeploy.pytorch.backends.default.cache import DefaultCacheBackend
from lmdeploy.pytorch.engine.cache_engine.layout import ContiguousBlockCacheLayout, ContiguousStateCacheLayout


class DlinferCacheBackend(DefaultCacheBackend):
    @classmethod
    def build_block_layout(cls, tensor_specs, num_layers: int):  # type: ignore[no-untyped-def]
        return ContiguousBlockCacheLayout(tuple(tensor_specs), num_layers=num_layers)

    @classmethod
    def build_state_layout(cls, tensor_specs):  # type: ignore[no-untyped-def]
        return ContiguousStateCacheLayout(tuple(tensor_specs))
