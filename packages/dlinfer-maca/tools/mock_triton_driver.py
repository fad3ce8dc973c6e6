"""A stand-in Triton driver for timing Triton's host-side launch path on a host without a GPU (tools only).

Kernels compile for sm_90 with Triton's bundled ptxas; loading a binary returns placeholder handles and the C
launcher is replaced by a Python no-op that records its argument count in :data:`LAUNCHES`. Everything before the
C launcher (``JITFunction.run``: options, binding and specialisation, the cache key, grid, launch metadata) runs as
on a GPU host. Current device and stream are constants (on a GPU host they are two cheap C calls).
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import torch
from triton.backends.compiler import GPUTarget
from triton.backends.driver import DriverBase
from triton.runtime.driver import driver

LAUNCHES: list[int] = []
"""One entry per launch that reached the (stand-in) C launcher: its positional argument count."""

_PROPERTIES = {"max_shared_mem": 232448, "multiprocessor_count": 132, "max_num_regs": 65536, "warpSize": 32,
               "sm_clock_rate": 1980000, "mem_clock_rate": 2619000, "mem_bus_width": 5120}
"""An H200's figures where Triton asks for device properties."""


class StandInDriver(DriverBase):
    def __init__(self) -> None:
        self.utils = SimpleNamespace(load_binary=lambda name, kernel, shared, device: (name, 1, 64, 0, 1024),
                                     get_device_properties=lambda device: dict(_PROPERTIES))
        self.launcher_cls = lambda src, metadata: (lambda *args: LAUNCHES.append(len(args)))
        self.get_current_device = lambda: 0
        self.get_current_stream = lambda device=None: 0

    @staticmethod
    def is_active() -> bool:
        return True

    def get_current_target(self) -> GPUTarget:
        return GPUTarget("cuda", 90, 32)

    def get_active_torch_device(self) -> torch.device:
        return torch.device("cpu")

    def get_device_interface(self) -> Any:
        return torch.cuda

    def map_python_to_cpp_type(self, ty: str) -> str:
        return ty

    def get_benchmarker(self) -> Any:
        raise NotImplementedError("the stand-in driver launches nothing")

    def get_empty_cache_for_benchmark(self) -> Any:
        raise NotImplementedError("the stand-in driver launches nothing")

    def clear_cache(self, cache: Any) -> None:
        return None


def install() -> None:
    """Make the stand-in the active Triton driver of this process."""
    driver.set_active(StandInDriver())
