"""dlinfer-lmdeploy: LMDeploy's PyTorch engine on every dlinfer backend.

Importing this package wires every discovered dlinfer backend into LMDeploy: its device
type (``cpu`` for the built-in reference backend, the plugin's name otherwise) is accepted
by ``PytorchEngineConfig(device_type=...)`` and ``--device``, and LMDeploy's backend
selection returns the generic dlinfer OpsBackend configured from the plugin. The device's
patches (e.g. the CPU device's ``torch.cuda`` redirection) are applied only when an engine
is built for it. All LMDeploy patches are listed in :mod:`dlinfer_lmdeploy.inventory`.
"""

from __future__ import annotations

from dlinfer_lmdeploy.version_check import UnsupportedLMDeployVersion, check_lmdeploy_version

__version__ = "1.0.0"
__all__ = ["UnsupportedLMDeployVersion", "install", "installed", "lmdeploy_devices"]

_installed = False


def install() -> None:
    """Check the LMDeploy version, probe every patch target, then apply the inventory (idempotent)."""
    global _installed
    if _installed:
        return
    check_lmdeploy_version()
    from dlinfer_lmdeploy import hooks as _hooks  # noqa: F401  (registers the replacements)
    from dlinfer_lmdeploy import inventory
    from dlinfer_lmdeploy import workers as _workers  # noqa: F401  (registers the replacements)

    inventory.apply_all()
    _installed = True


def installed() -> bool:
    return _installed


def lmdeploy_devices() -> list[str]:
    """LMDeploy device names served by dlinfer backends in this environment."""
    from dlinfer_lmdeploy import devices

    return sorted(devices.devices())


install()
