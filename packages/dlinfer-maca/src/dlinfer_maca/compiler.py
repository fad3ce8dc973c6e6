"""``torch.compile(model, backend="dlinfer")`` on maca: Inductor over the graph, dlinfer ops as extern kernels.

MACA torch is CUDA-compatible and MetaX ships Triton, so the graph compiler is Inductor:
each ``dlinfer::<op>`` node stays one opaque extern call to the maca Triton
kernel the eager op runs (a custom op Inductor cannot look into), and Inductor fuses the glue between
them (casts, adds, reshapes). Options as LMDeploy's own decode ``torch.compile``
(``LMDEPLOY_ENABLE_DECODE_TORCH_COMPILE``): ``emulate_precision_casts`` and no Inductor CUDA graphs, since
the compiled forward runs inside the device-graph runner's CUDA-graph capture.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.fx as fx

OPTIONS: dict[str, Any] = {"emulate_precision_casts": True, "triton.cudagraphs": False}


def compile_backend(gm: fx.GraphModule, example_inputs: list[torch.Tensor]) -> Callable[..., Any]:
    """``Backend.compile_backend``: ``torch._inductor.compile_fx`` with :data:`OPTIONS`."""
    from torch._inductor.compile_fx import compile_fx

    return compile_fx(gm, example_inputs, config_patches=dict(OPTIONS))
