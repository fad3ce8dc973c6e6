"""Device patches applied when the camb backend is activated (never at import or discovery)."""

from __future__ import annotations

import importlib

from dlinfer_camb.runtime import CambRuntimeError, ensure_runtime

_APPLIED: list[bool] = []


def apply_device_patches() -> None:
    """Import torch_mlu's gpu_migration, which redirects torch.cuda / 'cuda' / nccl to torch.mlu / 'mlu' / cncl.

    docs/vendor-semantics.md §3.17 (TMLU: torch_mlu/utils/gpu_migration/migration.py). Idempotent.
    """
    if _APPLIED:
        return
    ensure_runtime()
    try:
        importlib.import_module("torch_mlu.utils.gpu_migration.migration")
    except ImportError as exc:
        raise CambRuntimeError(
            f"torch_mlu.utils.gpu_migration is missing ({exc}); a torch_mlu with GPU migration support is needed "
            "so that frameworks written for CUDA run on the MLU"
        ) from exc
    _APPLIED.append(True)
