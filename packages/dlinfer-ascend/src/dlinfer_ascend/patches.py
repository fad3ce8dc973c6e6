"""Framework device patches applied when the Ascend backend is activated (never on import).

LMDeploy and other CUDA-first frameworks call ``torch.cuda.*`` and use ``"cuda"`` devices.
torch_npu's own ``transfer_to_npu`` redirects those to the NPU (torch.cuda -> torch.npu,
'cuda' device arguments -> 'npu', nccl -> hccl, CUDAGraph -> NPUGraph; docs/vendor-semantics.md §2.28).
It also replaces ``torch.compile``, which we restore, and disables Triton.
"""

from __future__ import annotations

import torch

from dlinfer_ascend.runtime import ensure_runtime

_APPLIED: list[bool] = []


def apply_device_patches() -> None:
    """Check the runtime, then redirect torch.cuda to the NPU (idempotent)."""
    if _APPLIED:
        return
    ensure_runtime()
    saved_compile = torch.compile
    import torch_npu.contrib.transfer_to_npu  # noqa: F401  (imported for its side effects)

    torch.compile = saved_compile
    import torch.utils._triton as triton_probe

    triton_probe.has_triton = lambda: False  # inductor must not try Triton on the NPU
    _APPLIED.append(True)


def applied() -> bool:
    """Whether :func:`apply_device_patches` has run in this process."""
    return bool(_APPLIED)


def reset() -> None:
    """Forget that the patches were applied (tests that undo them)."""
    _APPLIED.clear()
