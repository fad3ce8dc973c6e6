"""Plugin declaration of the maca backend (entry point ``dlinfer.backends: maca``).

Declaring is cheap: no Triton import, no CUDA context. ``is_available`` asks only whether
Triton is installed and whether a CUDA-compatible device exists (a device-count query). The prefill
warm-up sizes come from ``kernels/configs.py`` (launch choices by row count, no Triton import).
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable, Mapping
from typing import Any

import torch

from dlinfer.plugin import Backend, Capabilities, DeviceGraph, FrameworkSettings, hookimpl

from . import __version__
from .kernels.configs import prefill_warmup_tokens

BLOCK_SIZES = (16, 32, 64, 128, 256)


def _is_available() -> bool:
    if importlib.util.find_spec("triton") is None:
        return False
    try:
        return torch.cuda.is_available()  # device-count query; creates no context
    except Exception:  # noqa: BLE001 - a broken driver means "not available"
        return False


def _load_ops() -> Mapping[str, Callable[..., Any]]:
    from .ops import OPS

    return OPS


def _compile_backend(gm: Any, example_inputs: Any) -> Any:
    from .compiler import compile_backend

    return compile_backend(gm, example_inputs)


def _graph_pool() -> Any:
    return torch.cuda.graph_pool_handle()


def _fill_decode_inputs(*args: Any, **kwargs: Any) -> None:
    from .kernels.graph_inputs import fill_decode_inputs  # Triton, imported at the first replay, not when declaring

    fill_decode_inputs(*args, **kwargs)


CUDA_GRAPH = DeviceGraph(
    graph_factory=torch.cuda.CUDAGraph,
    capture=torch.cuda.graph,
    pool_factory=_graph_pool,
    # every kernel reads lengths from device tensors; nothing host-side to update on replay
    update_before_replay=None,
    fill_decode_inputs=_fill_decode_inputs,
)


@hookimpl
def dlinfer_backend() -> Backend:
    return Backend(
        name="maca",
        device_type="cuda",
        api_version=">=1.0,<2",
        is_available=_is_available,
        load_ops=_load_ops,
        kv_layout="NHD",
        block_sizes=BLOCK_SIZES,
        host_seqlens=False,
        slot_dtype=torch.int64,
        dist_backend="nccl",
        graph=CUDA_GRAPH,
        compile_backend=_compile_backend,
        activate=None,
        # every spec option; MLA (D=576/Dv=512, V viewing K) not claimed: its kit cases never ran on a GPU
        capabilities=Capabilities(mla=False),
        # one single-sequence prefill per end of each GEMM config bucket and the norm row switch: every
        # M-dependent kernel variant compiles at engine warm-up, not in the first long request
        framework=FrameworkSettings(prefill_warmup_tokens=prefill_warmup_tokens()),
        description=f"MetaX MACA (CUDA-compatible) via Triton kernels, dlinfer-maca {__version__}",
        extras={"kernels": "triton", "verified_on": "NVIDIA H100 (not yet MetaX C500)"},
    )
