"""The reference backend's op table."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlinfer.reference import attention, cache, elementwise, moe, norm, quant

OPS: dict[str, Callable[..., Any]] = {
    "rms_norm": norm.rms_norm,
    "add_rms_norm": norm.add_rms_norm,
    "apply_rotary_pos_emb": elementwise.apply_rotary_pos_emb,
    "apply_rotary_pos_emb_inplace": elementwise.apply_rotary_pos_emb_inplace,
    "silu_and_mul": elementwise.silu_and_mul,
    "fill_kv_cache": cache.fill_kv_cache,
    "prefill_attention": attention.prefill_attention,
    "paged_prefill_attention": attention.paged_prefill_attention,
    "paged_decode_attention": attention.paged_decode_attention,
    "moe_gating_topk_softmax": moe.moe_gating_topk_softmax,
    "fused_moe": moe.fused_moe,
    "linear": elementwise.linear,
    "dynamic_quant": quant.dynamic_quant,
    "linear_w8a8": quant.linear_w8a8,
    "rms_norm_w8a8": norm.rms_norm_w8a8,
    "add_rms_norm_w8a8": norm.add_rms_norm_w8a8,
    "weight_quant_prepare": quant.weight_quant_prepare,
    "weight_quant_matmul": quant.weight_quant_matmul,
}
