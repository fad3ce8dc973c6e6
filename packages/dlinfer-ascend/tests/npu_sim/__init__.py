"""Test-only simulator of the torch_npu / torch.ops.npu / torch.ops.atb subset dlinfer-ascend uses.

Every simulated function implements the *documented* semantics cited beside it
(docs/vendor-semantics.md) and raises on contract violations. The plugin never imports
this package; tests inject it with :func:`install` (a fake ``torch_npu`` package on ``sys.path``,
``torch.ops.npu`` registered on import, ``torch.ops.atb`` registered when the adaptor loads
``libop_plugin_atb.so``). The simulated NPU device is the CPU.
"""

from __future__ import annotations

import os
import sys

import torch

from ._contract import NotModelled, NpuContractError, Unconfirmed
from .ops_tables import SIM_VERSION, atb_namespace

__all__ = ["NotModelled", "NpuContractError", "Unconfirmed", "SIM_VERSION", "install", "uninstall"]

_SITE = os.path.join(os.path.dirname(__file__), "_site")
_ATB_LIB = os.path.join(_SITE, "torch_npu", "lib", "libop_plugin_atb.so")
_STATE: dict[str, object] = {}


def _load_library(path: str) -> None:
    if os.path.realpath(path) == os.path.realpath(_ATB_LIB):
        torch.ops.atb = atb_namespace()
        return
    _STATE["orig_load_library"](path)  # type: ignore[operator]


def install() -> None:
    """Make ``import torch_npu`` resolve to the simulator (idempotent)."""
    if _STATE:
        return
    _STATE["orig_load_library"] = torch.ops.load_library
    sys.path.insert(0, _SITE)
    torch.ops.load_library = _load_library


def _purge() -> None:
    tt = sys.modules.get("torch_npu.contrib.transfer_to_npu")
    if tt is not None:
        tt._undo()
    for name in [m for m in sys.modules if m == "torch_npu" or m.startswith("torch_npu.")]:
        del sys.modules[name]
    for ns in ("npu", "atb"):
        if ns in torch.ops.__dict__:
            delattr(torch.ops, ns)
    if hasattr(torch, "npu"):
        delattr(torch, "npu")


def uninstall() -> None:
    """Undo :func:`install` and every side effect of importing the simulated torch_npu."""
    _purge()
    if not _STATE:
        return
    torch.ops.load_library = _STATE.pop("orig_load_library")  # type: ignore[assignment]
    if _SITE in sys.path:
        sys.path.remove(_SITE)
    _STATE.clear()
