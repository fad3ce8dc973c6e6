"""The once-per-step attention plan of dlinfer-camb (``Backend.prepare_metadata``, FlashInfer's plan/run split).

What the camb attention ops derive from the step's lengths rather than from a layer's tensors is built here once
per step and reused by every layer: the cumulative KV lengths, the decode query offsets, and the (block, offset)
index that packs each sequence's cached context for the varlen kernel (built once, used for K and V of every
layer). An op called without a plan builds a throwaway one from its own arguments, so both paths run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dlinfer.plugin import StepMetadata


def cumulative(lengths: torch.Tensor) -> torch.Tensor:
    """Per-sequence lengths int32 [B] -> cumulative offsets with a leading 0, int32 [B+1] (on the same device)."""
    return torch.nn.functional.pad(torch.cumsum(lengths, 0, dtype=torch.int32), (1, 0))


def packed_index(block_table: torch.Tensor, seqlens: torch.Tensor, seqlens_cpu: torch.Tensor | None,
                 block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(block id, offset in block) int64 [sum(seqlens)] of every cached token, in sequence order. Reads the total
    length on the host (``seqlens_cpu`` when given, else one device->host copy)."""
    device = block_table.device
    total = int((seqlens_cpu if seqlens_cpu is not None else seqlens).sum())
    lens = seqlens.to(torch.int64)
    batch = torch.repeat_interleave(torch.arange(lens.shape[0], device=device), lens, output_size=total)
    starts = torch.cumsum(lens, 0) - lens
    pos = torch.arange(total, device=device) - starts[batch]
    return block_table.to(torch.int64)[batch, pos // block_size], pos % block_size


def gather_packed(cache: torch.Tensor, index: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """HND cache [NB, H, BS, D] at a :func:`packed_index` -> packed tokens [sum(seqlens), H, D]."""
    blocks, offsets = index
    return cache.permute(0, 2, 1, 3)[blocks, offsets]


class CambPlan:
    """One step's derived attention metadata, each piece built at most once per step.

    ``seqlens_kv`` is the step's device tensor: an op uses the plan only when called with that very tensor
    (:meth:`serves`), so a plan never describes another batch than the call's.
    """

    def __init__(self, seqlens_kv: torch.Tensor, seqlens_kv_cpu: torch.Tensor | None = None) -> None:
        self.seqlens_kv = seqlens_kv
        self._kv_mirror = seqlens_kv_cpu
        self._memo: dict[Any, Any] = {}

    @classmethod
    def from_step(cls, step: StepMetadata) -> CambPlan:
        """``Backend.prepare_metadata`` of the camb plugin."""
        return cls(step.seqlens_kv, step.seqlens_kv_cpu)

    def serves(self, seqlens_kv: torch.Tensor) -> bool:
        return seqlens_kv is self.seqlens_kv

    def _once(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    def cu_kv(self) -> torch.Tensor:
        """Cumulative KV lengths int32 [B+1] on the device."""
        return self._once("cu_kv", lambda: cumulative(self.seqlens_kv))

    def decode_cu_q(self, batch: int, device: torch.device) -> torch.Tensor:
        """Query offsets 0..B of a decode step (one token per sequence), int32 [B+1]."""
        return self._once(("cu_q", batch, device), lambda: torch.arange(batch + 1, dtype=torch.int32, device=device))

    def packed(self, block_table: torch.Tensor, block_size: int) -> tuple[torch.Tensor, torch.Tensor]:
        """:func:`packed_index` of this step's contexts (one host read of the total, once per step)."""
        return self._once(("packed", id(block_table), block_size),
                          lambda: packed_index(block_table, self.seqlens_kv, self._kv_mirror, block_size))

    def refresh(self) -> None:
        """The step's fixed buffers were refilled in place (graph replay): the cumulative KV lengths a captured
        graph reads are rewritten in place; the host-sized packing index is dropped and rebuilt on demand."""
        cu = self._memo.get("cu_kv")
        self._memo = {k: v for k, v in self._memo.items() if isinstance(k, tuple) and k[0] == "cu_q"}
        if cu is not None:
            torch.cumsum(self.seqlens_kv, 0, dtype=torch.int32, out=cu[1:])
            self._memo["cu_kv"] = cu


def plan_for(plan: CambPlan | None, seqlens_kv: torch.Tensor, seqlens_kv_cpu: torch.Tensor | None) -> CambPlan:
    """The step's plan when it describes these lengths, else a throwaway one built from the call's arguments."""
    if plan is not None and plan.serves(seqlens_kv):
        return plan
    return CambPlan(seqlens_kv, seqlens_kv_cpu)
