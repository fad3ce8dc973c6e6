"""The maca backend's op table: spec-exact signatures over the Triton kernels.

Each function has exactly the parameters of ``dlinfer.spec`` (names, order, keyword-only
split), checks the few things its kernel relies on, and launches. Everything after the
tensors is keyword-only. Window, softcap and ALiBi are implemented in every attention
kernel; the only refusal is ``dynamic_quant`` to a dtype other than int8.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F

from .kernels import attention, elementwise, moe, norm, quant
from .kernels._utils import interpreting

BACKEND = "maca"
DEFAULT_LAYOUT = "NHD"


def _layout(kv_layout: str | None) -> str:
    layout = kv_layout or DEFAULT_LAYOUT
    if layout not in ("NHD", "HND"):
        raise ValueError(f"kv_layout must be 'NHD' or 'HND', got {layout!r}")
    return layout


def _check_cache(op: str, name: str, cache: torch.Tensor) -> None:
    if cache.dim() != 4 or cache.stride(-1) != 1:
        raise ValueError(f"{op}: {name} must be a 4-d cache with a unit last stride, got shape "
                         f"{list(cache.shape)} and strides {list(cache.stride())}")


def _check_device(op: str, t: torch.Tensor) -> None:
    if t.device.type == "cpu" and not interpreting():
        raise RuntimeError(f"{op}: backend '{BACKEND}' runs Triton kernels on a GPU device; got a CPU tensor "
                           "(set TRITON_INTERPRET=1 to run them in Triton's CPU interpreter)")


# -- norms ----------------------------------------------------------------------------------------
def rms_norm(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6) -> torch.Tensor:
    """x [..., H], weight [H] -> [..., H] in x.dtype; fp32 math."""
    _check_device("rms_norm", x)
    return norm.rms_norm_fwd(x, weight, eps)[0]


def add_rms_norm(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (rms_norm(x + residual), x + residual), the sum rounded to x.dtype; one pass."""
    _check_device("add_rms_norm", x)
    normed, added = norm.rms_norm_fwd(x, weight, eps, residual=residual)
    return normed, added


def rms_norm_w8a8(x: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (int8 [..., H], fp32 scale [...]) = dynamic_quant(rms_norm(x)); one pass."""
    _check_device("rms_norm_w8a8", x)
    q, scale = norm.rms_norm_fwd(x, weight, eps, quant=True)
    return q, scale


def add_rms_norm_w8a8(
    x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, *, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """-> (int8, fp32 scale, x + residual); one pass."""
    _check_device("add_rms_norm_w8a8", x)
    q, scale, added = norm.rms_norm_fwd(x, weight, eps, residual=residual, quant=True)
    return q, scale, added


# -- elementwise ----------------------------------------------------------------------------------
def apply_rotary_pos_emb(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k [T, Hkv, D], cos/sin [T, R] -> rotated copies; q and k in one launch."""
    _check_device("apply_rotary_pos_emb", q)
    R = cos.shape[-1]
    if R % 2 or q.shape[-1] < R:
        raise ValueError(f"apply_rotary_pos_emb: rotary width R={R} must be even and <= D={q.shape[-1]}")
    return elementwise.rotary_fwd(q, k, cos, sin, interleaved)


def apply_rotary_pos_emb_inplace(
    q: torch.Tensor, k: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor, *, interleaved: bool = False
) -> None:
    """Rotates q [T, Hq, D] and k [T, Hkv, D] in place (strided views served, one launch); returns None."""
    _check_device("apply_rotary_pos_emb_inplace", q)
    R = cos.shape[-1]
    if R % 2 or q.shape[-1] < R:
        raise ValueError(f"apply_rotary_pos_emb_inplace: rotary width R={R} must be even and <= D={q.shape[-1]}")
    if q.stride(-1) != 1 or k.stride(-1) != 1:
        name, x = ("q", q) if q.stride(-1) != 1 else ("k", k)
        raise ValueError(f"apply_rotary_pos_emb_inplace: argument '{name}': expected unit stride in the last dim "
                         f"(backend '{BACKEND}' rotates it where it is, never through a copy), got shape "
                         f"{list(x.shape)} with strides {list(x.stride())}")
    elementwise.rotary_inplace(q, k, cos, sin, interleaved)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [..., 2I] -> silu(x[..., :I]) * x[..., I:]."""
    _check_device("silu_and_mul", x)
    return elementwise.silu_and_mul_fwd(x)


def fill_kv_cache(
    key: torch.Tensor, value: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor,
    slot_mapping: torch.Tensor, *, kv_layout: str | None = None,
) -> None:
    """Writes key [T, Hkv, D] / value [T, Hkv, Dv] into their slots; -1 slots are skipped. Mutates the caches."""
    _check_device("fill_kv_cache", key)
    _check_cache("fill_kv_cache", "key_cache", key_cache)
    _check_cache("fill_kv_cache", "value_cache", value_cache)
    elementwise.fill_kv_cache_fwd(key, value, key_cache, value_cache, slot_mapping, _layout(kv_layout))


# -- attention ------------------------------------------------------------------------------------
def prefill_attention(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, cu_seqlens_q: torch.Tensor, *,
    max_seqlen_q: int, causal: bool = True, scale: float | None = None, window: int | None = None,
    softcap: float | None = None, alibi_slopes: torch.Tensor | None = None,
    cu_seqlens_q_cpu: torch.Tensor | None = None, plan: object = None,
) -> torch.Tensor:
    """Varlen attention over the packed new tokens: q [T, Hq, D], k [T, Hkv, D], v [T, Hkv, Dv] -> [T, Hq, Dv]."""
    _check_device("prefill_attention", q)
    return attention.prefill_fwd(q, k, v, cu_seqlens_q, max_seqlen_q, causal=causal, scale=scale, window=window,
                                 softcap=softcap, alibi_slopes=alibi_slopes)


def paged_prefill_attention(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
    cu_seqlens_q: torch.Tensor, seqlens_kv: torch.Tensor, *, max_seqlen_q: int, max_seqlen_kv: int,
    causal: bool = True, scale: float | None = None, window: int | None = None, softcap: float | None = None,
    alibi_slopes: torch.Tensor | None = None, kv_layout: str | None = None,
    cu_seqlens_q_cpu: torch.Tensor | None = None, seqlens_kv_cpu: torch.Tensor | None = None, plan: object = None,
) -> torch.Tensor:
    """Prefill with history from the paged cache (new tokens already filled) -> [T, Hq, Dv]."""
    _check_device("paged_prefill_attention", q)
    _check_cache("paged_prefill_attention", "key_cache", key_cache)
    _check_cache("paged_prefill_attention", "value_cache", value_cache)
    return attention.prefill_fwd(q, key_cache, value_cache, cu_seqlens_q, max_seqlen_q, causal=causal, scale=scale,
                                 window=window, softcap=softcap, alibi_slopes=alibi_slopes,
                                 block_table=block_table, seqlens_kv=seqlens_kv, layout=_layout(kv_layout))


def paged_decode_attention(
    q: torch.Tensor, key_cache: torch.Tensor, value_cache: torch.Tensor, block_table: torch.Tensor,
    seqlens_kv: torch.Tensor, *, max_seqlen_kv: int, scale: float | None = None, window: int | None = None,
    softcap: float | None = None, alibi_slopes: torch.Tensor | None = None, kv_layout: str | None = None,
    seqlens_kv_cpu: torch.Tensor | None = None, plan: object = None,
) -> torch.Tensor:
    """One query token per sequence over its paged context: q [B, Hq, D] -> [B, Hq, Dv] (split-K)."""
    _check_device("paged_decode_attention", q)
    _check_cache("paged_decode_attention", "key_cache", key_cache)
    _check_cache("paged_decode_attention", "value_cache", value_cache)
    return attention.paged_decode_fwd(q, key_cache, value_cache, block_table, seqlens_kv, max_seqlen_kv,
                                      _layout(kv_layout), scale=scale, window=window, softcap=softcap,
                                      alibi_slopes=alibi_slopes)


# -- MoE ------------------------------------------------------------------------------------------
def moe_gating_topk_softmax(
    logits: torch.Tensor, *, topk: int, renormalize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [T, E] -> (weights fp32 [T, k], ids int32 [T, k]), descending."""
    _check_device("moe_gating_topk_softmax", logits)
    if not 0 < topk <= logits.shape[-1]:
        raise ValueError(f"moe_gating_topk_softmax: topk={topk} must be in [1, E={logits.shape[-1]}]")
    return moe.topk_softmax_fwd(logits, topk, renormalize)


def fused_moe(
    x: torch.Tensor, gate_up: torch.Tensor, down: torch.Tensor, topk_weights: torch.Tensor, topk_ids: torch.Tensor
) -> torch.Tensor:
    """x [T, H], gate_up [E, 2I, H], down [E, H, I], routing [T, k] -> [T, H] (sorted grouped GEMMs)."""
    _check_device("fused_moe", x)
    return moe.fused_moe_fwd(x, gate_up, down, topk_weights, topk_ids)


# -- linear and quantisation -------------------------------------------------------------------------
def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """x [..., IN] @ weight[OUT, IN].T + bias: the vendor BLAS (cuBLAS / mcBLAS) through F.linear."""
    return F.linear(x, weight, bias)


def dynamic_quant(x: torch.Tensor, *, dtype: torch.dtype = torch.int8) -> tuple[torch.Tensor, torch.Tensor]:
    """x [..., H] -> (int8 [..., H], fp32 scale [...]), scale = max|x| / 127."""
    if dtype != torch.int8:
        raise NotImplementedError(f"dlinfer.ops.dynamic_quant: dtype={dtype} is not supported by '{BACKEND}' "
                                  "(int8 only)")
    _check_device("dynamic_quant", x)
    return norm.dynamic_quant_fwd(x)


def linear_w8a8(
    x_q: torch.Tensor, w_q: torch.Tensor, x_scale: torch.Tensor, w_scale: torch.Tensor,
    bias: torch.Tensor | None = None, *, out_dtype: torch.dtype = torch.float16,
) -> torch.Tensor:
    """(x_q [..., IN] int8 @ w_q [OUT, IN] int8 ^T) * x_scale * w_scale (+ bias) -> [..., OUT] out_dtype."""
    _check_device("linear_w8a8", x_q)
    return quant.linear_w8a8_fwd(x_q, w_q, x_scale, w_scale, bias, out_dtype)


def weight_quant_prepare(
    qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor, *, group_size: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Load time: canonical AWQ (nibbles in AWQ order) -> the W4A16 kernels' chunked layout (see kernels/quant.py)."""
    return quant.awq_prepare(qweight, scales, qzeros, group_size)


def weight_quant_matmul(
    x: torch.Tensor, qweight: torch.Tensor, scales: torch.Tensor, qzeros: torch.Tensor,
    bias: torch.Tensor | None = None, *, group_size: int,
) -> torch.Tensor:
    """W4A16: x [..., IN] @ dequant(W) [IN, OUT] (+ bias), W from :func:`weight_quant_prepare`."""
    _check_device("weight_quant_matmul", x)
    return quant.w4a16_fwd(x, qweight, scales, qzeros, bias, group_size)


OPS: Mapping[str, Callable[..., Any]] = {
    "rms_norm": rms_norm,
    "add_rms_norm": add_rms_norm,
    "apply_rotary_pos_emb": apply_rotary_pos_emb,
    "apply_rotary_pos_emb_inplace": apply_rotary_pos_emb_inplace,
    "silu_and_mul": silu_and_mul,
    "fill_kv_cache": fill_kv_cache,
    "prefill_attention": prefill_attention,
    "paged_prefill_attention": paged_prefill_attention,
    "paged_decode_attention": paged_decode_attention,
    "moe_gating_topk_softmax": moe_gating_topk_softmax,
    "fused_moe": fused_moe,
    "linear": linear,
    "dynamic_quant": dynamic_quant,
    "linear_w8a8": linear_w8a8,
    "rms_norm_w8a8": rms_norm_w8a8,
    "add_rms_norm_w8a8": add_rms_norm_w8a8,
    "weight_quant_prepare": weight_quant_prepare,
    "weight_quant_matmul": weight_quant_matmul,
}
