"""The once-per-step attention plan (``Backend.prepare_metadata``, FlashInfer's plan/run split).

Everything the Ascend attention ops derive from the step's lengths rather than from a layer's tensors is built
here once per step and reused by every layer: host lengths, per-sequence query lengths and their maximum, the
token -> (sequence, position) index, the padded-BSND scatter index, the per-token KV lengths and block-table rows,
and the decode window masks (one per distinct window). An op called without a plan builds a throwaway one from its
own arguments, so both paths run the same code.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from dlinfer.plugin import StepMetadata

from dlinfer_ascend.ops._common import host


def token_index(qlens: torch.Tensor, cu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Host: sequence id and in-sequence index of every packed token."""
    seq = torch.repeat_interleave(torch.arange(qlens.numel()), qlens.long())
    pos = torch.arange(int(cu[-1])) - cu[:-1].long()[seq]
    return seq, pos


def window_mask(kv_dev: torch.Tensor, window: int, kv_s: int, out: torch.Tensor | None = None) -> torch.Tensor:
    """(B, KV_S) bool mask, 1 = masked, for a single query at position kv_dev[b] - 1 that sees its W most recent
    keys (FIA Q_S=1 ignores sparse_mode, so the window travels as a full mask, docs/vendor-semantics.md §2.6). ``out``:
    rewrite an existing mask in place (graph replay)."""
    cols = torch.arange(kv_s, device=kv_dev.device)[None, :]
    last = kv_dev.to(torch.int64)[:, None] - 1
    mask = (cols <= last - window) | (cols > last)
    return mask if out is None else out.copy_(mask)


class AscendPlan:
    """One step's derived attention metadata, built lazily and at most once per step.

    ``cu_seqlens_q`` / ``seqlens_kv`` are the step's device tensors: an op uses the plan only when it is called with
    these very tensors (:meth:`serves`), so a plan can never describe another batch than the call's.
    """

    def __init__(self, cu_seqlens_q: torch.Tensor | None, seqlens_kv: torch.Tensor | None,
                 cu_seqlens_q_cpu: torch.Tensor | None = None, seqlens_kv_cpu: torch.Tensor | None = None) -> None:
        self.cu_seqlens_q = cu_seqlens_q
        self.seqlens_kv = seqlens_kv
        self._cu_mirror = cu_seqlens_q_cpu
        self._kv_mirror = seqlens_kv_cpu
        self._memo: dict[Any, Any] = {}
        self._masks: dict[Any, tuple[torch.Tensor, int, torch.Tensor]] = {}

    @classmethod
    def from_step(cls, step: StepMetadata) -> AscendPlan:
        """``Backend.prepare_metadata`` of the Ascend plugin."""
        return cls(step.cu_seqlens_q, step.seqlens_kv, step.cu_seqlens_q_cpu, step.seqlens_kv_cpu)

    def serves(self, cu_seqlens_q: torch.Tensor | None, seqlens_kv: torch.Tensor | None) -> bool:
        """Whether this plan describes a call with these length tensors (identity, no device work)."""
        return ((cu_seqlens_q is None or cu_seqlens_q is self.cu_seqlens_q)
                and (seqlens_kv is None or seqlens_kv is self.seqlens_kv))

    def _once(self, key: Any, build: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = build()
        return self._memo[key]

    # -- host lengths --------------------------------------------------------------------------------------
    @property
    def cu(self) -> torch.Tensor:
        """Host cumulative query lengths, int32 [B+1]."""
        assert self.cu_seqlens_q is not None
        return self._once("cu", lambda: host(self._cu_mirror, self.cu_seqlens_q))

    @property
    def kv_cpu(self) -> torch.Tensor:
        """Host KV lengths, int32 [B]."""
        assert self.seqlens_kv is not None
        return self._once("kv", lambda: host(self._kv_mirror, self.seqlens_kv))

    @property
    def qlens(self) -> torch.Tensor:
        return self._once("qlens", lambda: self.cu[1:] - self.cu[:-1])

    @property
    def max_q(self) -> int:
        return self._once("max_q", lambda: int(self.qlens.max()))

    def nonempty_qlens(self) -> torch.Tensor:
        """int32 lengths of the non-empty sequences (ATB flash attention's seqlen argument)."""
        return self._once("lens", lambda: self.qlens[self.qlens > 0].to(torch.int32))

    def token_index(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self._once("index", lambda: token_index(self.qlens, self.cu))

    # -- route pieces ---------------------------------------------------------------------------------------
    def padded_index(self, device: torch.device) -> torch.Tensor:
        """Device index of every packed token in the (B * max_q) padded BSND layout."""
        def build() -> torch.Tensor:
            seq, pos = self.token_index()
            return (seq * self.max_q + pos).to(device, non_blocking=True)

        return self._once(("padded", device), build)

    def per_token(self, causal: bool, block_table: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Per-token route: host and device KV length of each query token (causal: its position + 1) and its
        sequence's block-table row."""
        def build() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            seq, pos = self.token_index()
            kv_seq = self.kv_cpu.long()[seq]
            tok_kv = ((kv_seq - self.qlens.long()[seq] + pos + 1) if causal else kv_seq).to(torch.int32)
            seq_dev = seq.to(block_table.device, non_blocking=True)
            return tok_kv, tok_kv.to(block_table.device, non_blocking=True), block_table.index_select(0, seq_dev)

        return self._once(("per_token", causal, id(block_table)), build)

    def decode_mask(self, kv_dev: torch.Tensor, window: int, kv_s: int) -> torch.Tensor:
        """The decode window mask for these device KV lengths, built once per (lengths, window, KV_S)."""
        key = (id(kv_dev), window, kv_s)
        if key not in self._masks:
            self._masks[key] = (kv_dev, window, window_mask(kv_dev, window, kv_s))
        return self._masks[key][2]

    def refresh(self) -> None:
        """Rebuild the plan after the step's fixed buffers were refilled in place (graph replay): masks that a
        captured graph reads are rewritten in place; host-derived values are dropped and rebuilt on demand."""
        self._memo.clear()
        for kv_dev, window, mask in self._masks.values():
            window_mask(kv_dev, window, mask.shape[1], out=mask)
