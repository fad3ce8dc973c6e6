"""Public ops: ``dlinfer.ops.<name>``, one per spec entry, generated from :mod:`dlinfer.spec`.

In eager mode a call goes straight to the active backend's implementation (one table
lookup). While ``torch.compile`` traces, the ``dlinfer::<name>`` custom op is called
instead, so the graph holds one node per op. Argument checks run on every call when
validation is on (``DLINFER_VALIDATE=shapes|full`` or :func:`dlinfer.set_validation`),
and otherwise only after a call fails, to turn a kernel error caused by bad input into
an error naming the op and the argument.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from dlinfer import dispatch
from dlinfer._codegen import build_public
from dlinfer.custom_ops import CUSTOM_OPS
from dlinfer.errors import DlinferArgumentError
from dlinfer.spec import SPECS, OpSpec
from dlinfer.validation import validate

_is_compiling = torch.compiler.is_compiling


def _explain(spec: OpSpec, values: Mapping[str, Any]) -> None:
    """After a failed call: raise a DlinferArgumentError if the arguments break the spec."""
    validate(spec, values, full=True)


_NS: dict[str, Any] = {
    "torch": torch,
    "_is_compiling": _is_compiling,
    "_state": dispatch.STATE,
    "_activate": dispatch.activate,
    "_table": dispatch.TABLE,
    "_validate": validate,
    "_explain": _explain,
    "_ArgumentError": DlinferArgumentError,
    **{f"_custom_{name}": op for name, op in CUSTOM_OPS.items()},
}

__all__ = sorted(SPECS)

for _spec in SPECS.values():
    globals()[_spec.name] = build_public(_spec, _NS)
del _spec
