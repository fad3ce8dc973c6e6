"""Registers every graph op of the spec as the ``torch.library`` custom op ``dlinfer::<name>``.

The real kernel forwards to the dispatch table; the fake kernel computes output
shapes and dtypes from the spec's symbolic outputs. Mutated arguments are declared in
the schema (``Tensor(a!)``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from dlinfer import dispatch
from dlinfer._codegen import schema
from dlinfer.spec import SPECS, OpSpec
from dlinfer.validation import Binding, param_shape, resolve_dtype

NAMESPACE = "dlinfer"
_LIB = torch.library.Library(NAMESPACE, "DEF")


def _values(spec: OpSpec, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    values = dict(zip((p.name for p in spec.params), args))
    values.update(kwargs)
    for p in spec.params:
        values.setdefault(p.name, p.default)
    return values


def _real(spec: OpSpec) -> Callable[..., Any]:
    name = spec.name
    layout = any(p.name == "kv_layout" for p in spec.params)

    def kernel(*args: Any, **kwargs: Any) -> Any:
        if layout and kwargs.get("kv_layout") is None:  # traced before activation: the backend's layout, now
            dispatch.current()
            kwargs["kv_layout"] = dispatch.STATE.kv_layout
        result = getattr(dispatch.TABLE, name)(*args, **kwargs)
        if not spec.outputs:
            return None
        if len(spec.outputs) > 1:
            return tuple(result)
        return result

    return kernel


def _fake(spec: OpSpec) -> Callable[..., Any]:
    def fake(*args: Any, **kwargs: Any) -> Any:
        values = _values(spec, args, kwargs)
        b = Binding(spec, values, check=False)
        device = None
        for p in spec.params:
            v = values[p.name]
            if isinstance(v, torch.Tensor) and p.shape is not None:
                b.bind(p.name, param_shape(p, values.get("kv_layout")), tuple(v.shape))
                if device is None and not p.name.endswith("_cpu"):
                    device = v.device
        outs = [torch.empty(b.shape(o.shape), dtype=resolve_dtype(o.dtype, values), device=device)
                for o in spec.outputs]
        if not outs:
            return None
        return outs[0] if len(outs) == 1 else tuple(outs)

    return fake


def _register() -> dict[str, Any]:
    ops: dict[str, Any] = {}
    for spec in SPECS.values():
        if not spec.graph_op:
            continue
        _LIB.define(f"{spec.name}{schema(spec)}")
        _LIB.impl(spec.name, _real(spec), "CompositeExplicitAutograd")
        torch.library.register_fake(f"{NAMESPACE}::{spec.name}", _fake(spec), lib=_LIB)
        ops[spec.name] = getattr(getattr(torch.ops, NAMESPACE), spec.name).default
    return ops


CUSTOM_OPS = _register()
"""op name -> ``torch.ops.dlinfer.<name>.default``."""
