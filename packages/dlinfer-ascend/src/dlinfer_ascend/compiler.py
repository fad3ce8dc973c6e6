"""``torch.compile(model, backend="dlinfer")`` on Ascend: dlinfer's passes + the lowering table + torchair.

dlinfer-core runs its FX passes and lowers the graph with :func:`lowering` (the table for the configured
mode); :func:`compile_backend` then hands it to torchair, the graph compiler inside torch_npu, as its guide
describes for custom backends (hiascend torchair_00084; torch_npu 2.13.0 ``torchair/npu_fx_compiler.py``)::

    aot_module_simplified(gm, inputs, fw_compiler=torchair.get_compiler(config))

Mode (``DLINFER_ASCEND_COMPILE_MODE``, or :func:`set_mode`): ``npugraph_ex`` (default) or
``reduce-overhead`` capture the FX graph into an ACL graph whose FIA host lengths torchair updates at replay;
``max-autotune`` builds a GE graph: its table lowers the ATB cache write, ATB prefill attention and fused_moe's
unpermute to GE-convertible substitutes (``lowering.GE_SUBSTITUTES``), and it is refused unless every remaining node
has a converter-backed target (dlinfer nodes the GE table does not lower, e.g. a head-64 prefill, are named in the
error with the reason their lowering declined).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.fx as fx
from dlinfer.lowering import Lowering

from dlinfer_ascend.lowering import GE_MODE, MODES, table

ENV = "DLINFER_ASCEND_COMPILE_MODE"
DEFAULT_MODE = "npugraph_ex"
_MODE: list[str] = []


def set_mode(mode: str | None) -> None:
    """Select the torchair mode for later compiles (``None``: back to the environment / default)."""
    _MODE.clear()
    if mode is not None:
        table(mode)  # validates
        _MODE.append(mode)


def compile_mode() -> str:
    """The configured torchair mode."""
    mode = _MODE[0] if _MODE else os.environ.get(ENV, DEFAULT_MODE)
    if mode not in MODES:
        raise ValueError(f"{ENV}={mode!r}: expected one of {list(MODES)}")
    return mode


def lowering() -> Mapping[str, Lowering]:
    """``Backend.lowering``: the table for the configured mode."""
    return table(compile_mode())


def _dlinfer_nodes(gm: fx.GraphModule) -> list[str]:
    from dlinfer.custom_ops import CUSTOM_OPS

    names = {op: name for name, op in CUSTOM_OPS.items()}
    return sorted({names[n.target] for n in gm.graph.nodes if n.op == "call_function" and n.target in names})


def _torchair() -> Any:
    try:
        import torch_npu  # noqa: F401  (registers torchair in sys.modules)
        import torchair
    except ImportError as e:
        raise RuntimeError("dlinfer-ascend graph compile needs torchair, shipped inside torch_npu "
                           "(torch_npu/dynamo/torchair); import failed: " + str(e)) from e
    return torchair


def check_ge_convertible(gm: fx.GraphModule) -> None:
    """Refuse a lowered graph for ``max-autotune`` if dlinfer nodes remain (no converter-backed lowering)."""
    from dlinfer.lowering import REPORT

    left = _dlinfer_nodes(gm)
    if left:
        kept = gm.meta[REPORT].kept if REPORT in gm.meta else {}
        why = "; ".join(f"{op}: {', '.join(sorted(kept[op]))}" for op in left if op in kept)
        raise NotImplementedError(
            f"dlinfer-ascend compile mode '{GE_MODE}' (GE graph): op(s) {left} have no lowering to a torchair "
            f"converter-backed kernel{f' ({why})' if why else ''}; use {ENV}={DEFAULT_MODE} (ACL graph), which "
            "runs them as captured kernels")


def compile_backend(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
    """``Backend.compile_backend``: torchair's FX compiler over the lowered graph, in the configured mode."""
    from torch._functorch.aot_autograd import aot_module_simplified

    mode = compile_mode()
    if mode == GE_MODE:
        check_ge_convertible(gm)
    torchair = _torchair()
    config = torchair.CompilerConfig()
    config.mode = mode
    return aot_module_simplified(gm, example_inputs, fw_compiler=torchair.get_compiler(config),
                                 keep_inference_input_mutations=True)
