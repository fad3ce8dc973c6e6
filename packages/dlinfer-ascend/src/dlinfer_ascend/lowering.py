"""The Ascend lowering table: dlinfer nodes -> the torch_npu / ATB nodes the eager adaptor calls.

Data for :func:`dlinfer.lowering.lower` (docs/vendor-semantics.md §C.5). Each entry's target is the kernel the
eager op in ``dlinfer_ascend.ops`` calls, with the same arguments, so eager and graph agree by construction
(checked on the CPU simulator in tests/test_lowering.py). An entry declines the node where the eager op
would take another route or refuse (the node then stays ``dlinfer::<op>`` and runs through the eager
dispatch, which refuses or routes as in eager mode).

``extras["ge_converters"]``: the ops whose torchair GE converters a ``max-autotune`` (GE graph) compile needs
(``torch.ops.<ns>.<op>.<overload>`` spellings, checked against the pinned torch_npu wheel's torchair in
tests/test_torchair_coverage.py); ``()`` where torchair has none (ATB ops), which keeps the entry out of the GE
table unless :data:`GE_SUBSTITUTES` gives one. Substitutes (docs/vendor-semantics.md §C.5) are used only in the GE
mode: they are other kernels than eager's, equal on the simulator but with precision unverified on hardware; the
ACL-graph modes keep eager's kernels.

``host_args``: FIA's host lengths, which torchair's ACL-graph replay updates (its ``_REPLACE_FUNC_MAP``, keyed
by the FX node target, lists the parameter names): they must be graph inputs, never baked constants.
torchair's update rule (``acl_graph.py:get_update_ruler``) takes such a parameter only as a list whose items are
graph inputs (SymInts) or constants, and FIA's schema types it ``SymInt[]?``: hence ``host_lists=True``, the
lowering passes one int graph input per sequence, filled from ``seqlens_kv_cpu`` on every call (TND's cumulative
``actual_seq_lengths`` from ``cu_seqlens_q_cpu`` without its leading 0: ``host_skip``).

Kernels whose semantics differ between eager and a GE graph: ``npu_apply_rotary_pos_emb`` works in place in eager
and out of place in GE (its converter TensorMoves q/k): the rotary entries use its outputs, right under both. GE-only
substitutes: the ATB cache write (ScatterPaKvCache), ATB prefill attention (FIA, non-paged TND, D = 128) and
fused_moe's unpermute (MoeFinalizeRouting); their hardware precision and the contract gaps named in their docstrings
are unverified. Entries whose kernel depends on shapes (rotary, the norm+quant chains) emit their nodes themselves
(:class:`dlinfer.lowering.Emitted`); ``target`` then names the main kernel.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.fx as fx
from dlinfer.lowering import Args, Declined, Emitted, Lowering, resolve

ACL_MODES = ("npugraph_ex", "reduce-overhead")
GE_MODE = "max-autotune"
MODES = ACL_MODES + (GE_MODE,)
HALF = (torch.float16, torch.bfloat16)
FIA = "npu.npu_fused_infer_attention_score"
ROPE, ROTARY_MUL = "npu.npu_apply_rotary_pos_emb", "npu.npu_rotary_mul"
QUANT_MATMUL, WEIGHT_QUANT_MATMUL = "npu.npu_quant_matmul", "npu.npu_weight_quant_batchmatmul"


def _call(a: Args, op: str | Any, *args: Any, **kwargs: Any) -> fx.Proxy:
    """Emit ``op(*args, **kwargs)`` (a ``"ns.op"`` string or a callable) as a node before the lowered one."""
    tracer = next(v.tracer for v in a.values() if isinstance(v, fx.Proxy))
    return tracer.create_proxy("call_function", resolve(op) if isinstance(op, str) else op, args, kwargs)


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

    Chosen over ``npu_scatter_nd_update_`` (no bounds checking, docs/vendor-semantics.md §2.11: a -1 slot would
    write out of bounds); its documented slot range is ``[0, nb*bs-1]`` (torch_npu 2.13.0 ``_op_plugin_docs.py``), while
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
    ``expanded_row_idx`` is token-major (``n*topk + j``, docs/vendor-semantics.md §2.21): transposed here.
    """
    from dlinfer_ascend.ops.moe import MAX_GROUP_LIST

    x, gate_up, ids = a.meta("x"), a.meta("gate_up"), a.meta("topk_ids")
    if x is None or gate_up is None or ids is None or x.shape[0] == 0:
        return Declined("empty step or unknown shapes")
    t, e, k = x.shape[0], gate_up.shape[0], ids.shape[1]
    if e > MAX_GROUP_LIST:
        return Declined(f"{e} experts > {MAX_GROUP_LIST} (eager splits them on the host)")
    def call(op: str, *args: Any, **kwargs: Any) -> Any:
        return _call(a, op, *args, **kwargs)

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
    """The eager ``paged_decode_attention`` route: FIA, BSND (B,1,Hq,D), paged NHD caches; a window travels as
    eager's full (B, KV_S) mask (FIA Q_S=1 ignores sparse_mode), built in the graph by eager's own ``window_mask``
    from the device KV lengths, so a replayed graph recomputes it from the step's lengths."""
    from dlinfer_ascend.ops.plan import window_mask

    q, kc, bt = a.meta("q"), a.meta("key_cache"), a.meta("block_table")
    if q is None or kc is None or bt is None:
        return Declined("unknown shapes")
    for opt in ("softcap", "alibi_slopes"):
        if a[opt] is not None:
            return Declined(f"{opt} (eager refuses it)")
    if q.dtype not in HALF or a["kv_layout"] not in (None, "NHD") or q.shape[0] == 0:
        return Declined("dtype, layout or empty batch outside the FIA decode route")
    bs, hkv, d = kc.shape[1], kc.shape[2], q.shape[-1]
    if bs % 16 or bs > 512:
        return Declined(f"block size {bs}")
    if a.meta("seqlens_kv_cpu").dtype != torch.int32:
        return Declined("seqlens_kv_cpu is not int32")
    scale = float(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(d)
    mask = None if a["window"] is None else window_mask(a["seqlens_kv"], a["window"], bt.shape[1] * bs)
    return (a["q"].contiguous().unsqueeze(1), a["key_cache"].flatten(2), a["value_cache"].flatten(2)), dict(
        block_table=a["block_table"], block_size=bs, num_key_value_heads=hkv, atten_mask=mask,
        actual_seq_lengths_kv=a["seqlens_kv_cpu"], num_heads=q.shape[1], scale=scale, input_layout="BSND",
        sparse_mode=0)


def _rotated_heads(a: Args) -> tuple[Any, Any] | Declined:
    """The eager route of ``ops.elementwise._rotated_heads`` as nodes: [T,H,R] rotated heads of q and k.

    Rotate-half over R in {64, 128} with one dtype: ``npu_apply_rotary_pos_emb`` on dense [1,T,H,R] copies (eager
    hands it such copies, or q/k themselves when they are dense and R == D). Its outputs are used, never the
    mutated inputs: eager's kernel works in place (docs/vendor-semantics.md §2.3), torchair's GE converter copies q/k
    first (TensorMove) and returns new tensors (torch_npu 2.13.0 ``ge_converter/custom/apply_rotary_pos_emb.py``); the
    outputs are right under both. Otherwise ``npu_rotary_mul`` (§2.4), out of place.
    """
    from dlinfer_ascend.ops.elementwise import _fused

    q, k, cos = a.meta("q"), a.meta("k"), a.meta("cos")
    if q is None or k is None or cos is None or q.shape[0] == 0:
        return Declined("empty step or unknown shapes")
    t, r = cos.shape
    c, s = a["cos"].to(q.dtype), a["sin"].to(q.dtype)
    if _fused(q, k, r, a["interleaved"]):
        c4, s4 = c.reshape(1, t, 1, r), s.reshape(1, t, 1, r)
        xr = a["q"][..., :r].unsqueeze(0).clone(memory_format=torch.contiguous_format)
        yr = a["k"][..., :r].unsqueeze(0).clone(memory_format=torch.contiguous_format)
        out = _call(a, ROPE, xr, yr, c4, s4, "BSND", "half")
        return out[0].squeeze(0), out[1].squeeze(0)
    mode = "interleave" if a["interleaved"] else "half"
    c3, s3 = c.reshape(t, 1, r), s.reshape(t, 1, r)
    qr = _call(a, ROTARY_MUL, a["q"][..., :r].contiguous(), c3, s3, mode)
    kr = _call(a, ROTARY_MUL, a["k"][..., :r].contiguous(), c3.to(k.dtype), s3.to(k.dtype), mode)
    return qr, kr


def _rotary(a: Args) -> Emitted | Declined:
    """``apply_rotary_pos_emb``: (q', k') new tensors, dims >= R passed through (eager's concatenation)."""
    heads = _rotated_heads(a)
    if isinstance(heads, Declined):
        return heads
    r, d = a.meta("cos").shape[-1], a.meta("q").shape[-1]
    if r == d:
        return Emitted(heads)
    return Emitted((torch.cat((heads[0], a["q"][..., r:]), -1), torch.cat((heads[1], a["k"][..., r:]), -1)))


def _rotary_inplace(a: Args) -> Emitted | Declined:
    """``apply_rotary_pos_emb_inplace``: the rotated heads copied into q[..., :R] / k[..., :R] (q/k are mutated)."""
    heads = _rotated_heads(a)
    if isinstance(heads, Declined):
        return heads
    r = a.meta("cos").shape[-1]
    a["q"][..., :r].copy_(heads[0])
    a["k"][..., :r].copy_(heads[1])
    return Emitted(None)


def _linear(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]]:
    return (a["x"], a["weight"], a["bias"]), {}


def _norm_quant(a: Args) -> Emitted:
    """``rms_norm_w8a8``: eager's ``npu_dynamic_quant(npu_rms_norm(x)[0])`` -> (int8, scale)."""
    y = _call(a, "npu.npu_rms_norm", _contig(a, "x"), a["weight"], a["eps"])[0]
    r = _call(a, "npu.npu_dynamic_quant", y)
    return Emitted((r[0], r[1]))


def _add_norm_quant(a: Args) -> Emitted:
    """``add_rms_norm_w8a8``: eager's ``npu_add_rms_norm`` then ``npu_dynamic_quant`` -> (int8, scale, x + residual)."""
    n = _call(a, "npu.npu_add_rms_norm", *_add_rms_norm(a)[0])
    r = _call(a, "npu.npu_dynamic_quant", n[0])
    return Emitted((r[0], r[1], n[2]))


def _w8a8_scales(a: Args) -> tuple[Any, Any]:
    return a["x_scale"].reshape(-1).float(), a["w_scale"].float()


def _linear_w8a8(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """``ops.quant.linear_w8a8``'s ``npu_quant_matmul`` call for each output dtype (§2.24)."""
    x, out_dtype = a.meta("x_q"), a["out_dtype"]
    if x is None:
        return Declined("unknown shapes")
    x2 = a["x_q"].reshape(-1, x.shape[-1])
    xs, ws = _w8a8_scales(a)
    bias = a["bias"]
    if out_dtype == torch.bfloat16:
        return (x2, a["w_q"].t(), ws), dict(pertoken_scale=xs, bias=None if bias is None else bias.float(),
                                            output_dtype=torch.bfloat16)
    if out_dtype == torch.float16:
        return (x2, a["w_q"].t(), ws), dict(pertoken_scale=xs, output_dtype=torch.float16)
    if out_dtype == torch.float32:
        return (x2, a["w_q"].t(), torch.ones_like(ws)), dict(output_dtype=torch.int32)
    return Declined(f"out_dtype {out_dtype} (eager refuses it)")


def _linear_w8a8_out(y: Any, a: Args) -> Any:
    """Eager's epilogue: fp16 adds the bias in fp32 afterwards; fp32 dequantises the int32 accumulator."""
    bias, out_dtype = a["bias"], a["out_dtype"]
    if out_dtype == torch.float16 and bias is not None:
        y = (y.float() + bias.float()).to(torch.float16)
    elif out_dtype == torch.float32:
        xs, ws = _w8a8_scales(a)
        y = y.float() * xs[:, None] * ws
        if bias is not None:
            y = y + bias.float()
    return y.reshape(*a.meta("x_q").shape[:-1], a.meta("w_q").shape[0])


def _weight_quant(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """``ops.quant.weight_quant_matmul``'s ``npu_weight_quant_batchmatmul`` call (§2.22)."""
    x, sc = a.meta("x"), a.meta("scales")
    if x is None or sc is None or not isinstance(a["group_size"], int):
        return Declined("unknown shapes or group size")
    n_in, n_out, g = x.shape[-1], sc.shape[-1], a["group_size"]
    per_group = g < n_in
    s = a["scales"] if sc.dtype == x.dtype else a["scales"].to(x.dtype)
    off = a["qzeros"] if a.meta("qzeros").dtype == x.dtype else a["qzeros"].to(x.dtype)
    if not per_group:
        s, off = s.reshape(1, n_out), off.reshape(1, n_out)
    b = a["bias"]
    if b is not None:
        b = b.to(torch.float16) if x.dtype == torch.float16 else b.float()
    return ((a["x"].reshape(-1, n_in).contiguous(), a["qweight"], s, off),
            dict(bias=b, antiquant_group_size=g if per_group else 0))


def _weight_quant_out(y: Any, a: Args) -> Any:
    return y.reshape(*a.meta("x").shape[:-1], a.meta("scales").shape[-1])


def _compressed_mask(a: Args, device: torch.device) -> Any:
    """FIA's 2048x2048 triu(1) bool mask (sparse modes 3/4, §2.6) as graph nodes (eager caches one per device)."""
    return _call(a, torch.ones, (2048, 2048), dtype=torch.bool, device=device).triu(1)


def _mask_kwargs(a: Args, device: torch.device) -> dict[str, Any]:
    """Eager's ``ops.attention._mask_kwargs``: causal -> sparse_mode 3, a window -> 4, non-causal -> 0 (no mask)."""
    if not a["causal"]:
        return {"sparse_mode": 0, "atten_mask": None}
    if a["window"] is None:
        return {"sparse_mode": 3, "atten_mask": _compressed_mask(a, device)}
    return {"sparse_mode": 4, "atten_mask": _compressed_mask(a, device), "pre_tokens": a["window"] - 1,
            "next_tokens": 0}


def _attention_options(a: Args) -> Declined | None:
    for opt in ("softcap", "alibi_slopes"):
        if a[opt] is not None:
            return Declined(f"{opt} (eager refuses it)")
    if a["window"] is not None and not a["causal"]:
        return Declined("a window with causal=False (eager refuses it)")
    return None


def _paged_prefill(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """Eager's TND route of ``paged_prefill_attention``: FIA TND over the paged NHD caches, cumulative host query
    lengths (``cu_seqlens_q_cpu[1:]``, no leading 0) and per-sequence host KV lengths (§2.6).

    Eager takes it when (D, Dv) is a documented TND pair and the step's longest query is > 1; the graph decides on
    the ``max_seqlen_q`` it was traced with (a constant): other routes (padded BSND, per-token) build host-side
    indices and are declined.
    """
    from dlinfer_ascend.ops.attention import TND_DIMS

    q, kc, vc = a.meta("q"), a.meta("key_cache"), a.meta("value_cache")
    bad = _attention_options(a)
    if bad is not None:
        return bad
    if q is None or kc is None or q.dtype not in HALF or a["kv_layout"] not in (None, "NHD") or q.shape[0] == 0:
        return Declined("unknown shapes, dtype, layout or empty step outside the FIA TND route")
    (_, hq, d), (bs, hkv), dv = q.shape, kc.shape[1:3], vc.shape[-1]
    if (d, dv) not in TND_DIMS or not isinstance(a["max_seqlen_q"], int) or a["max_seqlen_q"] <= 1:
        return Declined(f"head dims {(d, dv)} / max_seqlen_q {a['max_seqlen_q']} outside eager's TND route")
    if bs % 16 or bs > 512:
        return Declined(f"block size {bs}")
    scale = float(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(d)
    return (a["q"].contiguous(), a["key_cache"].flatten(2), a["value_cache"].flatten(2)), dict(
        block_table=a["block_table"], block_size=bs, num_key_value_heads=hkv,
        actual_seq_lengths=a["cu_seqlens_q_cpu"], actual_seq_lengths_kv=a["seqlens_kv_cpu"], num_heads=hq,
        scale=scale, input_layout="TND", **_mask_kwargs(a, q.device))


PREFILL_GE_DIMS = ((128, 128),)
"""(D, Dv) the GE prefill substitute takes: FIA's non-paged TND is documented for D = 128; the QK-192 pairs fall
under the docstring's separate TND restriction block (N in {8..128}, Q_N == K_N, bf16, q < kv per batch for
sparse 3), which a causal self-attention step cannot meet."""


def _prefill_ge(a: Args) -> tuple[tuple[Any, ...], dict[str, Any]] | Declined:
    """GE substitute for ``prefill_attention`` (ATB SelfAttention, no converter): FIA, TND without paging.

    q [T,Hq,D], k/v [T,Hkv,D] packed as TND; ``actual_seq_lengths`` and ``actual_seq_lengths_kv`` both the
    cumulative host lengths ``cu_seqlens_q_cpu[1:]`` (torch_npu 2.13.0 ``_op_plugin_docs.py``: in TND both lists
    are cumulative, "在非PA场景下, 第b个值表示前b个Batch的S轴累加长度"); causal -> sparse_mode 3 (q == kv per
    sequence, so bottom-right equals ATB's top-left causal), a window -> 4 (pre_tokens W-1), non-causal -> 0 without
    a mask (ATB's unpad route). A different kernel from eager's ATB one: equal on the simulator, precision
    unverified on hardware, as is FIA's acceptance of GQA and fp16 in non-paged TND (the docstring's restriction
    block listing Q_N == K_N and bf16 may or may not apply to D = 128).
    """
    q, k, v = a.meta("q"), a.meta("k"), a.meta("v")
    bad = _attention_options(a)
    if bad is not None:
        return bad
    if q is None or k is None or v is None or q.dtype not in HALF or q.shape[0] == 0:
        return Declined("unknown shapes, dtype or empty step")
    d, dv = q.shape[-1], v.shape[-1]
    if (d, dv) not in PREFILL_GE_DIMS:
        return Declined(f"head dims {(d, dv)}: FIA's non-paged TND is documented for {list(PREFILL_GE_DIMS)}")
    scale = float(a["scale"]) if a["scale"] is not None else 1.0 / math.sqrt(d)
    return (_contig(a, "q"), _contig(a, "k"), _contig(a, "v")), dict(
        actual_seq_lengths=a["cu_seqlens_q_cpu"], actual_seq_lengths_kv=a["cu_seqlens_q_cpu"], num_heads=q.shape[1],
        num_key_value_heads=k.shape[1], scale=scale, input_layout="TND", **_mask_kwargs(a, q.device))


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


_ATEN_MASK = ("torch.ops.aten.ones.default", "torch.ops.aten.triu.default")
"""The compressed-mask glue of FIA's sparse modes 3/4."""
_ATEN_WINDOW = ("torch.ops.aten.arange.default", "torch.ops.aten._to_copy.default", "torch.ops.aten.sub.Tensor",
                "torch.ops.aten.le.Tensor", "torch.ops.aten.gt.Tensor", "torch.ops.aten.bitwise_or.Tensor",
                "torch.ops.aten.unsqueeze.default", "torch.ops.aten.slice.Tensor")
"""The decode window mask's glue (``ops.plan.window_mask`` traced)."""
_ATEN_LINEAR = tuple(f"torch.ops.aten.{op}.default" for op in ("t", "mm", "addmm", "matmul", "view", "_unsafe_view"))
"""What AOT autograd decomposes ``aten.linear`` into (CompositeImplicitAutograd): torchair converts these."""


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
                                       extras={"ge_converters": _npu("npu_fused_infer_attention_score")
                                               + _ATEN_WINDOW}),
    "paged_prefill_attention": Lowering(FIA, _paged_prefill, _first,
                                        host_args={"actual_seq_lengths": "cu_seqlens_q_cpu",
                                                   "actual_seq_lengths_kv": "seqlens_kv_cpu"},
                                        host_lists=True, host_skip={"actual_seq_lengths": 1},
                                        extras={"ge_converters": _npu("npu_fused_infer_attention_score")
                                                + _ATEN_MASK}),
    "apply_rotary_pos_emb": Lowering(ROPE, _rotary, note="route (fused / rotary_mul) chosen from shapes",
                                     extras={"ge_converters": _npu("npu_apply_rotary_pos_emb")
                                             + _npu("npu_rotary_mul")}),
    "apply_rotary_pos_emb_inplace": Lowering(ROPE, _rotary_inplace, note="route chosen from shapes",
                                             extras={"ge_converters": _npu("npu_apply_rotary_pos_emb")
                                                     + _npu("npu_rotary_mul")}),
    "linear": Lowering("aten.linear", _linear, extras={"ge_converters": _ATEN_LINEAR, "aot_decomposed": True}),
    "rms_norm_w8a8": Lowering("npu.npu_dynamic_quant", _norm_quant,
                              extras={"ge_converters": _npu("npu_dynamic_quant") + _npu("npu_rms_norm")}),
    "add_rms_norm_w8a8": Lowering("npu.npu_dynamic_quant", _add_norm_quant,
                                  extras={"ge_converters": _npu("npu_dynamic_quant") + _npu("npu_add_rms_norm")}),
    "linear_w8a8": Lowering(QUANT_MATMUL, _linear_w8a8, _linear_w8a8_out,
                            extras={"ge_converters": _npu("npu_quant_matmul")}),
    "weight_quant_matmul": Lowering(WEIGHT_QUANT_MATMUL, _weight_quant, _weight_quant_out,
                                    extras={"ge_converters": _npu("npu_weight_quant_batchmatmul")}),
}
"""op -> lowering. Not listed (they run through the eager dispatch): prefill_attention (ATB, whose mask and host
lengths are built on the host; GE mode: :data:`GE_SUBSTITUTES`), fused_moe (host-side routing; GE mode:
:data:`GE_SUBSTITUTES`). Declined nodes also stay: paged_prefill_attention outside eager's TND route (padded BSND,
per-token), empty steps."""


GE_SUBSTITUTES: dict[str, Lowering] = {
    "fill_kv_cache": Lowering("npu.npu_scatter_pa_kv_cache_functional", _fill_kv_cache_ge, _write_back,
                              note="GE substitute for the ATB cache write (ScatterPaKvCache)",
                              extras={"ge_converters": _npu("npu_scatter_pa_kv_cache_functional")}),
    "prefill_attention": Lowering(FIA, _prefill_ge, _first,
                                  host_args={"actual_seq_lengths": "cu_seqlens_q_cpu",
                                             "actual_seq_lengths_kv": "cu_seqlens_q_cpu"},
                                  host_lists=True, host_skip={"actual_seq_lengths": 1, "actual_seq_lengths_kv": 1},
                                  note="GE substitute for ATB SelfAttention: FIA TND without paging",
                                  extras={"ge_converters": _npu("npu_fused_infer_attention_score") + _ATEN_MASK}),
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
