"""The op spec: the single source of truth for every dlinfer op.

Each :class:`OpSpec` lists its parameters once. From it dlinfer derives the public
function ``dlinfer.ops.<name>``, the ``torch.library`` schema ``dlinfer::<name>``
and its fake implementation, argument validation, registration-time checks of
plugin implementations and the docs. The conformance kit's cases (``dlinfer.testing.cases``:
shapes, input builders, dtypes) are written by hand per op; the kit takes from the spec how a
case calls the op, which outputs and mutated arguments it compares, that the other tensor
inputs stay untouched, and which attention options get a case.

Shapes are written with symbolic dimensions; a symbol used by several arguments must
bind to the same size. ``"..."`` matches any number of leading dimensions (equal
across the arguments that use it). The KV-cache shapes depend on ``kv_layout`` and
are spelled with the pseudo-symbols of :data:`KV_LAYOUTS`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch

API_VERSION = "1.2"
"""Version of the op/plugin API that dlinfer-core implements (plugins declare a range).
1.1 added ``apply_rotary_pos_emb_inplace``; a 1.0 plugin still loads and gets it composed from its own
``apply_rotary_pos_emb`` (``OpSpec.derived_from``), or the reference if it lacks that too.
1.2 added the optional ``plan`` keyword of the attention ops (``Backend.prepare_metadata``); an implementation
without it still registers and never receives it."""

FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
INDEX_DTYPES = (torch.int32, torch.int64)
KV_LAYOUTS: dict[str, tuple[str, ...]] = {
    "NHD": ("NB", "BS", "Hkv", "D"),
    "HND": ("NB", "Hkv", "BS", "D"),
}
"""Block shape per KV layout for the key cache; the value cache uses ``Dv`` in place of ``D``."""

Kind = Literal["tensor", "int", "float", "bool", "str", "dtype", "plan"]
"""``"plan"``: the opaque per-step object of ``Backend.prepare_metadata``; eager only: it is not part of the
``torch.library`` schema (a traced call drops it) and an implementation may omit the parameter."""


@dataclass(frozen=True)
class Param:
    """One parameter of an op.

    ``shape``: symbolic dims, ``None`` for no shape check, or ``"kv_cache_k"`` /
    ``"kv_cache_v"`` for the layout-dependent KV cache. ``dtypes``: allowed dtypes,
    or ``"same:<arg>"`` to require the dtype of another argument.
    """

    name: str
    kind: Kind = "tensor"
    shape: tuple[str, ...] | str | None = None
    dtypes: tuple[torch.dtype, ...] | str | None = None
    optional: bool = False
    default: object = None
    keyword_only: bool = False
    mutated: bool = False
    positive: bool = False
    """A number that must be > 0 when given (the public op refuses 0, negatives and NaN)."""
    doc: str = ""

    @property
    def has_default(self) -> bool:
        return self.optional or self.default is not None or self.kind == "bool"


@dataclass(frozen=True)
class Output:
    """One returned tensor: symbolic shape and dtype (a dtype, ``"same:<arg>"`` or ``"param:<arg>"``)."""

    name: str
    shape: tuple[str, ...]
    dtype: torch.dtype | str


@dataclass(frozen=True)
class OpSpec:
    name: str
    params: tuple[Param, ...]
    outputs: tuple[Output, ...]
    summary: str
    graph_op: bool = True
    """False for load-time helpers (``weight_quant_prepare``): no custom op, never traced."""
    options: tuple[str, ...] = field(default=())
    """Optional behaviours a backend may refuse with NotImplementedError (documented, conformance-tested)."""
    derived_from: tuple[str, ...] = ()
    """Ops this one is composed from (``dlinfer.compose``) when a backend lacks it but has all of these."""
    rounded_weight: bool = False
    """The backend may round the dequantised weight once to x's dtype before the product, as W4A16 vendor kernels
    do; the conformance kit then allows that rounding's forward error, ``u(x.dtype) * sum_i |x_i| |W[i, o]|`` per
    output (u the dtype's unit roundoff), on top of the accumulating tolerance."""

    def param(self, name: str) -> Param:
        for p in self.params:
            if p.name == name:
                return p
        raise KeyError(f"op {self.name!r} has no parameter {name!r}")

    @property
    def returns_tuple(self) -> bool:
        return len(self.outputs) != 1

    @property
    def mutated(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.params if p.mutated)


def _t(name: str, shape=None, dtypes=FLOAT_DTYPES, **kw) -> Param:
    return Param(name, "tensor", shape, dtypes, **kw)


def _kw(name: str, kind: Kind, default=None, optional=False, doc="", positive=False) -> Param:
    return Param(name, kind, default=default, optional=optional, keyword_only=True, doc=doc, positive=positive)


_EPS = _kw("eps", "float", 1e-6, doc="variance epsilon")
_ATTN_OPTIONS = (
    _kw("scale", "float", optional=True, doc="softmax scale; None means 1/sqrt(D)"),
    _kw("window", "int", optional=True, positive=True,
        doc="left window size (> 0): key j is visible to query position p iff p - window < j (and j <= p when "
            "causal)"),
    _kw("softcap", "float", optional=True, positive=True, doc="scores become softcap * tanh(scores / softcap), > 0"),
    Param("alibi_slopes", "tensor", ("Hq",), (torch.float32,), optional=True, keyword_only=True,
          doc="per-head ALiBi slopes; adds slope * (j - p) to the scores"),
)
_PLAN = _kw("plan", "plan", optional=True,
            doc="the step's plan from the active backend's Backend.prepare_metadata (built once per step); "
                "None: the op derives what it needs from the other arguments. Same result either way")
_LAYOUT = _kw("kv_layout", "str", optional=True, doc='"NHD" or "HND"; None means the active backend\'s layout')
_ATTN_SUMMARY = (
    "Scores are scale * q.k, then softcap, then ALiBi, then the mask; softmax in fp32. "
    "Causal alignment is bottom-right."
)

SPECS: dict[str, OpSpec] = {}


def _add(spec: OpSpec) -> None:
    SPECS[spec.name] = spec


_add(OpSpec(
    "rms_norm",
    (_t("x", ("...", "H")), _t("weight", ("H",), "same:x"), _EPS),
    (Output("out", ("...", "H"), "same:x"),),
    "x * rsqrt(mean(x^2) + eps) * weight, computed in fp32, returned in x.dtype.",
))
_add(OpSpec(
    "add_rms_norm",
    (_t("x", ("...", "H")), _t("residual", ("...", "H"), "same:x"), _t("weight", ("H",), "same:x"), _EPS),
    (Output("normed", ("...", "H"), "same:x"), Output("added", ("...", "H"), "same:x")),
    "added = x + residual (rounded to x.dtype); normed = rms_norm(added).",
))
_add(OpSpec(
    "apply_rotary_pos_emb",
    (_t("q", ("T", "Hq", "D")), _t("k", ("T", "Hkv", "D"), "same:q"),
     _t("cos", ("T", "R")), _t("sin", ("T", "R"), "same:cos"),
     _kw("interleaved", "bool", False, doc="GPT-J pairwise rotation instead of NeoX rotate-half")),
    (Output("q_out", ("T", "Hq", "D"), "same:q"), Output("k_out", ("T", "Hkv", "D"), "same:k")),
    "out = x*cos + rot(x)*sin on the first R (even, <= D) dims; dims >= R pass through. "
    "rot is rotate-half (NeoX) or pairwise (GPT-J, interleaved=True).",
    options=("interleaved",),
))
_add(OpSpec(
    "apply_rotary_pos_emb_inplace",
    (_t("q", ("T", "Hq", "D"), mutated=True), _t("k", ("T", "Hkv", "D"), "same:q", mutated=True),
     _t("cos", ("T", "R")), _t("sin", ("T", "R"), "same:cos"),
     _kw("interleaved", "bool", False, doc="GPT-J pairwise rotation instead of NeoX rotate-half")),
    (),
    "apply_rotary_pos_emb written into q and k (dims >= R untouched); nothing is returned. q and k may be "
    "strided views that do not overlap, e.g. column slices of a fused [T, (Hq+2*Hkv)*D] qkv buffer (token "
    "stride > heads*D), with unit stride in the last dim; only their elements may be written. A backend whose "
    "kernel needs dense rows rotates a contiguous copy and writes it back; one that cannot serve a last-dim "
    "stride != 1 raises ValueError naming the op, the argument, the expected and the actual strides.",
    options=("interleaved",),
    derived_from=("apply_rotary_pos_emb",),
))
_add(OpSpec(
    "silu_and_mul",
    (_t("x", ("...", "2I")),),
    (Output("out", ("...", "I"), "same:x"),),
    "silu(x[..., :I]) * x[..., I:].",
))
_add(OpSpec(
    "fill_kv_cache",
    (_t("key", ("T", "Hkv", "D")), _t("value", ("T", "Hkv", "Dv"), "same:key"),
     _t("key_cache", "kv_cache_k", "same:key", mutated=True), _t("value_cache", "kv_cache_v", "same:key", mutated=True),
     _t("slot_mapping", ("T",), INDEX_DTYPES), _LAYOUT),
    (),
    "Writes token t of key/value to slot slot_mapping[t] (block * BS + offset); -1 slots are skipped.",
))
_add(OpSpec(
    "prefill_attention",
    (_t("q", ("T", "Hq", "D")), _t("k", ("T", "Hkv", "D"), "same:q"), _t("v", ("T", "Hkv", "Dv"), "same:q"),
     _t("cu_seqlens_q", ("B+1",), (torch.int32,)),
     _kw("max_seqlen_q", "int"), _kw("causal", "bool", True), *_ATTN_OPTIONS,
     Param("cu_seqlens_q_cpu", "tensor", ("B+1",), (torch.int32,), optional=True, keyword_only=True,
           doc="host mirror of cu_seqlens_q, for backends that declare host_seqlens"), _PLAN),
    (Output("out", ("T", "Hq", "Dv"), "same:q"),),
    "Varlen attention over the given k/v only (no cache): prefill without history and vision towers "
    "(causal=False). " + _ATTN_SUMMARY,
    options=("window", "softcap", "alibi_slopes", "causal=False"),
))
_add(OpSpec(
    "paged_prefill_attention",
    (_t("q", ("T", "Hq", "D")), _t("key_cache", "kv_cache_k", "same:q"), _t("value_cache", "kv_cache_v", "same:q"),
     _t("block_table", ("B", "MB"), (torch.int32,)), _t("cu_seqlens_q", ("B+1",), (torch.int32,)),
     _t("seqlens_kv", ("B",), (torch.int32,)),
     _kw("max_seqlen_q", "int"), _kw("max_seqlen_kv", "int"), _kw("causal", "bool", True), *_ATTN_OPTIONS, _LAYOUT,
     Param("cu_seqlens_q_cpu", "tensor", ("B+1",), (torch.int32,), optional=True, keyword_only=True),
     Param("seqlens_kv_cpu", "tensor", ("B",), (torch.int32,), optional=True, keyword_only=True), _PLAN),
    (Output("out", ("T", "Hq", "Dv"), "same:q"),),
    "New tokens are already in the cache; query i of sequence b sits at position "
    "seqlens_kv[b] - q_len[b] + i. " + _ATTN_SUMMARY,
    options=("window", "softcap", "alibi_slopes", "causal=False"),
))
_add(OpSpec(
    "paged_decode_attention",
    (_t("q", ("B", "Hq", "D")), _t("key_cache", "kv_cache_k", "same:q"), _t("value_cache", "kv_cache_v", "same:q"),
     _t("block_table", ("B", "MB"), (torch.int32,)), _t("seqlens_kv", ("B",), (torch.int32,)),
     _kw("max_seqlen_kv", "int"), *_ATTN_OPTIONS, _LAYOUT,
     Param("seqlens_kv_cpu", "tensor", ("B",), (torch.int32,), optional=True, keyword_only=True), _PLAN),
    (Output("out", ("B", "Hq", "Dv"), "same:q"),),
    "One new token per sequence attending to its whole cached context. " + _ATTN_SUMMARY,
    options=("window", "softcap", "alibi_slopes"),
))
_add(OpSpec(
    "moe_gating_topk_softmax",
    (_t("logits", ("T", "E")), _kw("topk", "int"), _kw("renormalize", "bool", False)),
    (Output("weights", ("T", "topk"), torch.float32), Output("ids", ("T", "topk"), torch.int32)),
    "softmax(logits) in fp32, then the top-k weights and expert ids; renormalize divides by their sum.",
))
_add(OpSpec(
    "fused_moe",
    (_t("x", ("T", "H")), _t("gate_up", ("E", "2I", "H"), "same:x"), _t("down", ("E", "H", "I"), "same:x"),
     _t("topk_weights", ("T", "k")), _t("topk_ids", ("T", "k"), INDEX_DTYPES)),
    (Output("out", ("T", "H"), "same:x"),),
    "sum_j w[t,j] * down_e(silu(gate_e x) * up_e x), e = ids[t,j]; gate_up[e] = [gate; up].",
))
_add(OpSpec(
    "linear",
    (_t("x", ("...", "IN")), _t("weight", ("OUT", "IN"), "same:x"), _t("bias", ("OUT",), "same:x", optional=True)),
    (Output("out", ("...", "OUT"), "same:x"),),
    "x @ weight.T + bias.",
))
_add(OpSpec(
    "dynamic_quant",
    (_t("x", ("...", "H")), _kw("dtype", "dtype", torch.int8)),
    (Output("x_q", ("...", "H"), "param:dtype"), Output("scale", ("...",), torch.float32)),
    "Symmetric per-token quantisation: scale = max|x| / 127, x_q = round(x / scale).",
))
_add(OpSpec(
    "linear_w8a8",
    (_t("x_q", ("...", "IN"), (torch.int8,)), _t("w_q", ("OUT", "IN"), (torch.int8,)),
     _t("x_scale", ("...",), (torch.float32,)), _t("w_scale", ("OUT",), (torch.float32,)),
     _t("bias", ("OUT",), FLOAT_DTYPES, optional=True),
     _kw("out_dtype", "dtype", torch.float16)),
    (Output("out", ("...", "OUT"), "param:out_dtype"),),
    "(x_q @ w_q.T) * x_scale[..., None] * w_scale (+ bias), accumulated in int32/fp32.",
))
_add(OpSpec(
    "rms_norm_w8a8",
    (_t("x", ("...", "H")), _t("weight", ("H",), "same:x"), _EPS),
    (Output("x_q", ("...", "H"), torch.int8), Output("scale", ("...",), torch.float32)),
    "dynamic_quant(rms_norm(x)).",
    derived_from=("rms_norm", "dynamic_quant"),
))
_add(OpSpec(
    "add_rms_norm_w8a8",
    (_t("x", ("...", "H")), _t("residual", ("...", "H"), "same:x"), _t("weight", ("H",), "same:x"), _EPS),
    (Output("x_q", ("...", "H"), torch.int8), Output("scale", ("...",), torch.float32),
     Output("added", ("...", "H"), "same:x")),
    "added = x + residual; (x_q, scale) = dynamic_quant(rms_norm(added)).",
    derived_from=("add_rms_norm", "dynamic_quant"),
))
_add(OpSpec(
    "weight_quant_prepare",
    (_t("qweight", None, INDEX_DTYPES), _t("scales", None), _t("qzeros", None, INDEX_DTYPES),
     _kw("group_size", "int")),
    (Output("qweight", (), "same:qweight"), Output("scales", (), "same:scales"), Output("qzeros", (), "same:qzeros")),
    "Load time: converts a canonical AWQ checkpoint (qweight int32 [IN, OUT/8], scales [IN/g, OUT], "
    "qzeros int32 [IN/g, OUT/8]; nibble i of each int32 holds column 8c + AWQ_ORDER[i]) to the backend's layout.",
    graph_op=False,
))
_add(OpSpec(
    "weight_quant_matmul",
    (_t("x", ("...", "IN")), _t("qweight", None, None), _t("scales", ("G", "OUT"), "same:x"), _t("qzeros", None, None),
     _t("bias", ("OUT",), "same:x", optional=True), _kw("group_size", "int")),
    (Output("out", ("...", "OUT"), "same:x"),),
    "W4A16: x @ dequant(W) with W[i, o] = (q[i, o] - z[i // g, o]) * s[i // g, o]; takes the output of "
    "weight_quant_prepare of the same backend, which may repack qweight/qzeros but keeps scales as [IN/g, OUT]. "
    "dequant(W) may be rounded once to x's dtype before the product.",
    rounded_weight=True,
))

AWQ_ORDER = (0, 2, 4, 6, 1, 3, 5, 7)
"""Nibble i of a packed AWQ int32 holds output column 8*c + AWQ_ORDER[i]."""
