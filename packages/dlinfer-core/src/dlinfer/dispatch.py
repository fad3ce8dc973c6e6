"""The resolved dispatch table and backend activation.

``TABLE`` holds one attribute per op: the active backend's implementation or, for an
op it lacks, the reference implementation. The public ops read it directly, so the
eager hot path is one attribute lookup and one call.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

from dlinfer.errors import DlinferError
from dlinfer.plugin import Backend
from dlinfer.registry import REFERENCE, REGISTRY, PluginRecord
from dlinfer.spec import SPECS


class _State:
    """Process-wide dispatch state."""

    def __init__(self) -> None:
        self.record: PluginRecord | None = None
        self.kv_layout = "NHD"
        self.fallbacks: tuple[str, ...] = ()
        self.warned: set[tuple[str, str]] = set()
        """(backend, op) pairs whose fallback warning was issued: once per process, not per activation."""
        mode = os.environ.get("DLINFER_VALIDATE", "").lower()
        self.validate = mode in ("1", "full", "shapes")
        self.full = mode in ("1", "full")


STATE = _State()
TABLE = SimpleNamespace()


def _lazy(name: str) -> Callable[..., Any]:
    def first_call(*args: Any, **kwargs: Any) -> Any:
        activate()
        return getattr(TABLE, name)(*args, **kwargs)

    first_call.__name__ = f"activate_then_{name}"
    return first_call


def _reset_table() -> None:
    for name in SPECS:
        setattr(TABLE, name, _lazy(name))


_reset_table()


def activate(name: str | None = None, *, strict: bool | None = None) -> Backend:
    """Select a backend (explicit name, DLINFER_BACKEND, or auto-detection) and resolve the table.

    Missing ops fall back to the reference implementation with a one-time warning per op,
    unless ``strict`` (or DLINFER_STRICT=1), which raises instead.
    """
    rec = REGISTRY.select(name)
    assert rec.backend is not None
    backend = rec.backend
    if strict is None:
        strict = os.environ.get("DLINFER_STRICT", "") not in ("", "0")
    ops = REGISTRY.load_ops(rec.backend.name)
    reference = REGISTRY.load_ops(REFERENCE)
    missing = tuple(n for n in SPECS if n not in ops)
    if missing and strict:
        raise DlinferError(
            f"dlinfer backend '{backend.name}' ({rec.dist} {rec.version}) lacks ops {', '.join(missing)} "
            "and strict mode is on (DLINFER_STRICT=1 or strict=True); without it they fall back to the reference"
        )
    if backend.activate is not None:
        try:
            backend.activate()
        except Exception as exc:
            raise rec.fail(f"activate() failed: {type(exc).__name__}: {exc}") from exc
    for op in SPECS:
        setattr(TABLE, op, ops.get(op) or reference[op])
    for op in missing:
        if (backend.name, op) in STATE.warned:
            continue
        STATE.warned.add((backend.name, op))
        warnings.warn(
            f"dlinfer backend '{backend.name}' does not implement '{op}'; using the reference implementation",
            RuntimeWarning,
            stacklevel=2,
        )
    STATE.record, STATE.kv_layout, STATE.fallbacks = rec, backend.kv_layout, missing
    return backend


def current() -> Backend:
    """The active backend, activating the default one if none is active yet."""
    if STATE.record is None:
        return activate()
    assert STATE.record.backend is not None
    return STATE.record.backend


def set_validation(mode: str) -> None:
    """``"off"``: checks only when a call fails; ``"shapes"``: every call; ``"full"``: plus metadata values."""
    if mode not in ("off", "shapes", "full"):
        raise ValueError(f"validation mode must be 'off', 'shapes' or 'full', got {mode!r}")
    STATE.validate = mode != "off"
    STATE.full = mode == "full"


def deactivate() -> None:
    """Forget the active backend (tests); the next op call activates again."""
    STATE.record = None
    _reset_table()
