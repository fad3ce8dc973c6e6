"""Argument validation derived from the op spec.

``check_args`` verifies ranks, symbolic shapes, dtypes and devices (no device sync);
``check_metadata`` additionally reads batch metadata values (cu_seqlens, block ids,
slots), which synchronises with the device, so it runs only in full mode
(``DLINFER_VALIDATE=full``, the conformance kit, debug runs). Every failure raises
:class:`~dlinfer.errors.DlinferArgumentError` naming the op, the argument, the
expectation and the actual value.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from typing import Any

import torch

from dlinfer.errors import DlinferArgumentError
from dlinfer.spec import KV_LAYOUTS, OpSpec, Param

_SYMBOL = re.compile(r"^(\d*)([A-Za-z_][A-Za-z_0-9]*)(?:\+(\d+))?$")


@functools.cache
def _parse(sym: str) -> tuple[int, str, int]:
    m = _SYMBOL.match(sym)
    if m is None:
        raise ValueError(f"bad shape symbol {sym!r}")
    return int(m.group(1) or 1), m.group(2), int(m.group(3) or 0)


def _fmt(shape: tuple[str, ...]) -> str:
    return "[" + ", ".join(shape) + "]"


def param_shape(p: Param, kv_layout: str | None) -> tuple[str, ...] | None:
    """The symbolic shape of a parameter, resolving the layout-dependent KV cache."""
    if p.shape in ("kv_cache_k", "kv_cache_v"):
        layout = kv_layout or "NHD"
        dims = KV_LAYOUTS[layout]
        return dims if p.shape == "kv_cache_k" else tuple("Dv" if d == "D" else d for d in dims)
    return p.shape  # type: ignore[return-value]


class Binding:
    """Symbol -> size bindings collected across an op's arguments."""

    def __init__(self, spec: OpSpec, values: Mapping[str, Any], check: bool = True) -> None:
        self.spec, self.values, self.check = spec, values, check
        self.sizes: dict[str, Any] = {}
        self.ellipsis: tuple[Any, ...] | None = None

    def fail(self, arg: str, expected: str, actual: str) -> None:
        raise DlinferArgumentError(self.spec.name, arg, expected, actual)

    def bind(self, arg: str, shape: tuple[str, ...], sizes: tuple[Any, ...]) -> None:
        dims = list(shape)
        full = list(sizes)  # the argument's whole shape, for messages
        if dims and dims[0] == "...":
            n_fixed = len(dims) - 1
            if len(sizes) < n_fixed:
                self.fail(arg, f"at least {n_fixed} dims {_fmt(shape)}", f"shape {list(sizes)}")
            lead, sizes = tuple(sizes[: len(sizes) - n_fixed]), tuple(sizes[len(sizes) - n_fixed :])
            dims = dims[1:]
            if self.ellipsis is None:
                self.ellipsis = lead
            elif self.check and self.ellipsis != lead:
                self.fail(arg, f"leading dims {list(self.ellipsis)} {_fmt(shape)}", f"shape {list(lead + sizes)}")
        elif len(sizes) != len(dims):
            self.fail(arg, f"{len(dims)}-d tensor {_fmt(shape)}", f"{len(sizes)}-d shape {list(sizes)}")
        for sym, size in zip(dims, sizes):
            coef, name, off = _parse(sym)
            if self.check and (size - off) % coef != 0:
                self.fail(arg, f"dim {sym} to be a multiple of {coef}", f"shape {full}")
            value = (size - off) // coef
            if self.check and value < 0:
                self.fail(arg, f"dim {sym} >= {off}", f"shape {full}")
            if name not in self.sizes:
                self.sizes[name] = value
            elif self.check and self.sizes[name] != value:
                self.fail(arg, f"{sym} = {coef * self.sizes[name] + off} (from earlier arguments) in {_fmt(shape)}",
                          f"shape {full}")

    def size(self, sym: str) -> Any:
        coef, name, off = _parse(sym)
        base = self.sizes[name] if name in self.sizes else self.values[name]
        return coef * base + off

    def shape(self, shape: tuple[str, ...]) -> tuple[Any, ...]:
        if shape and shape[0] == "...":
            return tuple(self.ellipsis or ()) + tuple(self.size(s) for s in shape[1:])
        return tuple(self.size(s) for s in shape)


def resolve_dtype(rule: torch.dtype | str, values: Mapping[str, Any]) -> torch.dtype:
    if isinstance(rule, torch.dtype):
        return rule
    kind, _, arg = rule.partition(":")
    return values[arg].dtype if kind == "same" else values[arg]


def check_args(spec: OpSpec, values: Mapping[str, Any]) -> Binding:
    """Check ranks, shapes, dtypes and devices of all arguments; return the symbol binding."""
    layout = values.get("kv_layout")
    if layout is not None and layout not in KV_LAYOUTS:
        raise DlinferArgumentError(spec.name, "kv_layout", "'NHD' or 'HND'", repr(layout))
    b = Binding(spec, values)
    device = None
    for p in spec.params:
        v = values[p.name]
        if p.kind != "tensor":
            if v is None and not p.optional and p.kind != "str":
                b.fail(p.name, f"a value of type {p.kind}", "None")
            continue
        if v is None:
            if not p.optional:
                b.fail(p.name, "a tensor", "None")
            continue
        if not isinstance(v, torch.Tensor):
            b.fail(p.name, "a torch.Tensor", type(v).__name__)
        if p.dtypes is not None:
            want = (resolve_dtype(p.dtypes, values),) if isinstance(p.dtypes, str) else p.dtypes
            if v.dtype not in want:
                b.fail(p.name, "dtype " + " or ".join(str(d) for d in want), str(v.dtype))
        if p.name.endswith("_cpu"):
            if v.device.type != "cpu":
                b.fail(p.name, "a host (cpu) tensor", f"device {v.device}")
        elif device is None:
            device = v.device
        elif v.device != device:
            b.fail(p.name, f"device {device} (like the first tensor argument)", f"device {v.device}")
        shape = param_shape(p, layout)
        if shape is not None:
            b.bind(p.name, shape, tuple(v.shape))
    hq, hkv = b.sizes.get("Hq"), b.sizes.get("Hkv")
    if hq is not None and hkv and hq % hkv:
        b.fail("q", f"a head count divisible by the KV heads ({hkv})", f"{hq}")
    rotary = spec.name in ("apply_rotary_pos_emb", "apply_rotary_pos_emb_inplace")
    if rotary and (b.sizes["R"] > b.sizes["D"] or b.sizes["R"] % 2):
        b.fail("cos", f"an even rotary width <= head size {b.sizes['D']}", f"{b.sizes['R']}")
    if spec.name == "weight_quant_matmul" and b.sizes["G"] * values["group_size"] != b.sizes["IN"]:
        b.fail("scales", f"IN / group_size = {b.sizes['IN']} / {values['group_size']} groups in [G, OUT]",
               f"G = {b.sizes['G']}")
    return b


def _ints(t: torch.Tensor) -> list[int]:
    return [int(x) for x in t.detach().cpu().tolist()]


def check_metadata(spec: OpSpec, values: Mapping[str, Any], b: Binding) -> None:
    """Value checks on batch metadata (synchronises with the device)."""
    fail = b.fail
    name = spec.name
    if "cu_seqlens_q" in values:
        cu = _ints(values["cu_seqlens_q"])
        if not cu:
            fail("cu_seqlens_q", "at least one offset [B+1]", "an empty tensor")
        if cu[0] != 0:
            fail("cu_seqlens_q", "cu_seqlens_q[0] == 0", f"{cu[0]}")
        if any(b2 < a for a, b2 in zip(cu, cu[1:])):
            fail("cu_seqlens_q", "non-decreasing offsets", f"{cu}")
        total = values["q"].shape[0]
        if cu[-1] != total:
            fail("cu_seqlens_q", f"last offset == number of query tokens ({total})", f"{cu[-1]}")
        qlens = [b2 - a for a, b2 in zip(cu, cu[1:])]
        if qlens and max(qlens) > values["max_seqlen_q"]:
            fail("max_seqlen_q", f">= the longest query ({max(qlens)})", f"{values['max_seqlen_q']}")
    if "seqlens_kv" in values:
        kv = _ints(values["seqlens_kv"])
        if any(x < 0 for x in kv):
            fail("seqlens_kv", "non-negative lengths", f"{kv}")
        if kv and max(kv) > values["max_seqlen_kv"]:
            fail("max_seqlen_kv", f">= the longest context ({max(kv)})", f"{values['max_seqlen_kv']}")
        if name == "paged_prefill_attention":
            for i, (q, k) in enumerate(zip(qlens, kv)):
                if k < q:
                    fail("seqlens_kv", f"seqlens_kv[{i}] >= its query length {q}", f"{k}")
        if name == "paged_decode_attention" and any(x < 1 for x in kv):
            fail("seqlens_kv", "every context >= 1 (the new token is in the cache)", f"{kv}")
        layout = values.get("kv_layout") or "NHD"
        cache = values["key_cache"]
        bs = cache.shape[1] if layout == "NHD" else cache.shape[2]
        nb = cache.shape[0]
        table = values["block_table"]
        for i, k in enumerate(kv):
            need = -(-k // bs)
            if need > table.shape[1]:
                fail("block_table", f"at least {need} blocks for sequence {i} (context {k}, block size {bs})",
                     f"{table.shape[1]} columns")
            ids = _ints(table[i, :need])
            bad = [x for x in ids if not 0 <= x < nb]
            if bad:
                fail("block_table", f"block ids in [0, {nb}) for sequence {i}", f"{bad}")
    for mirror, ref in (("seqlens_kv_cpu", "seqlens_kv"), ("cu_seqlens_q_cpu", "cu_seqlens_q")):
        if values.get(mirror) is not None and _ints(values[mirror]) != _ints(values[ref]):
            fail(mirror, f"the same values as {ref}", f"{_ints(values[mirror])}")
    if "slot_mapping" in values:
        layout = values.get("kv_layout") or "NHD"
        cache = values["key_cache"]
        capacity = cache.shape[0] * (cache.shape[1] if layout == "NHD" else cache.shape[2])
        slots = values["slot_mapping"]
        if slots.numel() and (int(slots.min()) < -1 or int(slots.max()) >= capacity):
            fail("slot_mapping", f"slots in [-1, {capacity})", f"range [{int(slots.min())}, {int(slots.max())}]")
    if "topk" in values and "logits" in values:
        e = values["logits"].shape[-1]
        if not 1 <= values["topk"] <= e:
            fail("topk", f"1 <= topk <= E ({e})", f"{values['topk']}")
    if name == "fused_moe":
        ids = values["topk_ids"]
        e = values["gate_up"].shape[0]
        if ids.numel() and (int(ids.min()) < 0 or int(ids.max()) >= e):
            fail("topk_ids", f"expert ids in [0, {e})", f"range [{int(ids.min())}, {int(ids.max())}]")
    if "alibi_slopes" in values and values.get("alibi_slopes") is not None:
        hq = values["q"].shape[1]
        if values["alibi_slopes"].shape != (hq,):
            fail("alibi_slopes", f"shape [{hq}]", f"{list(values['alibi_slopes'].shape)}")


def validate(spec: OpSpec, values: Mapping[str, Any], *, full: bool = False) -> None:
    """Validate one call; ``full`` adds the metadata value checks."""
    b = check_args(spec, values)
    if full:
        check_metadata(spec, values, b)
