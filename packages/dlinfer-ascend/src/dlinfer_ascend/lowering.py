"""The Ascend lowering table: dlinfer nodes -> the torch_npu / ATB nodes the eager adaptor calls.

Data for :func:`dlinfer.lowering.lower` (models-vlm-graph.md §C.5). Each entry's target is the kernel the
eager op in ``dlinfer_ascend.ops`` calls, with the same arguments, so eager and graph agree by construction
(checked on the CPU simulator in tests/test_lowering.py). An entry declines the node where the eager op
would take another route or refuse (the node then stays ``dlinfer::<op>`` and runs through the eager
dispatch, which refuses or routes as in eager mode).

``extras["ge_converters"]``: the ops whose torchair GE converters a ``max-autotune`` (GE graph) compile needs
(``torch.ops.<ns>.<op>.<overload>`` spellings, checked against the pinned torch_npu wheel's torchair in
tests/test_torchair_coverage.py); ``()`` where torchair has none (ATB ops), which keeps the entry out of the GE
table unless :data:`GE_SUBSTITUTES` gives one. Substitutes (models-vlm-graph.md §C.5) are used only in the GE
mode: they are other kernels than eager's, equal on the simulator but with precision unverified on hardware; the
ACL-graph modes keep eager's kernels.

``host_args``: FIA's host lengths, which torchair's ACL-graph replay updates (its ``_REPLACE_FUNC_MAP``, keyed
by the FX node target, lists the parameter names): they must be graph inputs, never baked constants.
torchair's update rule (``acl_graph.py:get_update_ruler``) takes such a parameter only as a list whose items are
graph inputs (SymInts) or constants, and FIA's schema types it ``SymInt[]?``: hence ``host_lists=True``, the
lowering passes one int graph input per sequence, filled from ``seqlens_kv_cpu`` on every call.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from dlinfer.lowering import Args, Declined, Lowering, resolve

ACL_MODES = ("npugraph_ex", "reduce-overhead")
GE_MODE = "max-autotune"
MODES = ACL_MODES + (GE_MODE,)
HALF = (torch.float16, torch.bfloat16)
FIA = "npu.npu_fused_infer_attention_score"


def _contig(a: Args, name: str) -> Any:
    return a[name].contiguous()


def _rms_norm(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (_contig(a, "x"), a["weight"], a["eps"]), {}


def _add_rms_norm(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (_contig(a, "x"), _contig(a, "residual"), a["weight"], a["eps"]), {}


def _silu_and_mul(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    x = a.meta("x")
    if x is None or x.numel() == 0:
        return Declined("empty or unknown input shape")
    return (_contig(a, "x"), -1), {}


def _dynamic_quant(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    if a["dtype"] not in (None, torch.int8):
        return Declined(f"dtype {a['dtype']}")
    return (_contig(a, "x"),), {}


def _fill_kv_cache(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    key, slots = a.meta("key"), a.meta("slot_mapping")
    if key is None or key.shape[0] == 0 or a["kv_layout"] not in (None, "NHD"):
        return Declined("empty step, unknown shape or a non-NHD layout")
    s = a["slot_mapping"] if slots.dtype == torch.int32 else a["slot_mapping"].to(torch.int32)
    return (_contig(a, "key"), _contig(a, "value"), a["key_cache"], a["value_cache"], s), {}


def _fill_kv_cache_ge(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """``npu_scatter_pa_kv_cache_functional``, cache_mode 'Norm' (ND caches [nb,bs,Hkv,D], the ATB write's layout).

    Chosen over ``npu_scatter_nd_update_`` (no bounds checking, vendor-apis.md §2.11: a -1 slot would write out
    of bounds); its documented slot range is ``[0, nb*bs-1]`` (torch_npu 2.13.0 ``_op_plugin_docs.py``), while
    op-plugin's test golden skips negative slots as ATB's does: -1 (padding) slots are unverified on hardware.
    """
    key, kc = a.meta("key"), a.meta("key_cache")
    if key is None or kc is None or key.shape[0] == 0 or a["kv_layout"] not in (None, "NHD"):
        return Declined("empty step, unknown shape or a non-NHD layout")
    return ((_contig(a, "key"), _contig(a, "value"), a["key_cache"], a["value_cache"], _contig(a, "slot_mapping")),
            {"cache_mode": "Norm"})


def _write_back(r: Any, a: Args) -> None:
    """The functional scatter returns new caches: copy them into the dlinfer op's mutated caches."""
    a["key_cache"].copy_(r[0])
    a["value_cache"].copy_(r[1])


def _fused_moe_ge(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """The eager fused_moe chain (init_routing_v2 -> grouped_matmul -> swiglu -> grouped_matmul, as glue nodes),
    finalised by ``npu_moe_finalize_routing`` (GE MoeFinalizeRouting) instead of ``npu_moe_token_unpermute``.

    Its index is k-major (entry ``i + k*N``, torch_npu 2.13.0 ``_op_plugin_docs.py``) while init_routing_v2's
    ``expanded_row_idx`` is token-major (``n*topk + j``, vendor-apis.md §2.21): transposed here.
    """
    from dlinfer_ascend.ops.moe import MAX_GROUP_LIST

    x, gate_up, ids = a.meta("x"), a.meta("gate_up"), a.meta("topk_ids")
    if x is None or gate_up is None or ids is None or x.shape[0] == 0:
        return Declined("empty step or unknown shapes")
    t, e, k = x.shape[0], gate_up.shape[0], ids.shape[1]
    if e > MAX_GROUP_LIST:
        return Declined(f"{e} experts > {MAX_GROUP_LIST} (eager splits them on the host)")
    tracer = a["x"].tracer

    def call(op: str, *args: Any, **kwargs: Any) -> Any:
        return tracer.create_proxy("call_function", resolve(op), args, kwargs)

    idx = a["topk_ids"] if ids.dtype == torch.int32 else a["topk_ids"].to(torch.int32)
    routed = call("npu.npu_moe_init_routing_v2", _contig(a, "x"), idx.contiguous(), active_num=t * k, expert_num=e,
                  expert_tokens_num_type=1, expert_tokens_num_flag=True, active_expert_range=[0, e], quant_mode=-1)
    counts = routed[2]
    gmm = dict(group_list=counts, split_item=2, group_type=0, group_list_type=1)
    h = call("npu.npu_grouped_matmul", [routed[0]], [a["gate_up"].transpose(1, 2)], **gmm)[0]
    y = call("npu.npu_grouped_matmul", [call("npu.npu_swiglu", h, -1)], [a["down"].transpose(1, 2)], **gmm)[0]
    probs = a["topk_weights"] if a.meta("topk_weights").dtype == x.dtype else a["topk_weights"].to(x.dtype)
    src_to_dst = routed[1].view(t, k).t().contiguous().view(-1)
    return (y, None, None, None, probs.contiguous(), src_to_dst, None), {"drop_pad_mode": 0, "k": k}


def _decode(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """The eager ``paged_decode_attention`` route without a window: FIA, BSND (B,1,Hq,D), paged NHD caches."""
    q, kc = a.meta("q"), a.meta("key_cache")
    if q is None or kc is None:
        return Declined("unknown shapes")
    for opt in ("window", "softcap", "alibi_slopes"):
        if a[opt] is not None:
            return Declined(f"{opt} (eager route)")
    if q.dtype not in HALF or a["kv_layout"] not in (None, "NHD") or q.shape[0] == 0:
        return Declined("dtype, layout or empty batch outside the FIA decode route")
    bs, hkv, d = kc.shape[1], kc.shape[2], q.shape[-1]
    if bs % 16 or bs > 512:
        return Declined(f"block size {bs}")
    if a.meta("seqlens_kv_cpu").dtype != torch.int32:
        return Declined("seqlens_kv_cpu is not int32")
    scale = float(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(d)
    return (a["q"].contiguous().unsqueeze(1), a["key_cache"].flatten(2), a["value_cache"].flatten(2)), dict(
        block_table=a["block_table"], block_size=bs, num_key_value_heads=hkv, atten_mask=None,
        actual_seq_lengths_kv=a["seqlens_kv_cpu"], num_heads=q.shape[1], scale=scale, input_layout="BSND",
        sparse_mode=0)


def _gating(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (a["logits"].float().contiguous(), None, a["topk"]), {}


def _gating_out(r: Any, a: Args) -> tuple[Any, Any]:
    w = r[0]
    if a["renormalize"]:
        w = w / w.sum(-1, keepdim=True)
    return w, r[1]


def _first(r: Any, a: Args) -> Any:
    return r[0]


def _norm_pair(r: Any, a: Args) -> tuple[Any, Any]:
    return r[0], r[2]  # npu_add_rms_norm -> (y, rstd, x + residual)


def _decode_out(r: Any, a: Args) -> Any:
    return r[0].squeeze(1)


def _none(r: Any, a: Args) -> None:
    return None


def _npu(op: str) -> tuple[str, ...]:
    return (f"torch.ops.npu.{op}.default",)


TABLE: dict[str, Lowering] = {
    "rms_norm": Lowering("npu.npu_rms_norm", _rms_norm, _first, extras={"ge_converters": _npu("npu_rms_norm")}),
    "add_rms_norm": Lowering("npu.npu_add_rms_norm", _add_rms_norm, _norm_pair,
                             extras={"ge_converters": _npu("npu_add_rms_norm")}),
    "silu_and_mul": Lowering("npu.npu_swiglu", _silu_and_mul, extras={"ge_converters": _npu("npu_swiglu")}),
    "dynamic_quant": Lowering("npu.npu_dynamic_quant", _dynamic_quant,
                              extras={"ge_converters": _npu("npu_dynamic_quant")}),
    "moe_gating_topk_softmax": Lowering("npu.npu_moe_gating_top_k_softmax", _gating, _gating_out,
                                        extras={"ge_converters": _npu("npu_moe_gating_top_k_softmax")}),
    "fill_kv_cache": Lowering("atb._npu_reshape_and_cache", _fill_kv_cache, _none,
                              note="ATB op: no torchair GE converter (substitute not implemented)",
                              extras={"ge_converters": ()}),
    "paged_decode_attention": Lowering(FIA, _decode, _decode_out,
                                       host_args={"actual_seq_lengths_kv": "seqlens_kv_cpu"}, host_lists=True,
                                       extras={"ge_converters": _npu("npu_fused_infer_attention_score")}),
}
"""op -> lowering. Not listed (they run through the eager dispatch): linear (torch_npu's aten matmul either way),
the rotary ops (route depends on strides), paged_prefill_attention and prefill_attention (route and ATB masks
depend on host values), fused_moe (host-side routing; GE mode: :data:`GE_SUBSTITUTES`), the w8a8 / weight-quant
matmuls."""


GE_SUBSTITUTES: dict[str, Lowering] = {
    "fill_kv_cache": Lowering("npu.npu_scatter_pa_kv_cache_functional", _fill_kv_cache_ge, _write_back,
                              note="GE substitute for the ATB cache write (ScatterPaKvCache)",
                              extras={"ge_converters": _npu("npu_scatter_pa_kv_cache_functional")}),
    "fused_moe": Lowering("npu.npu_moe_finalize_routing", _fused_moe_ge,
                          note="GE-only lowering: npu_moe_token_unpermute has no converter (MoeFinalizeRouting)",
                          extras={"ge_converters": _npu("npu_moe_finalize_routing") + _npu("npu_moe_init_routing_v2")
                                  + _npu("npu_grouped_matmul") + _npu("npu_swiglu")}),
}
"""op -> lowering used in the GE mode only, instead of :data:`TABLE`'s entry (whose target has no converter) or
where TABLE has none (fused_moe: not lowered in the ACL modes, where its eager kernels run as captured ones;
more than MAX_GROUP_LIST experts are declined, as eager splits them on the host)."""


def table(mode: str) -> dict[str, Lowering]:
    """The entries for a torchair mode: every entry for ACL-graph modes; for GE the converter-backed ones plus
    :data:`GE_SUBSTITUTES`."""
    if mode not in MODES:
        raise ValueError(f"dlinfer-ascend compile mode {mode!r}: expected one of {list(MODES)}")
    if mode == GE_MODE:
        ge = {op: e for op, e in TABLE.items() if e.extras["ge_converters"]}
        ge.update(GE_SUBSTITUTES)
        return ge
    return dict(TABLE)
