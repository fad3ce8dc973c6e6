"""Simulated ``torch.npu`` device module (what ``import torch_npu`` registers as ``torch.npu``).

docs/vendor-semantics.md §2.28 (PT:torch_npu/npu/_backends.py get_soc_version; NpuVariables.h SoC enum;
PT:torch_npu/npu/graphs.py). The simulated device is the CPU.
"""

from __future__ import annotations

import types

import torch

from . import graphs

#: SoC version reported by the simulated chip (223 = Ascend910B3, an Atlas A2 part).
STATE = {"soc_version": 223, "device_name": "Ascend910B3", "device_count": 1}


def get_soc_version() -> int:
    """§2.28: 220-225 = Atlas A2 (910B1..910B4-1), 250-256 = Atlas A3 (910_93xx)."""
    return int(STATE["soc_version"])


def get_device_name(device: object = None) -> str:
    return str(STATE["device_name"])


def device_count() -> int:
    return int(STATE["device_count"])


def is_available() -> bool:
    return True


def current_stream(device: object = None) -> object:
    return "sim-stream"


def set_device(device: object) -> None:
    return None


def make_module() -> types.ModuleType:
    """Build the ``torch_npu.npu`` module object."""
    m = types.ModuleType("torch_npu.npu")
    for name in ("get_soc_version", "get_device_name", "device_count", "is_available",
                 "current_stream", "set_device"):
        setattr(m, name, globals()[name])
    m.NPUGraph = graphs.NPUGraph
    m.graph = graphs.graph
    m.graph_pool_handle = graphs.graph_pool_handle
    m.synchronize = graphs.synchronize
    m.Stream = lambda *a, **k: "sim-stream"
    m.empty_cache = lambda: None
    m.manual_seed = torch.manual_seed
    return m
