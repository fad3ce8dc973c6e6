"""The simulated ``torch.ops.npu`` and ``torch.ops.atb`` namespaces."""

from __future__ import annotations

import types

import torch

from . import activation, attention, cache, moe, norm, quant, rotary

#: Versions the simulator reports: a torch_npu build matching the installed torch (as a real
#: installation must), and the CANN release the adaptor was written for.
SIM_VERSION = {"torch_npu": torch.__version__.split("+")[0], "cann": "8.5.0"}

NPU_OPS = {
    "npu_rms_norm": norm.npu_rms_norm,
    "npu_add_rms_norm": norm.npu_add_rms_norm,
    "npu_apply_rotary_pos_emb": rotary.npu_apply_rotary_pos_emb,
    "npu_rotary_mul": rotary.npu_rotary_mul,
    "npu_swiglu": activation.npu_swiglu,
    "npu_silu": activation.npu_silu,
    "npu_fused_infer_attention_score": attention.npu_fused_infer_attention_score,
    "npu_moe_gating_top_k_softmax": moe.npu_moe_gating_top_k_softmax,
    "npu_moe_init_routing_v2": moe.npu_moe_init_routing_v2,
    "npu_grouped_matmul": moe.npu_grouped_matmul,
    "npu_moe_token_unpermute": moe.npu_moe_token_unpermute,
    "npu_moe_finalize_routing": moe.npu_moe_finalize_routing,
    "npu_scatter_pa_kv_cache_functional": cache.npu_scatter_pa_kv_cache_functional,
    "npu_dynamic_quant": quant.npu_dynamic_quant,
    "npu_quant_matmul": quant.npu_quant_matmul,
    "npu_weight_quant_batchmatmul": quant.npu_weight_quant_batchmatmul,
}

ATB_OPS = {
    "_npu_reshape_and_cache": cache._npu_reshape_and_cache,
    "_npu_flash_attention": attention._npu_flash_attention,
    "_npu_flash_attention_unpad": attention._npu_flash_attention_unpad,
}


def _namespace(name: str, table: dict) -> types.SimpleNamespace:
    ns = types.SimpleNamespace(**table)
    ns.__name__ = f"torch.ops.{name} (simulated)"
    return ns


def npu_namespace() -> types.SimpleNamespace:
    return _namespace("npu", NPU_OPS)


def atb_namespace() -> types.SimpleNamespace:
    return _namespace("atb", ATB_OPS)
