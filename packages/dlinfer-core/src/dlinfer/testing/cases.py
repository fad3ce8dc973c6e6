"""The conformance case table: per op, the shapes and options every backend is checked on.

``size="small"`` cases run on CPU (also under the Triton interpreter); ``"large"`` cases are
for real devices (block sizes 16/64/128, GQA 1/4/8, head sizes 64/128/256 and odd ones,
contexts up to 8k, MoE with 8-64 experts and top-2/top-8).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from dlinfer.spec import SPECS
from dlinfer.testing.inputs import PagedSetup, alibi_slopes, awq_pack, cu_seqlens, paged_inputs, randn

Builder = Callable[[torch.Generator, torch.dtype, str], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    op: str
    name: str
    build: Builder
    size: str = "small"
    option: str | None = None
    """The optional behaviour this case exercises; a backend may refuse it with NotImplementedError."""
    accumulating: bool = False
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    tags: tuple[str, ...] = field(default=())
    requires: str | None = None
    """A :class:`dlinfer.plugin.Capabilities` flag the case exercises (e.g. ``"mla"``): the kit runs it only for
    backends that declare it, so a backend claims the feature by declaring it and must then pass."""


CASES: list[Case] = []


def _case(*args: Any, **kwargs: Any) -> None:
    CASES.append(Case(*args, **kwargs))


# -- norms, activation, rotary, linear -----------------------------------------------------------
def _norm(shape: tuple[int, ...], residual: bool) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        args = {"x": randn(g, *shape, dtype=dt), "weight": randn(g, shape[-1], dtype=dt, scale=0.5) + 1}
        if residual:
            args["residual"] = randn(g, *shape, dtype=dt)
        return {**args, "eps": 1e-6}

    return build


for _size, _shapes in (("small", [(1, 64), (7, 96), (3, 5, 128)]), ("large", [(1, 4096), (256, 4096), (4096, 8192)])):
    for _shape in _shapes:
        _tag = "x".join(map(str, _shape))
        for _op, _res in (("rms_norm", False), ("add_rms_norm", True), ("rms_norm_w8a8", False),
                          ("add_rms_norm_w8a8", True)):
            _case(_op, _tag, _norm(_shape, _res), size=_size)


def _silu(shape: tuple[int, ...]) -> Builder:
    return lambda g, dt, _l: {"x": randn(g, *shape, dtype=dt)}


for _size, _shapes in (("small", [(1, 128), (9, 2 * 96)]), ("large", [(1, 2 * 14336), (512, 2 * 14336)])):
    for _shape in _shapes:
        _case("silu_and_mul", "x".join(map(str, _shape)), _silu(_shape), size=_size)


def _rotary(t: int, hq: int, hkv: int, d: int, r: int, interleaved: bool, fused_qkv: bool = False) -> Builder:
    """``fused_qkv``: q and k are column slices of one [T, (Hq + 2*Hkv)*D] projection output, as LMDeploy
    passes them (token stride (Hq + 2*Hkv)*D, unit last stride); the v columns must stay untouched."""

    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        pos = torch.randint(0, 4096, (t,), generator=g).float()
        inv = 10000.0 ** (-torch.arange(0, r, 2).float() / r)
        ang = pos[:, None] * inv[None]
        ang = ang.repeat_interleave(2, -1) if interleaved else torch.cat((ang, ang), -1)
        if fused_qkv:
            qkv = randn(g, t, (hq + 2 * hkv) * d, dtype=dt)
            q = qkv[:, : hq * d].view(t, hq, d)
            k = qkv[:, hq * d : (hq + hkv) * d].view(t, hkv, d)
        else:
            q, k = randn(g, t, hq, d, dtype=dt), randn(g, t, hkv, d, dtype=dt)
        return {"q": q, "k": k, "cos": ang.cos().to(dt), "sin": ang.sin().to(dt), "interleaved": interleaved}

    return build


for _size, _geo in (("small", [(5, 4, 2, 64, 64), (3, 4, 1, 96, 96), (4, 2, 2, 64, 32)]),
                    ("large", [(1, 32, 8, 128, 128), (4096, 32, 8, 128, 128), (512, 28, 4, 128, 64)])):
    for _t, _hq, _hkv, _d, _r in _geo:
        for _il in (False, True):
            _name = f"T{_t}-h{_hq}/{_hkv}-d{_d}-r{_r}" + ("-interleaved" if _il else "")
            _case("apply_rotary_pos_emb", _name, _rotary(_t, _hq, _hkv, _d, _r, _il), size=_size,
                  option="interleaved" if _il else None)

# in place: the geometry above plus a decode step (T=1) and a partial rotary over a 64-wide head part; each
# with dense q/k and with q/k sliced from one fused qkv buffer
for _size, _geo in (("small", [(5, 4, 2, 64, 64), (3, 4, 1, 96, 96), (4, 2, 2, 64, 32), (1, 8, 2, 128, 128),
                               (2, 4, 2, 128, 64)]),
                    ("large", [(1, 32, 8, 128, 128), (4096, 32, 8, 128, 128), (512, 28, 4, 128, 64)])):
    for _t, _hq, _hkv, _d, _r in _geo:
        for _il in (False, True):
            for _fused in (False, True):
                _name = f"T{_t}-h{_hq}/{_hkv}-d{_d}-r{_r}" + ("-interleaved" if _il else "")
                _name += "-qkv" if _fused else ""
                _case("apply_rotary_pos_emb_inplace", _name, _rotary(_t, _hq, _hkv, _d, _r, _il, _fused), size=_size,
                      option="interleaved" if _il else None)


def _linear(t: int, n_in: int, n_out: int, bias: bool) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        return {"x": randn(g, t, n_in, dtype=dt), "weight": randn(g, n_out, n_in, dtype=dt, scale=n_in**-0.5),
                "bias": randn(g, n_out, dtype=dt) if bias else None}

    return build


for _size, _geo in (("small", [(3, 64, 48, True), (1, 32, 16, False)]), ("large", [(256, 4096, 4096, False)])):
    for _t, _i, _o, _b in _geo:
        _case("linear", f"{_t}x{_i}->{_o}" + ("-bias" if _b else ""), _linear(_t, _i, _o, _b), size=_size,
              accumulating=True)


# -- KV cache -----------------------------------------------------------------------------------
def _fill(t: int, hkv: int, d: int, dv: int, bs: int, skip: int, slot_dtype: torch.dtype) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict[str, Any]:
        nb = (t + bs - 1) // bs + 2
        slots = torch.randperm(nb * bs, generator=g)[:t].to(slot_dtype)
        if skip:
            slots[torch.randperm(t, generator=g)[:skip]] = -1
        kc, vc = randn(g, nb, bs, hkv, d, dtype=dt), randn(g, nb, bs, hkv, dv, dtype=dt)
        if layout == "HND":
            kc, vc = kc.transpose(1, 2).contiguous(), vc.transpose(1, 2).contiguous()
        return {"key": randn(g, t, hkv, d, dtype=dt), "value": randn(g, t, hkv, dv, dtype=dt),
                "key_cache": kc, "value_cache": vc, "slot_mapping": slots, "kv_layout": layout}

    return build


for _size, _geo in (("small", [(1, 2, 64, 64, 16, 0), (37, 2, 96, 64, 16, 5), (20, 1, 64, 64, 64, 0)]),
                    ("large", [(256, 8, 128, 128, 16, 8), (4096, 8, 128, 128, 128, 0), (64, 4, 256, 256, 64, 3)])):
    for _t, _h, _d, _dv, _bs, _skip in _geo:
        for _sd in (torch.int32, torch.int64):
            _name = f"T{_t}-hkv{_h}-d{_d}/{_dv}-bs{_bs}" + (f"-skip{_skip}" if _skip else "") + f"-{_sd}"[6:]
            _case("fill_kv_cache", _name.replace("torch.", ""), _fill(_t, _h, _d, _dv, _bs, _skip, _sd), size=_size)


def qkv_views(g: torch.Generator, dt: torch.dtype, t: int, hq: int, hkv: int, d: int
              ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """q [T, Hq, D], k and v [T, Hkv, D] as LMDeploy hands them to the attention Impl: head slices of one fused
    projection output, ``qkv.view(T, Hq + 2*Hkv, D).split((Hq, Hkv, Hkv), dim=1)`` (token stride
    (Hq + 2*Hkv)*D, not H*D; views of one buffer, which the runner keeps as views through its copies)."""
    qkv = randn(g, t, (hq + 2 * hkv) * d, dtype=dt)
    q, k, v = qkv.view(t, hq + 2 * hkv, d).split((hq, hkv, hkv), dim=1)
    return q, k, v


def _fill_qkv(t: int, hq: int, hkv: int, d: int, bs: int, skip: int, slot_dtype: torch.dtype) -> Builder:
    """:func:`_fill` with key/value sliced out of a fused qkv buffer (D == Dv, as a fused projection has)."""
    dense = _fill(t, hkv, d, d, bs, skip, slot_dtype)

    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict[str, Any]:
        args = dense(g, dt, layout)
        _, args["key"], args["value"] = qkv_views(g, dt, t, hq, hkv, d)
        return args

    return build


# key/value as strided views of a fused qkv buffer (what LMDeploy passes); -qkv marks the strided variants
for _t, _hq, _h, _d, _bs, _skip, _sd in ((37, 4, 2, 96, 16, 5, torch.int32), (20, 8, 1, 64, 64, 0, torch.int64)):
    _name = f"T{_t}-h{_hq}/{_h}-d{_d}-bs{_bs}" + (f"-skip{_skip}" if _skip else "") + f"-{_sd}"[6:] + "-qkv"
    _case("fill_kv_cache", _name.replace("torch.", ""), _fill_qkv(_t, _hq, _h, _d, _bs, _skip, _sd))


# -- attention ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class AttnOpts:
    causal: bool = True
    scale: float | None = None
    window: int | None = None
    softcap: float | None = None
    alibi: bool = False

    @property
    def option(self) -> str | None:
        for name, on in (("window", self.window is not None), ("softcap", self.softcap is not None),
                         ("alibi_slopes", self.alibi), ("causal=False", not self.causal)):
            if on:
                return name
        return None

    @property
    def tag(self) -> str:
        parts = [] if self.causal else ["noncausal"]
        parts += [f"scale{self.scale}"] if self.scale is not None else []
        parts += [f"win{self.window}"] if self.window is not None else []
        parts += [f"cap{self.softcap}"] if self.softcap is not None else []
        parts += ["alibi"] if self.alibi else []
        return "-".join(parts)

    def kwargs(self, hq: int) -> dict[str, Any]:
        return {"scale": self.scale, "window": self.window, "softcap": self.softcap,
                "alibi_slopes": alibi_slopes(hq) if self.alibi else None}


def _prefill(q_lens: tuple[int, ...], hq: int, hkv: int, d: int, dv: int, o: AttnOpts, fused: bool = False
             ) -> Builder:
    """``fused``: q, k and v are slices of one fused qkv buffer (:func:`qkv_views`; needs dv == d)."""

    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        t = sum(q_lens)
        cu = cu_seqlens(list(q_lens))
        if fused:
            q, k, v = qkv_views(g, dt, t, hq, hkv, d)
        else:
            q, k, v = randn(g, t, hq, d, dtype=dt), randn(g, t, hkv, d, dtype=dt), randn(g, t, hkv, dv, dtype=dt)
        return {"q": q, "k": k, "v": v, "cu_seqlens_q": cu, "max_seqlen_q": max(q_lens),
                "causal": o.causal, **o.kwargs(hq), "cu_seqlens_q_cpu": cu.clone()}

    return build


def _paged(s: PagedSetup, o: AttnOpts, decode: bool, fused: bool = False) -> Builder:
    """``fused``: q is the query slice of a fused qkv buffer of its tokens (:func:`qkv_views`; the cache already
    holds the new tokens, so the buffer's k/v columns are not arguments)."""

    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict[str, Any]:
        a = paged_inputs(g, s, dt, layout)
        if fused:
            a["q"] = qkv_views(g, dt, a["q"].shape[0], s.hq, s.hkv, s.d)[0]
        common = {"key_cache": a["key_cache"], "value_cache": a["value_cache"], "block_table": a["block_table"],
                  "seqlens_kv": a["seqlens_kv"], "max_seqlen_kv": max(s.kv_lens), **o.kwargs(s.hq),
                  "kv_layout": layout, "seqlens_kv_cpu": a["seqlens_kv"].clone()}
        if decode:
            return {"q": a["q"], **common}
        return {"q": a["q"], "cu_seqlens_q": a["cu_seqlens_q"], "max_seqlen_q": max(s.q_lens), "causal": o.causal,
                "cu_seqlens_q_cpu": a["cu_seqlens_q"].clone(), **common}

    return build


OPTION_VARIANTS: dict[str, AttnOpts] = {
    "window": AttnOpts(window=7), "softcap": AttnOpts(softcap=5.0), "alibi_slopes": AttnOpts(alibi=True),
    "causal=False": AttnOpts(causal=False),
}
"""The kit's value for each option an attention op may declare in ``OpSpec.options``."""


def option_variants(op: str, size: str) -> list[AttnOpts]:
    """Variants of one attention op, derived from its spec: the default, then (small cases) a custom scale and
    every option in ``SPECS[op].options``; large cases keep the default and ``causal=False`` (vision towers)."""
    options = SPECS[op].options
    if size != "small":
        return [AttnOpts()] + [OPTION_VARIANTS[o] for o in options if o == "causal=False"]
    return [AttnOpts(), AttnOpts(scale=0.3)] + [OPTION_VARIANTS[o] for o in options]


_SMALL_GEO = [  # (q_lens, kv_lens, hq, hkv, d, dv, bs)
    ((5, 1, 12), (9, 17, 12), 4, 4, 64, 64, 16),  # MHA, history and no history, block boundary at 16
    ((3, 7), (40, 7), 8, 2, 96, 96, 16),  # GQA 4, odd head size
    ((4,), (70,), 8, 1, 64, 32, 64),  # MQA, Dv != D, block size 64
    ((2, 0, 3), (33, 5, 3), 4, 1, 64, 64, 16),  # an empty sequence in the batch
]
_LARGE_GEO = [
    ((512, 1024), (512, 3072), 32, 8, 128, 128, 64),
    ((128,) * 8, (1024,) * 8, 32, 4, 128, 128, 16),
    ((2048,), (8192,), 16, 16, 64, 64, 128),
    ((256, 300), (700, 300), 16, 2, 256, 256, 64),
    ((64, 64), (2000, 64), 8, 1, 192, 128, 16),
]

for _size, _geos in (("small", _SMALL_GEO), ("large", _LARGE_GEO)):
    for _ql, _kl, _hq, _hkv, _d, _dv, _bs in _geos:
        _geo_tag = f"B{len(_ql)}-h{_hq}/{_hkv}-d{_d}/{_dv}-bs{_bs}-kv{max(_kl)}"
        _setup = PagedSetup(_ql, _kl, _hq, _hkv, _d, _dv, _bs)
        _dec = PagedSetup((1,) * len(_kl), tuple(max(k, 1) for k in _kl), _hq, _hkv, _d, _dv, _bs)
        for _o in option_variants("paged_prefill_attention", _size):
            _case("paged_prefill_attention", _geo_tag + (f"-{_o.tag}" if _o.tag else ""), _paged(_setup, _o, False),
                  size=_size, option=_o.option, accumulating=True)
        for _o in option_variants("paged_decode_attention", _size):
            _case("paged_decode_attention", _geo_tag + (f"-{_o.tag}" if _o.tag else ""), _paged(_dec, _o, True),
                  size=_size, option=_o.option, accumulating=True)
        for _o in option_variants("prefill_attention", _size):
            _case("prefill_attention", f"B{len(_ql)}-h{_hq}/{_hkv}-d{_d}/{_dv}-q{max(_ql)}" + (
                f"-{_o.tag}" if _o.tag else ""), _prefill(_ql, _hq, _hkv, _d, _dv, _o), size=_size,
                option=_o.option, accumulating=True)
# q (and k/v for prefill_attention) as strided views of a fused qkv buffer, as LMDeploy passes them: a few small
# geometries with the default options (the strides, not the options, are what these cases exercise)
for _ql, _kl, _hq, _hkv, _d, _bs in (((5, 1, 12), (9, 17, 12), 4, 4, 64, 16), ((3, 7), (40, 7), 8, 2, 96, 16)):
    _geo_tag = f"B{len(_ql)}-h{_hq}/{_hkv}-d{_d}/{_d}-bs{_bs}-kv{max(_kl)}-qkv"
    _setup = PagedSetup(_ql, _kl, _hq, _hkv, _d, _d, _bs)
    _case("paged_prefill_attention", _geo_tag, _paged(_setup, AttnOpts(), False, fused=True), accumulating=True)
    _case("prefill_attention", f"B{len(_ql)}-h{_hq}/{_hkv}-d{_d}/{_d}-q{max(_ql)}-qkv",
          _prefill(_ql, _hq, _hkv, _d, _d, AttnOpts(), fused=True), accumulating=True)
_dec = PagedSetup((1, 1, 1), (40, 7, 17), 8, 2, 96, 96, 16)
_case("paged_decode_attention", "B3-h8/2-d96/96-bs16-kv40-qkv", _paged(_dec, AttnOpts(), True, fused=True),
      accumulating=True)
for _b, _ctx in ((1, 8192), (32, 1024), (128, 2048)):
    _dec = PagedSetup((1,) * _b, (_ctx,) * _b, 32, 8, 128, 128, 64)
    _case("paged_decode_attention", f"B{_b}-h32/8-d128-bs64-kv{_ctx}", _paged(_dec, AttnOpts(), True), size="large",
          accumulating=True)


# MLA (DeepSeek-V2/V3, Kimi-K2 as LMDeploy runs them without FlashMLA): D = 512 latent + 64 rope, one KV head,
# the value is the first 512 channels of the key (the V cache a strided view of the K cache)
def _mla(builder: Builder, mla_prefill: bool) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, layout: str) -> dict[str, Any]:
        args = builder(g, dt, layout)
        if mla_prefill:
            args["v"] = args["k"][..., :MLA_DV]
        else:
            args["value_cache"] = args["key_cache"][..., :MLA_DV]
        return args

    return build


MLA_D, MLA_DV = 576, 512
_MLA_PAGED = PagedSetup((3, 1, 5), (20, 17, 5), 4, 1, MLA_D, MLA_D, 16)
_MLA_DEC = PagedSetup((1, 1, 1), (20, 17, 5), 4, 1, MLA_D, MLA_D, 16)
_mla_tag = f"mla-h4/1-d{MLA_D}/{MLA_DV}-bs16"
_case("paged_prefill_attention", _mla_tag, _mla(_paged(_MLA_PAGED, AttnOpts(scale=0.05), False), False),
      accumulating=True, requires="mla")
_case("paged_decode_attention", _mla_tag, _mla(_paged(_MLA_DEC, AttnOpts(scale=0.05), True), False),
      accumulating=True, requires="mla")
_case("prefill_attention", f"mla-h4/1-d{MLA_D}/{MLA_DV}-q5", _mla(_prefill((3, 5), 4, 1, MLA_D, MLA_D,
      AttnOpts(scale=0.05)), True), accumulating=True, requires="mla")


# -- MoE ----------------------------------------------------------------------------------------
def _gating(t: int, e: int, k: int, renorm: bool) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        # distinct values per row, spaced wider than the dtype's resolution, so the top-k is unambiguous
        ranks = torch.stack([torch.randperm(e, generator=g) for _ in range(t)]).float()
        return {"logits": (ranks * (4.0 / e) - 2.0).to(dt), "topk": k, "renormalize": renorm}

    return build


def _moe(t: int, e: int, k: int, h: int, i: int) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        ids = torch.rand(t, e, generator=g).argsort(-1)[:, :k].to(torch.int32)
        w = torch.softmax(torch.randn(t, k, generator=g), -1)
        return {"x": randn(g, t, h, dtype=dt), "gate_up": randn(g, e, 2 * i, h, dtype=dt, scale=h**-0.5),
                "down": randn(g, e, h, i, dtype=dt, scale=i**-0.5), "topk_weights": w, "topk_ids": ids}

    return build


for _size, _geo in (("small", [(7, 8, 2), (1, 4, 1), (16, 16, 4)]),
                    ("large", [(512, 64, 8), (1, 8, 2), (4096, 60, 4)])):
    for _t, _e, _k in _geo:
        for _rn in (False, True):
            _case("moe_gating_topk_softmax", f"T{_t}-E{_e}-top{_k}" + ("-renorm" if _rn else ""),
                  _gating(_t, _e, _k, _rn), size=_size)
for _size, _geo in (("small", [(5, 4, 2, 64, 32), (1, 8, 2, 32, 64), (13, 8, 3, 64, 48)]),
                    ("large", [(1, 8, 2, 4096, 14336), (32, 64, 8, 3584, 2560), (512, 64, 8, 2048, 1408)])):
    for _t, _e, _k, _h, _i in _geo:
        _case("fused_moe", f"T{_t}-E{_e}-top{_k}-H{_h}-I{_i}", _moe(_t, _e, _k, _h, _i), size=_size,
              accumulating=True)


# -- quantisation -------------------------------------------------------------------------------
def _dq(shape: tuple[int, ...]) -> Builder:
    return lambda g, dt, _l: {"x": randn(g, *shape, dtype=dt), "dtype": torch.int8}


def _w8a8(t: int, n_in: int, n_out: int, bias: bool, out_dtype: torch.dtype | None) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        od = out_dtype or (dt if dt != torch.float32 else torch.float16)
        return {"x_q": torch.randint(-127, 128, (t, n_in), generator=g, dtype=torch.int8),
                "w_q": torch.randint(-127, 128, (n_out, n_in), generator=g, dtype=torch.int8),
                "x_scale": torch.rand(t, generator=g) * 0.01 + 1e-3,
                "w_scale": torch.rand(n_out, generator=g) * 0.01 + 1e-3,
                "bias": randn(g, n_out, dtype=od) if bias else None, "out_dtype": od}

    return build


def _w4a16(t: int, n_in: int, n_out: int, group: int, bias: bool) -> Builder:
    def build(g: torch.Generator, dt: torch.dtype, _layout: str) -> dict[str, Any]:
        q = torch.randint(0, 16, (n_in, n_out), generator=g)
        z = torch.randint(0, 16, (n_in // group, n_out), generator=g)
        return {"x": randn(g, t, n_in, dtype=dt), "qweight": awq_pack(q), "qzeros": awq_pack(z),
                "scales": (torch.rand(n_in // group, n_out, generator=g) * 0.02 + 0.005).to(dt),
                "bias": randn(g, n_out, dtype=dt) if bias else None, "group_size": group}

    return build


for _size, _shapes in (("small", [(1, 64), (6, 3, 96)]), ("large", [(4096, 4096), (1, 8192)])):
    for _shape in _shapes:
        _case("dynamic_quant", "x".join(map(str, _shape)), _dq(_shape), size=_size)
for _size, _geo in (("small", [(3, 64, 32, True), (1, 32, 16, False)]), ("large", [(256, 4096, 4096, False)])):
    for _t, _i, _o, _b in _geo:
        _case("linear_w8a8", f"{_t}x{_i}->{_o}" + ("-bias" if _b else ""), _w8a8(_t, _i, _o, _b, None), size=_size,
              accumulating=True, dtypes=(torch.float16, torch.bfloat16))
for _size, _geo in (("small", [(3, 64, 32, 32, False), (1, 128, 64, 64, True)]),
                    ("large", [(1, 4096, 4096, 128, False), (256, 4096, 11008, 128, False)])):
    for _t, _i, _o, _gs, _b in _geo:
        _case("weight_quant_matmul", f"{_t}x{_i}->{_o}-g{_gs}" + ("-bias" if _b else ""),
              _w4a16(_t, _i, _o, _gs, _b), size=_size, accumulating=True, dtypes=(torch.float16, torch.bfloat16))


def cases_for(op: str | None = None, size: str = "small") -> list[Case]:
    return [c for c in CASES if (op is None or c.op == op) and c.size == size]
