"""The ``dlinfer.backends`` entry point of dlinfer-ascend.

Declaring the backend is cheap: nothing here imports torch_npu or touches the device.
The op table is imported by ``load_ops`` and the device patches run in ``activate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from dlinfer.plugin import Backend, Capabilities, StepMetadata, hookimpl

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


def _compile_backend(gm: Any, example_inputs: Any) -> Any:
    from dlinfer_ascend.compiler import compile_backend

    return compile_backend(gm, example_inputs)


def _lowering() -> Mapping[str, Any]:
    from dlinfer_ascend.compiler import lowering

    return lowering()


def _prepare_metadata(step: StepMetadata) -> Any:
    from dlinfer_ascend.ops.plan import AscendPlan

    return AscendPlan.from_step(step)


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
        prepare_metadata=_prepare_metadata,
        slot_dtype=torch.int32,
        dtypes=(torch.float16, torch.bfloat16),  # the fused kernels serve no fp32 activations
        dist_backend="hccl",
        graph=device_graph(),
        compile_backend=_compile_backend,
        lowering=_lowering,
        activate=_activate,
        # paged (FIA) head sizes multiples of 16 (docs/vendor-semantics.md §2.6); <= 256 (ATB SelfAttention);
        # no tanh softcap, ALiBi not wired (ops/_common.refuse_score_options); D=576/Dv=512 MLA not routed.
        capabilities=Capabilities(head_size_multiple=16, max_head_size=256, softcap=False, alibi=False),
        description="Ascend NPU via torch_npu / ATB (verified against a CPU simulator of the "
                    "documented kernel semantics; not yet run on Ascend hardware)",
        extras={"written_for": dict(WRITTEN_FOR), "soc_info": _soc},
    )
