"""Handles to the vendor op namespaces, bound once at op loading (never at import).

``K.npu`` is ``torch.ops.npu`` (torch_npu custom ops), ``K.atb`` is ``torch.ops.atb`` (ATB ops
registered by libop_plugin_atb.so). Op modules call ``K.npu.<op>(...)``.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch

K: Any = SimpleNamespace(npu=None, atb=None)


def bind() -> None:
    """Resolve the namespaces; call after :func:`dlinfer_ascend.runtime.ensure_runtime`."""
    K.npu = torch.ops.npu
    K.atb = torch.ops.atb
