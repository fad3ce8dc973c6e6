"""Answers before failures: why a backend is unavailable, and the environment a bug report needs.

:func:`unavailable_reason` gives the same reason ``dlinfer check --backend NAME`` would fail with (the plugin's own
``load_ops`` error: missing torch_npu, CANN, torch_mlu_ops, ...), or what the device probe says.
:func:`collect_env` gathers versions (Python, OS, torch and its device builds, vendor stacks, LMDeploy, every
dlinfer distribution), device nodes and the relevant environment variables without importing vendor libraries.
"""

from __future__ import annotations

import glob
import importlib.metadata as md
import os
import platform
import sys
from typing import Any

from dlinfer.registry import Registry

ENV_PREFIXES = ("DLINFER_", "TORCH_DEVICE_BACKEND_AUTOLOAD", "TRITON_", "LMDEPLOY_", "ASCEND_", "ATB_", "NEUWARE_",
                "MLU_", "MACA_", "CUDA_VISIBLE_DEVICES", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
DISTRIBUTIONS = ("torch", "triton", "torchvision", "torch-npu", "torch_mlu", "torch-mlu-ops", "lmdeploy",
                 "transformers", "pluggy", "numpy")
DEVICE_NODES = {
    "Ascend (/dev/davinci*)": "/dev/davinci[0-9]*",
    "Cambricon (/dev/cambricon_dev*)": "/dev/cambricon_dev*",
    "MetaX (/dev/mxcd*)": "/dev/mxcd*",
    "NVIDIA (/dev/nvidia[0-9]*)": "/dev/nvidia[0-9]*",
}
VENDOR_INFO_FILES = (  # version files of the vendor toolkits (read, never imported)
    "/usr/local/Ascend/ascend-toolkit/latest/*/ascend_toolkit_install.info",
    "/usr/local/Ascend/ascend-toolkit/latest/version.cfg",
    "/usr/local/neuware/version.txt",
    "/opt/maca/Version.txt",
)


def unavailable_reason(registry: Registry, name: str) -> str:
    """Why backend ``name`` is not available: its probe error, the plugin's ``load_ops`` error (what
    ``dlinfer check`` reports), the torch device module's answer, or the probe's own description."""
    rec = registry.records[name]
    b = rec.backend
    assert b is not None
    if rec.probe_error:
        return rec.probe_error
    import torch

    module = getattr(torch, b.device_type, None)
    probe = getattr(module, "is_available", None)
    if callable(probe):
        try:
            if not probe():
                build = ""
                if b.device_type == "cuda" and torch.version.cuda is None and torch.version.hip is None:
                    build = f", and this torch ({torch.__version__}) is a CPU build"
                return f"no '{b.device_type}' device: torch.{b.device_type}.is_available() is False{build}"
        except Exception as exc:  # noqa: BLE001 - the reason is the answer
            return f"torch.{b.device_type}.is_available() raised {type(exc).__name__}: {exc}"
    try:
        registry.load_ops(name)
    except Exception as exc:  # noqa: BLE001 - the plugin's own explanation
        return str(getattr(exc, "reason", None) or exc)
    doc = (getattr(b.is_available, "__doc__", None) or "").strip().splitlines()
    return "is_available() returned False" + (f" (it checks: {doc[0]})" if doc else "")


def _dist_versions(names: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for n in names:
        try:
            out[n] = md.version(n)
        except md.PackageNotFoundError:
            continue
    return out


def _dlinfer_distributions() -> dict[str, str]:
    found = {}
    for dist in md.distributions():
        name = (dist.metadata["Name"] or "").lower().replace("_", "-")
        if name.startswith("dlinfer"):
            found[name] = dist.version
    return dict(sorted(found.items()))


def _memory() -> str:
    try:
        with open("/proc/meminfo") as f:
            fields = dict(line.split(":", 1) for line in f)
        gib = {k: int(fields[k].split()[0]) / 2**20 for k in ("MemTotal", "MemAvailable")}
        return f"{gib['MemTotal']:.1f} GiB total, {gib['MemAvailable']:.1f} GiB available"
    except (OSError, KeyError, ValueError):
        return "unknown"


def collect_env() -> dict[str, Any]:
    """Everything a bug report needs, as ``section -> {key: value}`` (no vendor library is imported)."""
    import torch

    system = {
        "python": sys.version.split()[0] + f" ({sys.executable})",
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpus": str(os.cpu_count()),
        "memory": _memory(),
    }
    torch_info = {
        "torch": torch.__version__,
        "cuda build": str(torch.version.cuda),
        "hip build": str(torch.version.hip),
        "cuda devices": str(torch.cuda.device_count()) if torch.cuda.is_available() else "0",
    }
    if torch.cuda.is_available():
        torch_info["cuda device 0"] = torch.cuda.get_device_name(0)
    toolkits = {}
    for pattern in VENDOR_INFO_FILES:
        for path in sorted(glob.glob(pattern)):
            try:
                with open(path) as f:
                    lines = [ln.strip() for ln in f if "version" in ln.lower()][:2]
                toolkits[path] = "; ".join(lines) or "present"
            except OSError:
                continue
    nodes = {label: str(len(glob.glob(pattern))) for label, pattern in DEVICE_NODES.items()}
    env = {k: v for k, v in sorted(os.environ.items()) if k.startswith(ENV_PREFIXES)}
    return {
        "system": system,
        "torch": torch_info,
        "packages": _dist_versions(DISTRIBUTIONS),
        "dlinfer distributions": _dlinfer_distributions(),
        "vendor toolkits": toolkits or {"(none found)": ", ".join(VENDOR_INFO_FILES)},
        "device nodes": nodes,
        "environment": env or {"(none set)": ", ".join(ENV_PREFIXES)},
    }


def format_env(info: dict[str, Any]) -> str:
    lines = []
    for section, values in info.items():
        lines.append(f"## {section}")
        width = max((len(k) for k in values), default=0)
        lines += [f"  {k:{width}}  {v}" for k, v in values.items()]
        lines.append("")
    return "\n".join(lines)
