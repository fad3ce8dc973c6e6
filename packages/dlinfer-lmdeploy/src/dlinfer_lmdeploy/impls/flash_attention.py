"""Unpaged varlen attention for vision towers (usually non-causal)."""

from __future__ import annotations

import torch
from dlinfer import ops
from lmdeploy.pytorch.backends.flash_attention import FlashAttentionImpl

from dlinfer_lmdeploy.impls._errors import unsupported
from dlinfer_lmdeploy.impls.attention import window_of


class DlinferFlashAttentionImpl(FlashAttentionImpl):
    def __init__(
        self,
        num_heads: int,
        head_dim: int,
        scale: float | None = None,
        num_kv_heads: int | None = None,
        v_head_dim: int | None = None,
        causal: bool = True,
        sliding_window: int | tuple[int, int] | None = None,
        logit_softcapping: float | None = None,
    ) -> None:
        self.num_heads = num_heads
        self.head_dim = head_dim
        self.scale = scale
        self.num_kv_heads = num_kv_heads or num_heads
        self.v_head_dim = v_head_dim or head_dim
        self.causal = causal
        self.window = window_of(sliding_window)
        self.softcap = float(logit_softcapping) if logit_softcapping else None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        q_start_loc: torch.Tensor,
        q_seqlens: torch.Tensor,
        kv_start_loc: torch.Tensor,
        kv_seqlens: torch.Tensor,
        max_q_seqlen: int | None = None,
    ) -> torch.Tensor:
        # dlinfer's prefill_attention attends within each sequence's own tokens (self-attention).
        if kv_seqlens is not q_seqlens and not torch.equal(kv_seqlens, q_seqlens):
            raise unsupported("flash_attention", "kv_seqlens", "key/value lengths different from query lengths")
        cu_seqlens = torch.zeros(q_seqlens.numel() + 1, dtype=torch.int32, device=q_seqlens.device)
        torch.cumsum(q_seqlens, 0, out=cu_seqlens[1:])
        if max_q_seqlen is None:
            max_q_seqlen = int(q_seqlens.max())
        return ops.prefill_attention(
            query,
            key,
            value,
            cu_seqlens,
            max_seqlen_q=int(max_q_seqlen),
            causal=self.causal,
            scale=self.scale,
            window=self.window,
            softcap=self.softcap,
        )
