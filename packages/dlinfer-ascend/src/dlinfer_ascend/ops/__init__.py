"""The Ascend op table: one adaptor function per dlinfer op, each mapped to torch_npu / ATB kernels."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from dlinfer_ascend.ops import attention, cache, elementwise, moe, norm, quant
from dlinfer_ascend.ops._kernels import bind

OPS: dict[str, Callable[..., Any]] = {
    "rms_norm": norm.rms_norm,
    "add_rms_norm": norm.add_rms_norm,
    "rms_norm_w8a8": norm.rms_norm_w8a8,
    "add_rms_norm_w8a8": norm.add_rms_norm_w8a8,
    "apply_rotary_pos_emb": elementwise.apply_rotary_pos_emb,
    "apply_rotary_pos_emb_inplace": elementwise.apply_rotary_pos_emb_inplace,
    "silu_and_mul": elementwise.silu_and_mul,
    "linear": elementwise.linear,
    "fill_kv_cache": cache.fill_kv_cache,
    "prefill_attention": attention.prefill_attention,
    "paged_prefill_attention": attention.paged_prefill_attention,
    "paged_decode_attention": attention.paged_decode_attention,
    "moe_gating_topk_softmax": moe.moe_gating_topk_softmax,
    "fused_moe": moe.fused_moe,
    "dynamic_quant": quant.dynamic_quant,
    "linear_w8a8": quant.linear_w8a8,
    "weight_quant_prepare": quant.weight_quant_prepare,
    "weight_quant_matmul": quant.weight_quant_matmul,
}


def load_ops() -> dict[str, Callable[..., Any]]:
    """Check the runtime (torch_npu, CANN, ATB), bind the kernel namespaces, return the table."""
    from dlinfer_ascend.runtime import ensure_runtime

    ensure_runtime()
    bind()
    return dict(OPS)
