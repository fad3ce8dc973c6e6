"""Finding and checking the Ascend software stack: torch_npu, CANN and the ATB op plugin.

Nothing here runs at discovery except :func:`is_available`, which only looks for files
(no import of torch_npu, no device initialisation). :func:`ensure_runtime` runs at
activation / op loading and turns every missing or mismatched piece into an
:class:`AscendRuntimeError` that says what is missing and which versions are needed.
"""

from __future__ import annotations

import glob
import importlib.util
import os
import re
from types import ModuleType

import torch

#: Versions this adaptor was written against (docs/vendor-semantics.md §0 snapshots, §U1.3).
WRITTEN_FOR = {"CANN": "8.5.0", "torch_npu": "2.9.0", "torch": "2.9.0"}
#: Oldest torch_npu with ``NPUGraph.update(cpu_update_input=...)`` (docs/vendor-semantics.md §2.28).
MIN_TORCH_NPU = (2, 8)

_CANN_HINT = ("install the CANN toolkit (this adaptor was written for CANN 8.5.0) and run "
              "'source /usr/local/Ascend/ascend-toolkit/set_env.sh' before starting Python")
_NNAL_HINT = ("install NNAL (the ATB library) matching your CANN version and run "
              "'source /usr/local/Ascend/nnal/atb/set_env.sh'")


class AscendRuntimeError(RuntimeError):
    """The Ascend software stack is missing or mismatched; the message says what to install."""


def _device_nodes() -> bool:
    return bool(glob.glob("/dev/davinci[0-9]*"))


def is_available() -> bool:
    """Cheap probe: torch_npu is importable and an Ascend device node exists (no import, no init)."""
    try:
        found = importlib.util.find_spec("torch_npu") is not None
    except (ImportError, ValueError):
        found = False
    return found and _device_nodes()


def _major_minor(version: str) -> tuple[int, int]:
    m = re.match(r"(\d+)\.(\d+)", version)
    return (int(m.group(1)), int(m.group(2))) if m else (0, 0)


def _import_torch_npu() -> ModuleType:
    try:
        import torch_npu
    except ImportError as exc:
        text = str(exc)
        if exc.name == "torch_npu" or "No module named 'torch_npu'" in text:
            raise AscendRuntimeError(
                "dlinfer-ascend needs torch_npu, which is not installed: "
                f"pip install torch-npu=={torch.__version__.split('+')[0]} (the build matching torch "
                f"{torch.__version__}; written for torch_npu {WRITTEN_FOR['torch_npu']}), and {_CANN_HINT}"
            ) from exc
        raise AscendRuntimeError(f"importing torch_npu failed ({text}); CANN is missing or not "
                                 f"on the library path: {_CANN_HINT}") from exc
    except OSError as exc:
        raise AscendRuntimeError(f"importing torch_npu failed ({exc}): {_CANN_HINT}") from exc
    return torch_npu


def _check_versions(torch_npu: ModuleType) -> None:
    npu_v = str(getattr(torch_npu, "__version__", "0.0"))
    if _major_minor(npu_v) != _major_minor(torch.__version__):
        raise AscendRuntimeError(
            f"torch_npu {npu_v} does not match torch {torch.__version__}: install the torch-npu release "
            f"with the same major.minor as torch (written for torch/torch_npu {WRITTEN_FOR['torch_npu']})")
    if _major_minor(npu_v) < MIN_TORCH_NPU:
        raise AscendRuntimeError(
            f"torch_npu {npu_v} is too old: dlinfer-ascend needs torch_npu >= "
            f"{'.'.join(map(str, MIN_TORCH_NPU))} (NPUGraph.update for graph replay; written for "
            f"{WRITTEN_FOR['torch_npu']} with CANN {WRITTEN_FOR['CANN']})")


def _atb_loaded() -> bool:
    try:
        return hasattr(torch.ops.atb, "_npu_reshape_and_cache")
    except (AttributeError, RuntimeError):
        return False


def _load_atb(torch_npu: ModuleType) -> None:
    """Load libop_plugin_atb.so, which registers ``torch.ops.atb.*`` (docs/vendor-semantics.md §2)."""
    if _atb_loaded():
        return
    path = os.path.join(os.path.dirname(torch_npu.__file__), "lib", "libop_plugin_atb.so")
    if not os.path.exists(path):
        raise AscendRuntimeError(
            f"the ATB op plugin {path} is missing: this torch_npu build has no torch.ops.atb ops; "
            f"install a torch_npu release that ships it (>= 2.8) and {_NNAL_HINT}")
    try:
        torch.ops.load_library(path)
    except OSError as exc:
        text = str(exc)
        if "libatb" in text:
            raise AscendRuntimeError(f"loading {path} failed ({text}): {_NNAL_HINT}") from exc
        if "undefined symbol" in text:
            raise AscendRuntimeError(
                f"loading {path} failed ({text}): NNAL/ATB and torch_npu versions do not match; "
                "install the NNAL release for your CANN and torch_npu") from exc
        raise AscendRuntimeError(f"loading {path} failed ({text}): {_CANN_HINT}") from exc
    if not _atb_loaded():
        raise AscendRuntimeError(f"{path} loaded but registered no torch.ops.atb._npu_reshape_and_cache; "
                                 f"{_NNAL_HINT}")


_READY: list[ModuleType] = []


def ensure_runtime() -> ModuleType:
    """Import and check torch_npu, CANN and ATB once; return the torch_npu module."""
    if _READY:
        return _READY[0]
    torch_npu = _import_torch_npu()
    _check_versions(torch_npu)
    _load_atb(torch_npu)
    _READY.append(torch_npu)
    return torch_npu


def reset() -> None:
    """Forget a previous successful check (tests)."""
    _READY.clear()
