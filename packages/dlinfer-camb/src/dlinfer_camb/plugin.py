"""The ``dlinfer.backends`` entry point of dlinfer-camb.

Declaring the backend is cheap: nothing here imports torch_mlu / torch_mlu_ops or touches the
device. The op table is imported by ``load_ops`` and the device patches run in ``activate``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from dlinfer.plugin import Backend, Capabilities, StepMetadata, hookimpl
from dlinfer_camb import BACKEND_NAME
from dlinfer_camb.graph import device_graph
from dlinfer_camb.runtime import WRITTEN_FOR, is_available

#: Paged-cache block size of the camb kernels (lmdeploy forces 16 for camb; docs/vendor-semantics.md §U4.3).
BLOCK_SIZES = (16,)


def _load_ops() -> Mapping[str, Callable[..., Any]]:
    from dlinfer_camb.ops import load_ops

    return load_ops()


def _activate() -> None:
    from dlinfer_camb.patches import apply_device_patches

    apply_device_patches()


def _prepare_metadata(step: StepMetadata) -> Any:
    from dlinfer_camb.ops.plan import CambPlan

    return CambPlan.from_step(step)


@hookimpl
def dlinfer_backend() -> Backend:
    """Cambricon MLU (MLU370/590) through torch_mlu and torch_mlu_ops."""
    return Backend(
        name=BACKEND_NAME,
        device_type="mlu",
        api_version=">=1.0,<2",
        is_available=is_available,
        load_ops=_load_ops,
        kv_layout="HND",
        block_sizes=BLOCK_SIZES,
        host_seqlens=False,
        prepare_metadata=_prepare_metadata,
        slot_dtype=torch.int32,
        dtypes=(torch.float16, torch.bfloat16),  # the fused kernels serve no fp32 activations
        dist_backend="cncl",
        graph=device_graph(),
        compile_backend=None,
        activate=_activate,
        # tmo attention has no soft-capping argument (ops/_attn_common.refuse_softcap); ALiBi causal only
        capabilities=Capabilities(softcap=False),
        description="Cambricon MLU via torch_mlu_ops (verified only against a CPU simulator of the documented "
                    "kernel semantics; never run on MLU hardware)",
        extras={"written_for": dict(WRITTEN_FOR)},
    )
