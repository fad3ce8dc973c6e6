"""Unpaged varlen attention for vision towers (usually non-causal)."""

from __future__ import annotations

import torch
from dlinfer import dispatch, ops
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
        """Packed self-attention: sequence ``i`` is rows ``[cu[i], cu[i+1])`` with ``cu`` the running sum of
        ``q_seqlens`` (the spec's layout; LMDeploy's vision towers pass ``q_start_loc = cu_seqlens[:-1]`` and no
        key/value locations, which its ``FlashAttention`` layer sets to the query's own tensors). Nothing here
        reads a device value on the host: other locations are checked when they are different tensors (the rare,
        non-LMDeploy path) and, for ``q_start_loc``, under ``DLINFER_VALIDATE=full``."""
        cu_seqlens = torch.zeros(q_seqlens.numel() + 1, dtype=torch.int32, device=q_seqlens.device)
        torch.cumsum(q_seqlens, 0, out=cu_seqlens[1:])
        if kv_seqlens is not q_seqlens and not torch.equal(kv_seqlens, q_seqlens):
            raise unsupported("flash_attention", "kv_seqlens", "key/value lengths different from query lengths")
        if kv_start_loc is not q_start_loc and not torch.equal(kv_start_loc, q_start_loc):
            raise unsupported("flash_attention", "kv_start_loc", "key/value locations different from the query's")
        if dispatch.STATE.full and not torch.equal(q_start_loc.to(torch.int32), cu_seqlens[:-1]):
            raise unsupported(
                "flash_attention",
                "q_start_loc",
                f"sequences not packed back to back in order (q_start_loc {q_start_loc.tolist()}, "
                f"q_seqlens {q_seqlens.tolist()})",
            )
        if max_q_seqlen is None:  # an upper bound without a host sync, as LMDeploy's layer passes
            max_q_seqlen = query.shape[0]
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
