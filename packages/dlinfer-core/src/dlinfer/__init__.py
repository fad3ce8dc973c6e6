"""dlinfer: fused LLM inference ops with pluggable vendor backends.

``import dlinfer.ops`` gives the ops; the backend is activated on first use (or with
:func:`activate`). See ``dlinfer info`` for the discovered backends.
"""

from __future__ import annotations

import importlib
import os as _os
from typing import TYPE_CHECKING, Any

from dlinfer import _mixed_install

_mixed_install.check(_os.path.dirname(_os.path.abspath(__file__)))

_LAZY = {  # public name -> module; imported on first use, so that ``import dlinfer`` (and the pytest plugin, the
    # LMDeploy autoload) does not import torch before it is needed
    "activate": "dlinfer.dispatch",
    "current": "dlinfer.dispatch",
    "deactivate": "dlinfer.dispatch",
    "set_validation": "dlinfer.dispatch",
    "BackendSelectionError": "dlinfer.errors",
    "DlinferArgumentError": "dlinfer.errors",
    "DlinferError": "dlinfer.errors",
    "PluginError": "dlinfer.errors",
    "API_VERSION": "dlinfer.spec",
    "SPECS": "dlinfer.spec",
}

if TYPE_CHECKING:
    from dlinfer.dispatch import activate, current, deactivate, set_validation
    from dlinfer.errors import BackendSelectionError, DlinferArgumentError, DlinferError, PluginError
    from dlinfer.spec import API_VERSION, SPECS


def __getattr__(name: str) -> Any:
    """The public names of :data:`_LAZY`, and submodules (``dlinfer.registry``), imported on first access."""
    module = _LAZY.get(name)
    if module is not None:
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if not name.startswith("_"):
        try:
            return importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"{__name__}.{name}":
                raise
    raise AttributeError(f"module 'dlinfer' has no attribute {name!r}")


__version__ = "1.0.0"

__all__ = [
    "API_VERSION",
    "__version__",
    "SPECS",
    "BackendSelectionError",
    "DlinferArgumentError",
    "DlinferError",
    "PluginError",
    "activate",
    "current",
    "deactivate",
    "set_validation",
]
