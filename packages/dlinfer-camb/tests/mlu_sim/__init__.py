"""Test-only simulator of the torch_mlu / torch_mlu_ops subset that dlinfer-camb uses.

Each function models the *documented* semantics cited beside it (docs/vendor-semantics.md §3)
in plain PyTorch on the CPU and raises :class:`MluContractError` on contract violations (layouts, dtypes,
cumulative vs per-sequence lengths, required arguments). The plugin never imports this package; tests
inject it with :func:`install` (``sys.modules`` entries for ``torch_mlu`` and ``torch_mlu_ops``, plus
``torch.mlu``) and remove it with :func:`uninstall`.
"""

from __future__ import annotations

import sys
import types

import torch

from . import activation, attention, cache, device, gemm, moe, norm, rotary
from ._contract import MluContractError, NotModelled

SIM_VERSION = "1.5.0"
"""The torch_mlu_ops version the simulator claims to be (the one dlinfer pins, docs/vendor-semantics.md §0)."""

FUNCTIONS = {
    "fused_rms_norm": norm.fused_rms_norm,
    "apply_rotary": rotary.apply_rotary,
    "active": activation.active,
    "moe_active": activation.moe_active,
    "reshape_paged_cache": cache.reshape_paged_cache,
    "flash_attention": attention.flash_attention,
    "single_query_cached_kv_attn": attention.single_query_cached_kv_attn,
    "moe_softmax_topk": moe.moe_softmax_topk,
    "moe_gen_idx": moe.moe_gen_idx,
    "moe_expand_input": moe.moe_expand_input,
    "group_gemm": moe.group_gemm,
    "moe_combine_result": moe.moe_combine_result,
    "matmul": gemm.matmul,
    "per_token_smooth_quantize": gemm.per_token_smooth_quantize,
    "smooth_quant_matmul": gemm.smooth_quant_matmul,
}

__all__ = ["FUNCTIONS", "MluContractError", "NotModelled", "SIM_VERSION", "install", "tmo_module", "uninstall"]

_FINDER = device.MigrationFinder()


def tmo_module(version: str = SIM_VERSION, omit: tuple[str, ...] = ()) -> types.ModuleType:
    """A ``torch_mlu_ops`` module object holding the simulated functions."""
    mod = types.ModuleType("torch_mlu_ops")
    mod.__version__ = version
    for name, fn in FUNCTIONS.items():
        if name not in omit:
            setattr(mod, name, fn)
    return mod


def install(*, torch_mlu: bool = True, tmo: bool = True, tmo_version: str = SIM_VERSION,
            omit: tuple[str, ...] = ()) -> None:
    """Inject the simulator into sys.modules (torch_mlu and/or torch_mlu_ops) and set torch.mlu."""
    uninstall()
    if torch_mlu:
        sys.modules.update(device.torch_mlu_modules("2.4.0+sim"))
        torch.mlu = device.mlu_namespace()  # type: ignore[attr-defined]
        sys.meta_path.insert(0, _FINDER)
    if tmo:
        sys.modules["torch_mlu_ops"] = tmo_module(tmo_version, omit)


def uninstall() -> None:
    """Remove every simulated module, the finder and torch.mlu."""
    for name in [m for m in sys.modules if m == "torch_mlu" or m.startswith(("torch_mlu.", "torch_mlu_ops"))]:
        del sys.modules[name]
    if _FINDER in sys.meta_path:
        sys.meta_path.remove(_FINDER)
    if "mlu" in torch.__dict__:
        delattr(torch, "mlu")
