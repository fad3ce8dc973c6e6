"""Finding and checking the Cambricon software stack: torch_mlu and torch_mlu_ops (tmo).

Only :func:`is_available` runs at discovery; it looks for installed packages and device nodes
without importing torch_mlu or touching the device. :func:`ensure_runtime` runs at activation /
op loading and turns anything missing into a :class:`CambRuntimeError` saying what to install.
"""

from __future__ import annotations

import glob
import importlib
import importlib.util
import os
import re
from types import ModuleType

import torch

#: Versions this adaptor was written against (docs/vendor-semantics.md §3, §U1.3).
WRITTEN_FOR = {"torch_mlu_ops": "1.5.0", "torch": "2.4-2.6"}
#: Oldest torch_mlu_ops accepted: the manual we cite is 1.3.2 (docs/vendor-semantics.md §0, TMO-1.3.2).
MIN_TMO = (1, 3)
#: Every torch_mlu_ops function the adaptor calls.
REQUIRED_TMO = (
    "fused_rms_norm", "apply_rotary", "active", "reshape_paged_cache", "flash_attention",
    "single_query_cached_kv_attn", "moe_softmax_topk", "moe_gen_idx", "moe_expand_input", "group_gemm",
    "moe_active", "moe_combine_result", "matmul", "per_token_smooth_quantize", "smooth_quant_matmul",
)

_NEUWARE_HINT = ("install Cambricon Neuware/CNToolkit and the driver, and make sure NEUWARE_HOME points at it "
                 "and its lib64 is on LD_LIBRARY_PATH")
_TORCH_MLU_HINT = (f"install the Cambricon PyTorch extension (torch_mlu) wheel built for torch "
                   f"{torch.__version__.split('+')[0]} from Cambricon's release channel; {_NEUWARE_HINT}")
_TMO_HINT = (f"install the torch_mlu_ops (Torch-MLU-Ops) wheel matching your torch_mlu, "
             f"version >= {'.'.join(map(str, MIN_TMO))} (written for {WRITTEN_FOR['torch_mlu_ops']})")


class CambRuntimeError(RuntimeError):
    """torch_mlu or torch_mlu_ops is missing or unusable; the message says what to install."""


def _device_nodes() -> bool:
    return bool(glob.glob("/dev/cambricon_dev*")) or os.path.isdir("/proc/driver/cambricon")


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def is_available() -> bool:
    """Cheap probe: torch_mlu and torch_mlu_ops are installed and an MLU device node exists."""
    return _installed("torch_mlu") and _installed("torch_mlu_ops") and _device_nodes()


def _major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"v?(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _import(name: str, hint: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        if exc.name == name:
            raise CambRuntimeError(f"dlinfer-camb needs {name}, which is not installed: {hint}") from exc
        raise CambRuntimeError(f"importing {name} failed ({exc}): {hint}") from exc
    except OSError as exc:
        raise CambRuntimeError(f"importing {name} failed ({exc}): {_NEUWARE_HINT}") from exc


def _check_tmo(tmo: ModuleType) -> None:
    version = str(getattr(tmo, "__version__", "0.0"))
    if _major_minor(version) < MIN_TMO:
        raise CambRuntimeError(f"torch_mlu_ops {version} is too old: {_TMO_HINT}")
    missing = [name for name in REQUIRED_TMO if not callable(getattr(tmo, name, None))]
    if missing:
        raise CambRuntimeError(f"torch_mlu_ops {version} lacks {', '.join(missing)}: {_TMO_HINT}")


_READY: list[ModuleType] = []


def ensure_runtime() -> ModuleType:
    """Import torch_mlu then torch_mlu_ops once, check the tmo version and functions; return tmo."""
    if _READY:
        return _READY[0]
    _import("torch_mlu", _TORCH_MLU_HINT)
    tmo = _import("torch_mlu_ops", _TMO_HINT)
    _check_tmo(tmo)
    _READY.append(tmo)
    return tmo


def reset() -> None:
    """Forget a previous successful check (tests)."""
    _READY.clear()
