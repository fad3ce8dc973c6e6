"""Random input builders for the conformance kit (fresh seed per run; never zeros).

Builders produce CPU tensors; the runner moves them to the backend's device.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

UNUSED_CACHE_VALUE = 50.0
"""Cache slots outside every sequence's context hold this, so a kernel that reads past a context shows it."""


def randn(gen: torch.Generator, *shape: int, dtype: torch.dtype = torch.float32, scale: float = 1.0) -> torch.Tensor:
    return (torch.randn(*shape, generator=gen) * scale).to(dtype)


def cu_seqlens(lens: list[int]) -> torch.Tensor:
    out = [0]
    for n in lens:
        out.append(out[-1] + n)
    return torch.tensor(out, dtype=torch.int32)


def alibi_slopes(num_heads: int) -> torch.Tensor:
    return torch.tensor([2.0 ** (-8.0 * (h + 1) / num_heads) for h in range(num_heads)], dtype=torch.float32)


@dataclass(frozen=True)
class PagedSetup:
    """Paged-cache geometry of one attention case."""

    q_lens: tuple[int, ...]
    kv_lens: tuple[int, ...]
    hq: int
    hkv: int
    d: int
    dv: int
    block_size: int


def paged_inputs(gen: torch.Generator, s: PagedSetup, dtype: torch.dtype, layout: str) -> dict[str, torch.Tensor]:
    """Caches with randomly placed blocks, block table, lengths and the queries of the new tokens."""
    bs = s.block_size
    need = [math.ceil(n / bs) for n in s.kv_lens]
    num_blocks = sum(need) + 3
    perm = torch.randperm(num_blocks, generator=gen).to(torch.int32)
    max_blocks = max(need + [1]) + 1
    table = perm[torch.randint(0, num_blocks, (len(s.kv_lens), max_blocks), generator=gen)].clone()
    valid = torch.zeros(num_blocks, bs, dtype=torch.bool)
    taken = 0
    for b, n in enumerate(need):
        ids = perm[taken : taken + n]
        taken += n
        table[b, :n] = ids
        for j, blk in enumerate(ids.tolist()):
            valid[blk, : min(bs, s.kv_lens[b] - j * bs)] = True
    k = randn(gen, num_blocks, bs, s.hkv, s.d)
    v = randn(gen, num_blocks, bs, s.hkv, s.dv)
    k[~valid] = UNUSED_CACHE_VALUE
    v[~valid] = UNUSED_CACHE_VALUE
    if layout == "HND":
        k, v = k.transpose(1, 2).contiguous(), v.transpose(1, 2).contiguous()
    return {
        "q": randn(gen, sum(s.q_lens), s.hq, s.d, dtype=dtype),
        "key_cache": k.to(dtype),
        "value_cache": v.to(dtype),
        "block_table": table,
        "cu_seqlens_q": cu_seqlens(list(s.q_lens)),
        "seqlens_kv": torch.tensor(s.kv_lens, dtype=torch.int32),
    }


def awq_pack(values: torch.Tensor) -> torch.Tensor:
    """int [R, C] of 4-bit values -> int32 [R, C/8] in AWQ nibble order."""
    from dlinfer.spec import AWQ_ORDER

    r, c = values.shape
    cols = values.reshape(r, c // 8, 8).to(torch.int64)
    packed = torch.zeros(r, c // 8, dtype=torch.int64)
    for i, col in enumerate(AWQ_ORDER):
        packed |= cols[..., col] << (4 * i)
    return torch.where(packed >= 2**31, packed - 2**32, packed).to(torch.int32)
