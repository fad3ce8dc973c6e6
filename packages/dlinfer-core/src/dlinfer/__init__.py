"""dlinfer: fused LLM inference ops with pluggable vendor backends.

``import dlinfer.ops`` gives the ops; the backend is activated on first use (or with
:func:`activate`). See ``dlinfer info`` for the discovered backends.
"""

from __future__ import annotations

from dlinfer.dispatch import activate, current, deactivate, set_validation
from dlinfer.errors import BackendSelectionError, DlinferArgumentError, DlinferError, PluginError
from dlinfer.spec import API_VERSION, SPECS

__all__ = [
    "API_VERSION",
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
