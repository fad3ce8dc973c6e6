"""The ``dlinfer.backends`` entry point of dlinfer-ascend.

Declaring the backend is cheap: nothing here imports torch_npu or touches the device.
The op table is imported by ``load_ops`` and the device patches run in ``activate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from dlinfer.plugin import Backend, hookimpl

from dlinfer_ascend import BACKEND_NAME
from dlinfer_ascend.runtime import WRITTEN_FOR, is_available

#: Block sizes every attention route serves (FIA single-token rule: 16-aligned, <= 512).
BLOCK_SIZES = (16, 32, 64, 128, 256, 512)


def _load_ops() -> Mapping[str, Callable[..., Any]]:
    from dlinfer_ascend.ops import load_ops

    return load_ops()


def _activate() -> None:
    from dlinfer_ascend.patches import apply_device_patches

    apply_device_patches()


def _soc() -> object:
    from dlinfer_ascend.soc import soc_info

    return soc_info()


@hookimpl
def dlinfer_backend() -> Backend:
    """Huawei Ascend (Atlas A2/A3, 910B/910C) through torch_npu, CANN and ATB."""
    from dlinfer_ascend.graph import device_graph

    return Backend(
        name=BACKEND_NAME,
        device_type="npu",
        api_version=">=1.0,<2",
        is_available=is_available,
        load_ops=_load_ops,
        kv_layout="NHD",
        block_sizes=BLOCK_SIZES,
        host_seqlens=True,
        slot_dtype=torch.int32,
        dtypes=(torch.float16, torch.bfloat16),  # the fused kernels serve no fp32 activations
        dist_backend="hccl",
        graph=device_graph(),
        compile_backend=None,
        activate=_activate,
        description="Ascend NPU via torch_npu / ATB (verified against a CPU simulator of the "
                    "documented kernel semantics; not yet run on Ascend hardware)",
        extras={"written_for": dict(WRITTEN_FOR), "soc_info": _soc},
    )
