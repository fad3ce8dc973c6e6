"""Paged attention: fill the KV cache, then decode / prefill without history / paged prefill."""

from __future__ import annotations

import torch
from dlinfer import ops
from lmdeploy.messages import QuantPolicy
from lmdeploy.pytorch.backends.attention import AttentionImpl

from dlinfer_lmdeploy.impls._errors import unsupported
from dlinfer_lmdeploy.metadata import DlinferAttentionMetadata


def window_of(sliding_window: int | tuple[int, int] | None) -> int | None:
    """LMDeploy's sliding window (HF meaning: the last W positions are visible) as dlinfer's ``window``."""
    if sliding_window is None:
        return None
    if isinstance(sliding_window, int):
        return sliding_window if sliding_window > 0 else None
    raise unsupported("attention", "sliding_window", f"two-sided window {sliding_window!r}")


class DlinferPagedAttentionImpl(AttentionImpl[DlinferAttentionMetadata]):
    """LMDeploy ``PagedAttention`` on ``dlinfer.ops``."""

    def __init__(self, *, use_flash_mla: bool = False, learnable_sink: bool = False, **kwargs: object) -> None:
        if use_flash_mla:
            raise unsupported("attention", "use_flash_mla")
        if learnable_sink:
            raise unsupported("attention", "learnable_sink")
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.window = window_of(self.sliding_window)
        self.softcap = float(self.logit_softcapping) if self.logit_softcapping else None

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        attn_metadata: DlinferAttentionMetadata,
        k_scales_zeros: torch.Tensor | None = None,
        v_scales_zeros: torch.Tensor | None = None,
        learnable_sink: torch.Tensor | None = None,
        nsa_indices: torch.Tensor | None = None,
        inplace: bool = False,
    ) -> torch.Tensor:
        md = attn_metadata
        if md.unfinished is not None or md.stale():  # the runners finish it before the forward; a model called
            md.finalize()  # otherwise, or one that replaced kv_seqlens after the build, gets it here
        if md.quant_policy != QuantPolicy.NONE or k_scales_zeros is not None:
            raise unsupported("attention", "quant_policy", f"KV-cache quantisation {md.quant_policy!r}")
        if learnable_sink is not None:
            raise unsupported("attention", "learnable_sink")
        if nsa_indices is not None:
            raise unsupported("attention", "nsa_indices")
        alibi = self.alibi_slopes.float() if self.alibi else None
        if key is not None:
            ops.fill_kv_cache(key, value, k_cache, v_cache, md.slot_mapping, kv_layout=md.kv_layout)
        if md.is_decoding and not md.multi_token_decode:
            out = ops.paged_decode_attention(
                query,
                k_cache,
                v_cache,
                md.block_offsets,
                md.kv_seqlens,
                max_seqlen_kv=md.max_kv_seqlen,
                scale=self.scale,
                window=self.window,
                softcap=self.softcap,
                alibi_slopes=alibi,
                kv_layout=md.kv_layout,
                seqlens_kv_cpu=md.seqlens_kv_cpu,
                plan=md.plan,
            )
        elif md.prefill_no_cache and key is not None:
            out = ops.prefill_attention(
                query,
                key,
                value,
                md.cu_seqlens_q,
                max_seqlen_q=md.max_q_seqlen,
                causal=self.causal,
                scale=self.scale,
                window=self.window,
                softcap=self.softcap,
                alibi_slopes=alibi,
                cu_seqlens_q_cpu=md.cu_seqlens_q_cpu,
                plan=md.plan,
            )
        else:
            out = ops.paged_prefill_attention(
                query,
                k_cache,
                v_cache,
                md.block_offsets,
                md.cu_seqlens_q,
                md.kv_seqlens,
                max_seqlen_q=md.max_q_seqlen,
                max_seqlen_kv=md.max_kv_seqlen,
                causal=self.causal,
                scale=self.scale,
                window=self.window,
                softcap=self.softcap,
                alibi_slopes=alibi,
                kv_layout=md.kv_layout,
                cu_seqlens_q_cpu=md.cu_seqlens_q_cpu,
                seqlens_kv_cpu=md.seqlens_kv_cpu,
                plan=md.plan,
            )
        # ``inplace`` is only a hint: LMDeploy 0.18's own CUDA attention ignores it as well (it returns a new tensor
        # and every model uses the returned output). Copying ``out`` back into ``query`` cost one device copy per
        # layer: little GPU time, but host launch time in eager decode.
        return out
