"""dlinfer: fused LLM inference ops with pluggable vendor backends.

``import dlinfer.ops`` gives the ops; the backend is activated on first use (or with
:func:`activate`). See ``dlinfer info`` for the discovered backends.
"""

from __future__ import annotations

import os as _os

from dlinfer import _mixed_install

_mixed_install.check(_os.path.dirname(_os.path.abspath(__file__)))

from dlinfer.dispatch import activate, current, deactivate, set_validation  # noqa: E402 (after the check)
from dlinfer.errors import BackendSelectionError, DlinferArgumentError, DlinferError, PluginError  # noqa: E402
from dlinfer.spec import API_VERSION, SPECS  # noqa: E402

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
