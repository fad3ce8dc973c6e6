"""Which LMDeploy ``device_type`` names are dlinfer devices, and activating one.

Every discovered dlinfer backend becomes an LMDeploy device: its name is the backend's
``Backend.framework.lmdeploy_device`` when declared, ``"cpu"`` for the built-in reference backend,
and the backend name otherwise (``maca``, ``ascend``, ``camb``, or a third party's name).
LMDeploy's own ``cuda`` is never taken over.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

from dlinfer.plugin import Backend
from dlinfer.registry import REFERENCE, REGISTRY

RESERVED = frozenset({"cuda", "auto", "rocm"})
"""LMDeploy device names that stay LMDeploy's own."""


class DeviceError(RuntimeError):
    """A dlinfer device cannot be used with LMDeploy."""


@dataclass(frozen=True)
class Device:
    lmdeploy_name: str
    backend: Backend

    @property
    def on_host(self) -> bool:
        """The torch device is the CPU (the reference device: fp32 allowed, host-sized batches)."""
        return self.backend.device_type == "cpu"

    @property
    def tensors_on_host(self) -> bool:
        """LMDeploy's CUDA assumptions are redirected to the host: the CPU device, or a vendor device whose
        tensors live on the host because a simulator stands in for it (:func:`declare_host_simulated`)."""
        return self.on_host or self.backend.name in _HOST_SIMULATED


_HOST_SIMULATED: set[str] = set()


def declare_host_simulated(backend_name: str, simulated: bool = True) -> None:
    """Declare that a simulator of ``backend_name``'s vendor library stands in for the device on this
    machine, its "device" tensors living on the host (vendor-simulator tests): activating the device then
    also installs the CPU device's host stand-ins for ``torch.cuda`` and ``"cuda"`` (:mod:`cpu_device`),
    on top of the plugin's own activation. Real devices never declare this."""
    if simulated:
        _HOST_SIMULATED.add(backend_name)
    else:
        _HOST_SIMULATED.discard(backend_name)


def lmdeploy_name(backend: Backend) -> str:
    declared = backend.framework.lmdeploy_device
    if declared:
        return declared
    return "cpu" if backend.name == REFERENCE else backend.name


def devices() -> dict[str, Device]:
    """All dlinfer devices, keyed by LMDeploy device name (discovers plugins on first call)."""
    REGISTRY.discover()
    found: dict[str, Device] = {}
    for rec in REGISTRY.records.values():
        if rec.backend is None:
            continue
        name = lmdeploy_name(rec.backend)
        if name in RESERVED:
            continue
        if name in found:
            other = found[name].backend.name
            raise DeviceError(
                f"dlinfer backends '{other}' and '{rec.backend.name}' both map to LMDeploy device '{name}'; "
                "block one with DLINFER_DISABLE_PLUGINS"
            )
        found[name] = Device(name, rec.backend)
    return found


def is_dlinfer_device(name: object) -> bool:
    return isinstance(name, str) and name in devices()


def get(name: str) -> Device:
    found = devices()
    if name not in found:
        known = ", ".join(sorted(found)) or "none"
        raise DeviceError(f"'{name}' is not a dlinfer device (dlinfer devices: {known})")
    return found[name]


_lock = threading.RLock()
_active: str | None = None


def active() -> str | None:
    return _active


def activate(name: str) -> Device:
    """Make ``name`` this process's device: the plugin's op table and device patches (idempotent).

    dlinfer's op table is process-wide: switching devices re-points it for every engine in
    the process (tests do this; a serving process uses one device).
    """
    global _active
    device = get(name)
    with _lock:
        if _active == name:
            if device.tensors_on_host:
                from dlinfer_lmdeploy import cpu_device

                cpu_device.activate()  # enters the redirection mode in the calling thread too
            return device
        import dlinfer.dispatch

        if not REGISTRY.available(device.backend.name):
            from dlinfer.diagnose import unavailable_reason

            raise DeviceError(
                f"dlinfer backend '{device.backend.name}' for LMDeploy device '{name}' is not available on this "
                f"machine: {unavailable_reason(REGISTRY, device.backend.name)} (dlinfer info lists every backend "
                "and why)"
            )
        dlinfer.dispatch.activate(device.backend.name)
        from dlinfer_lmdeploy import cpu_device

        if device.tensors_on_host:
            cpu_device.activate()
        else:
            cpu_device.deactivate()
        _active = name
        return device


def _reset_for_tests() -> None:
    global _active
    with _lock:
        _active = None
