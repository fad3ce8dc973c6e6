"""The CPU device for LMDeploy: a scoped redirection of ``torch.cuda`` and ``"cuda"`` to the host.

LMDeploy's engine is written for CUDA: it creates CUDA streams and events, sizes the KV
cache from ``torch.cuda.mem_get_info`` (answered here with a bounded host budget,
``$DLINFER_CPU_MEMORY_GIB``, divided by tp) and allocates with ``device="cuda"``. Vendor stacks
redirect these calls to their device (``transfer_to_npu``, ``gpu_migration``); this module
does the same for the host so that a dlinfer backend whose torch device is ``cpu`` (the
reference backend) runs the engine on a machine without an accelerator.

It is installed only by :func:`activate` — i.e. only when a CPU dlinfer device is chosen —
and can be removed again with :func:`deactivate`. Left untouched on purpose:
``is_available``, ``device_count``, ``get_device_properties`` and ``get_device_capability``
(inductor relies on them raising / answering truthfully on a CPU build of torch).
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
from collections.abc import Callable
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

_CUDA_NAMES = ("cuda",)


def _is_cuda(device: object) -> bool:
    if isinstance(device, str):
        return device.split(":")[0] in _CUDA_NAMES
    if isinstance(device, torch.device):
        return device.type in _CUDA_NAMES
    return False


def _host(device: object) -> object:
    return torch.device("cpu") if _is_cuda(device) else device


class _HostStream:
    """Stands in for ``torch.cuda.Stream``: work on the host is synchronous."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.device = torch.device("cpu")

    def wait_event(self, event: Any) -> None:
        return None

    def wait_stream(self, stream: Any) -> None:
        return None

    def record_event(self, event: Any = None) -> _HostEvent:
        return event if event is not None else _HostEvent()

    def synchronize(self) -> None:
        return None

    def query(self) -> bool:
        return True

    def __enter__(self) -> _HostStream:
        return self

    def __exit__(self, *exc: object) -> None:
        return None


class _HostEvent:
    """Stands in for ``torch.cuda.Event``: always complete (LMDeploy polls ``query()``)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def record(self, stream: Any = None) -> None:
        return None

    def wait(self, stream: Any = None) -> None:
        return None

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None

    def elapsed_time(self, other: _HostEvent) -> float:
        return 0.0


_CURRENT_STREAM = _HostStream()


HOST_BUDGET_ENV = "DLINFER_CPU_MEMORY_GIB"
"""Host memory (GiB) the CPU device offers LMDeploy in total; the default is :func:`default_host_budget`."""


def default_host_budget(available: int) -> int:
    """Bytes offered by default: a quarter of the available host memory, at most 2 GiB."""
    return min(available // 4, 2 << 30)


def host_budget(available: int) -> int:
    """Bytes the CPU device offers LMDeploy in total: ``$DLINFER_CPU_MEMORY_GIB`` or the default,
    never more than ``available``. Raises ValueError naming the variable when it is not a positive number."""
    raw = os.environ.get(HOST_BUDGET_ENV, "").strip()
    if not raw:
        return default_host_budget(available)
    try:
        gib = float(raw)
    except ValueError:
        gib = -1.0
    if not gib > 0:
        raise ValueError(f"{HOST_BUDGET_ENV} must be a positive number of GiB, got {raw!r}")
    return min(int(gib * (1 << 30)), available)


def _world_size() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _mem_get_info(device: Any = None) -> tuple[int, int]:
    """``(free, total)`` as LMDeploy sizes its KV cache from it: the host budget divided by the
    tensor-parallel world size (every worker sizes its own cache from "free"; answering the host's
    available memory made each of tp workers claim 80 % of it), and the host's total memory."""
    import psutil

    vm = psutil.virtual_memory()
    return host_budget(int(vm.available)) // _world_size(), int(vm.total)


def _noop(name: str) -> Callable[..., None]:
    """A distinct no-op per replaced name (torch._dynamo keys its trace rules by function object)."""

    def noop(*args: Any, **kwargs: Any) -> None:
        return None

    noop.__name__ = noop.__qualname__ = f"host_{name}"
    return noop


def _zero(name: str) -> Callable[..., int]:
    def zero(*args: Any, **kwargs: Any) -> int:
        return 0

    zero.__name__ = zero.__qualname__ = f"host_{name}"
    return zero


def _current_stream(device: Any = None) -> _HostStream:
    return _CURRENT_STREAM


def _default_stream(device: Any = None) -> _HostStream:
    return _CURRENT_STREAM


def _stream(stream: Any = None) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


def _device(device: Any = None) -> contextlib.AbstractContextManager[None]:
    return contextlib.nullcontext()


_SHIM: dict[str, Any] = {
    "Stream": _HostStream,
    "Event": _HostEvent,
    "current_stream": _current_stream,
    "default_stream": _default_stream,
    "stream": _stream,
    "synchronize": _noop("synchronize"),
    "empty_cache": _noop("empty_cache"),
    "set_device": _noop("set_device"),
    "current_device": _zero("current_device"),
    "device": _device,
    "mem_get_info": _mem_get_info,
    "memory_allocated": _zero("memory_allocated"),
    "memory_reserved": _zero("memory_reserved"),
    "max_memory_allocated": _zero("max_memory_allocated"),
    "reset_peak_memory_stats": _noop("reset_peak_memory_stats"),
}
"""``torch.cuda`` attributes replaced while the CPU device is active."""

_TENSOR_METHODS_TO_HOST = {torch.Tensor.cuda, torch.Tensor.pin_memory}
_TO_METHODS = {torch.Tensor.to}


class CudaToHostMode(TorchFunctionMode):
    """Rewrites every ``device="cuda"`` argument (and ``Tensor.to("cuda")``) to the host."""

    def __torch_function__(
        self, func: Callable[..., Any], types: Any, args: tuple[Any, ...] = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if "device" in kwargs and _is_cuda(kwargs["device"]):
            kwargs = {**kwargs, "device": torch.device("cpu")}
        if kwargs.get("pin_memory"):
            kwargs = {**kwargs, "pin_memory": False}
        if func in _TO_METHODS and len(args) > 1 and (_is_cuda(args[1]) or isinstance(args[1], int)):
            args = (args[0], torch.device("cpu"), *args[2:])
        elif func in _TENSOR_METHODS_TO_HOST:
            return args[0]
        return func(*args, **kwargs)


class _State:
    def __init__(self) -> None:
        self.active = False
        self.saved_cuda: dict[str, Any] = {}
        self.module: Any = None
        """the ``torch.cuda`` object the stand-ins were set on (a vendor redirection may have replaced it)"""
        self.saved_clear_workspaces: Any = None
        self.saved_bootstrap: Callable[..., Any] | None = None
        self.lock = threading.Lock()
        self.local = threading.local()


_STATE = _State()


def _enter_mode_in_this_thread() -> None:
    if getattr(_STATE.local, "mode", None) is None:
        mode = CudaToHostMode()
        mode.__enter__()
        _STATE.local.mode = mode


def _exit_mode_in_this_thread() -> None:
    mode = getattr(_STATE.local, "mode", None)
    if mode is not None:
        mode.__exit__(None, None, None)
        _STATE.local.mode = None


def is_active() -> bool:
    return _STATE.active


def activate() -> None:
    """Redirect ``torch.cuda`` and ``"cuda"`` tensors to the host, in this and every later thread.

    Idempotent. The per-thread redirection mode is entered in the calling thread now and
    in every thread started afterwards (LMDeploy runs its engine loop in its own threads).
    """
    from dlinfer_lmdeploy import inventory

    with _STATE.lock:
        if _STATE.active and _STATE.module is torch.cuda:
            _enter_mode_in_this_thread()
            return
        if _STATE.active:  # torch.cuda was redirected since (a simulated vendor device): stand in on the new one
            _restore_cuda()
            _shim_cuda()
            _enter_mode_in_this_thread()
            return
        inventory.check("thread-host-mode")
        _shim_cuda()
        _STATE.saved_clear_workspaces = getattr(torch._C, "_cuda_clearCublasWorkspaces", None)
        torch._C._cuda_clearCublasWorkspaces = _noop("clear_cublas_workspaces")  # type: ignore[attr-defined]

        original = threading.Thread._bootstrap_inner  # type: ignore[attr-defined]
        _STATE.saved_bootstrap = original

        def bootstrap_with_host_mode(self: threading.Thread) -> None:
            if _STATE.active:
                _enter_mode_in_this_thread()
            try:
                original(self)
            finally:
                # Leave torch's per-thread mode stack empty before the thread ends. A mode still on it is released
                # by a C++ thread-local destructor after Python has let go of the thread; when that races with
                # interpreter shutdown, taking the GIL there ends the process in std::terminate (SIGABRT, exit
                # 134 after all work was done).
                _exit_mode_in_this_thread()

        threading.Thread._bootstrap_inner = bootstrap_with_host_mode  # type: ignore[attr-defined]
        _STATE.active = True
        _enter_mode_in_this_thread()


_HOST_TRUTHFUL = ("is_available", "device_count", "get_device_properties", "get_device_capability")
"""Left as the CPU build of ``torch.cuda`` answers them; a vendor redirection of ``torch.cuda`` to a simulated
device module (whose "device" is this host) gets the host's answers for them too."""


def _shim_cuda() -> None:
    _STATE.module = torch.cuda
    shim = dict(_SHIM)
    host_cuda = sys.modules["torch.cuda"]
    if torch.cuda is not host_cuda:
        shim.update({name: getattr(host_cuda, name) for name in _HOST_TRUTHFUL})
    for name, value in shim.items():
        _STATE.saved_cuda[name] = getattr(torch.cuda, name, None)
        setattr(torch.cuda, name, value)


def _restore_cuda() -> None:
    """Put back the ``torch.cuda`` attributes the stand-ins replaced, on the object they were set on."""
    for name, value in _STATE.saved_cuda.items():
        if value is None:
            delattr(_STATE.module, name)
        else:
            setattr(_STATE.module, name, value)
    _STATE.saved_cuda.clear()


def deactivate() -> None:
    """Undo :func:`activate` (threads already running keep their mode until they end)."""
    with _STATE.lock:
        if not _STATE.active:
            return
        _restore_cuda()
        if _STATE.saved_clear_workspaces is not None:
            torch._C._cuda_clearCublasWorkspaces = _STATE.saved_clear_workspaces  # type: ignore[attr-defined]
        if _STATE.saved_bootstrap is not None:
            threading.Thread._bootstrap_inner = _STATE.saved_bootstrap  # type: ignore[attr-defined]
        _STATE.active = False
        _exit_mode_in_this_thread()


def describe() -> str:
    """What the CPU device (and a host-simulated vendor device) replaces outside LMDeploy while active, read from
    the tables above (listed by ``python -m dlinfer_lmdeploy`` beside the patch inventory)."""
    return "\n".join(
        [
            f"torch.cuda stand-ins (host streams/events, no-op sync, bounded mem_get_info): "
            f"{', '.join(sorted(_SHIM))}",
            f"  on a vendor redirection of torch.cuda, also the host's answers for: {', '.join(_HOST_TRUTHFUL)}",
            "torch._C._cuda_clearCublasWorkspaces: a no-op",
            f"{CudaToHostMode.__name__} (a TorchFunctionMode, per thread): device='cuda' arguments, Tensor.to('cuda'), "
            "Tensor.cuda() and pin_memory go to the host; entered in every later thread (patch 'thread-host-mode')",
            "all undone by cpu_device.deactivate()",
        ]
    )
