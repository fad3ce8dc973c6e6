"""The camb op table: every dlinfer op mapped onto torch_mlu_ops kernels.

``weight_quant_matmul`` / ``weight_quant_prepare`` are not provided: no torch_mlu_ops W4A16 kernel
is documented in our sources (docs/vendor-semantics.md §3), so dlinfer-core falls back to the reference.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any


def load_ops() -> Mapping[str, Callable[..., Any]]:
    """Import and check torch_mlu / torch_mlu_ops, bind tmo, and return {op name: implementation}."""
    from dlinfer_camb.ops import attention, cache, elementwise, linear, moe, norm, quant
    from dlinfer_camb.ops._common import bind
    from dlinfer_camb.runtime import ensure_runtime

    bind(ensure_runtime())
    return {
        "rms_norm": norm.rms_norm,
        "add_rms_norm": norm.add_rms_norm,
        "rms_norm_w8a8": norm.rms_norm_w8a8,
        "add_rms_norm_w8a8": norm.add_rms_norm_w8a8,
        "apply_rotary_pos_emb": elementwise.apply_rotary_pos_emb,
        "apply_rotary_pos_emb_inplace": elementwise.apply_rotary_pos_emb_inplace,
        "silu_and_mul": elementwise.silu_and_mul,
        "fill_kv_cache": cache.fill_kv_cache,
        "prefill_attention": attention.prefill_attention,
        "paged_prefill_attention": attention.paged_prefill_attention,
        "paged_decode_attention": attention.paged_decode_attention,
        "moe_gating_topk_softmax": moe.moe_gating_topk_softmax,
        "fused_moe": moe.fused_moe,
        "linear": linear.linear,
        "dynamic_quant": quant.dynamic_quant,
        "linear_w8a8": quant.linear_w8a8,
    }
