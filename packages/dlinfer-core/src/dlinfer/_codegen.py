"""Builds the public op functions and the torch.library schemas from the spec."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dlinfer.spec import OpSpec, Param

_PY_TYPES = {"tensor": "torch.Tensor", "int": "int", "float": "float", "bool": "bool", "str": "str",
             "dtype": "torch.dtype", "plan": "object"}
_SCHEMA_TYPES = {"tensor": "Tensor", "int": "SymInt", "float": "float", "bool": "bool", "str": "str",
                 "dtype": "ScalarType"}


def schema(spec: OpSpec) -> str:
    """The ``torch.library`` schema (no defaults: the public wrapper always passes every argument)."""
    parts: list[str] = []
    alias = iter("abcdefgh")
    star = False
    for p in spec.params:
        if p.kind == "plan":  # eager only: never part of a traced graph
            continue
        if p.keyword_only and not star:
            parts.append("*")
            star = True
        t = _SCHEMA_TYPES[p.kind]
        if p.mutated:
            t += f"({next(alias)}!)"
        if p.optional or (p.kind == "str" and p.default is None):
            t += "?"
        parts.append(f"{t} {p.name}")
    outs = ", ".join("Tensor" for _ in spec.outputs)
    ret = "()" if not spec.outputs else (outs if len(spec.outputs) == 1 else f"({outs})")
    return f"({', '.join(parts)}) -> {ret}"


def _annotation(p: Param) -> str:
    t = _PY_TYPES[p.kind]
    return f"{t} | None" if p.optional or (p.kind == "str" and p.default is None) else t


def _default(p: Param, ns: dict[str, Any]) -> str:
    if not p.has_default and p.kind != "str":
        return ""
    if isinstance(p.default, torch.dtype):
        key = f"_default_{p.name}"
        ns[key] = p.default
        return f" = {key}"
    return f" = {p.default!r}"


def signature(spec: OpSpec, ns: dict[str, Any]) -> str:
    parts: list[str] = []
    star = False
    for p in spec.params:
        if p.keyword_only and not star:
            parts.append("*")
            star = True
        parts.append(f"{p.name}: {_annotation(p)}{_default(p, ns)}")
    return ", ".join(parts)


def _returns(spec: OpSpec) -> str:
    if not spec.outputs:
        return "None"
    if len(spec.outputs) == 1:
        return "torch.Tensor"
    return "tuple[" + ", ".join("torch.Tensor" for _ in spec.outputs) + "]"


def docstring(spec: OpSpec) -> str:
    lines = [spec.summary, "", "Args:"]
    for p in spec.params:
        shape = p.shape if isinstance(p.shape, str) else ("[" + ", ".join(p.shape) + "]" if p.shape else "")
        dt = p.dtypes if isinstance(p.dtypes, str) else (
            "/".join(str(d).replace("torch.", "") for d in p.dtypes) if p.dtypes else "")
        extra = " ".join(x for x in (shape, dt, "(mutated)" if p.mutated else "", p.doc) if x)
        lines.append(f"    {p.name}: {p.kind}{' (optional)' if p.optional else ''} {extra}".rstrip())
    if spec.outputs:
        lines += ["", "Returns:"]
        for o in spec.outputs:
            dt = o.dtype if isinstance(o.dtype, str) else str(o.dtype).replace("torch.", "")
            lines.append(f"    {o.name}: [{', '.join(o.shape)}] {dt}")
    return "\n".join(lines)


_TEMPLATE = '''
def {name}({sig}) -> {ret}:
    {checks}{layout}if _is_compiling():
        {custom}
    if _state.validate:
        _validate(_spec, {values}, full=_state.full)
    try:
        return _table.{name}({call})
    except _ArgumentError:
        raise
    except Exception:
        _explain(_spec, {values})
        raise
'''


def build_public(spec: OpSpec, ns: dict[str, Any]) -> Callable[..., Any]:
    """Generate ``dlinfer.ops.<name>`` with a real signature from its spec."""
    call = ", ".join(p.name if not p.keyword_only else f"{p.name}={p.name}" for p in spec.params)
    values = "{" + ", ".join(f"{p.name!r}: {p.name}" for p in spec.params) + "}"
    layout = ""
    if any(p.name == "kv_layout" for p in spec.params):
        # activate first: the backend's layout is known only after. A trace taken before any activation keeps
        # None, which the custom op's kernel resolves when it runs (custom_ops._real).
        layout = ("if kv_layout is None:\n        if _state.record is None and not _is_compiling():\n"
                  "            _activate()\n        if _state.record is not None:\n"
                  "            kv_layout = _state.kv_layout\n    ")
    checks = "".join(
        f"if {p.name} is not None and not {p.name} > 0:\n"
        f"        raise _ArgumentError({spec.name!r}, {p.name!r}, 'a value > 0 or None', repr({p.name}))\n    "
        for p in spec.params if p.positive)
    if spec.graph_op:
        traced = ", ".join(p.name if not p.keyword_only else f"{p.name}={p.name}" for p in spec.params
                           if p.kind != "plan")
        custom = f"return _custom_{spec.name}({traced})"
    else:
        custom = f"return _table.{spec.name}({call})"
    ns_local = dict(ns)
    src = _TEMPLATE.format(name=spec.name, sig=signature(spec, ns_local), ret=_returns(spec), checks=checks,
                           layout=layout, custom=custom, values=values, call=call)
    ns_local["_spec"] = spec
    exec(compile(src, f"<dlinfer.ops.{spec.name}>", "exec", dont_inherit=True), ns_local)  # noqa: S102 - generated from the spec
    fn = ns_local[spec.name]
    fn.__doc__ = docstring(spec)
    fn.__module__ = "dlinfer.ops"
    fn.__qualname__ = spec.name
    return fn
