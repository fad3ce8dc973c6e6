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

from dlinfer.compose import compose
from dlinfer.errors import DlinferError, PluginError
from dlinfer.plugin import Backend
from dlinfer.registry import REFERENCE, REGISTRY, PluginRecord, drops_plan
from dlinfer.spec import SPECS


class _State:
    """Process-wide dispatch state."""

    def __init__(self) -> None:
        self.record: PluginRecord | None = None
        self.kv_layout = "NHD"
        self.fallbacks: tuple[str, ...] = ()
        """Ops served by the reference because the backend lacks them (and cannot compose them)."""
        self.composed: tuple[str, ...] = ()
        """Ops the backend lacks, composed from its own ops (dlinfer.compose)."""
        self.warned: set[tuple[str, str]] = set()
        """(backend, op) pairs whose fallback warning was issued: once per process, not per activation."""
        mode = validation_mode(os.environ.get("DLINFER_VALIDATE", ""))
        self.validate = mode != "off"
        self.full = mode == "full"


_TRUE = ("1", "true", "yes", "on")
_FALSE = ("", "0", "false", "no", "off")


def env_flag(var: str) -> bool:
    """A boolean environment variable: 1/true/yes/on or 0/false/no/off (any case; unset = off)."""
    raw = os.environ.get(var, "")
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise DlinferError(f"{var}={raw!r} is not understood; use one of {', '.join(_TRUE)} (on) "
                       f"or {', '.join(v for v in _FALSE if v)} (off)")


def validation_mode(raw: str) -> str:
    """``DLINFER_VALIDATE``: off (unset, 0/false/no/off), shapes, or full (full, 1/true/yes/on)."""
    value = raw.strip().lower()
    if value in ("off", "shapes", "full"):
        return value
    if value in _FALSE:
        return "off"
    if value in _TRUE:
        return "full"
    raise DlinferError(f"DLINFER_VALIDATE={raw!r} is not understood; use off, shapes or full "
                       f"(also {', '.join(v for v in _FALSE if v)} = off, {', '.join(_TRUE)} = full)")


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

    Missing ops are composed from the backend's own ops where the spec says how
    (``OpSpec.derived_from``), else fall back to the reference implementation; either way with a
    one-time warning per op. ``strict`` (or DLINFER_STRICT=1) refuses reference fallbacks instead.
    """
    if strict is None:
        strict = env_flag("DLINFER_STRICT")
    explicit = bool(name or os.environ.get("DLINFER_BACKEND"))
    while True:
        rec = REGISTRY.select(name)
        try:
            return _activate(rec, strict)
        except PluginError as exc:
            if explicit or rec.plugin == REFERENCE:
                raise
            REGISTRY.reject(rec, exc.reason)  # auto-selected and broken: report it, try the next candidate


def _activate(rec: PluginRecord, strict: bool) -> Backend:
    assert rec.backend is not None
    backend = rec.backend
    ops = REGISTRY.load_ops(rec.backend.name)
    reference = REGISTRY.load_ops(REFERENCE)
    composed = compose(ops)  # missing ops built from the backend's own ops
    missing = tuple(n for n in SPECS if n not in ops and n not in composed)
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
        setattr(TABLE, op, drops_plan(op, ops.get(op) or (composed[op][0] if op in composed else reference[op])))
    for op in SPECS:
        if op in ops or (backend.name, op) in STATE.warned:
            continue
        STATE.warned.add((backend.name, op))
        how = (f"composed from its own {' + '.join(composed[op][1])}" if op in composed
               else "using the reference implementation")
        warnings.warn(f"dlinfer backend '{backend.name}' does not implement '{op}'; {how}", RuntimeWarning,
                      stacklevel=3)
    STATE.record, STATE.kv_layout, STATE.fallbacks = rec, backend.kv_layout, missing
    STATE.composed = tuple(composed)
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
