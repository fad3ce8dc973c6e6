"""Plugin discovery, validation, selection and activation.

Discovery loads every entry point of the ``dlinfer.backends`` group through pluggy,
one at a time, so that a broken plugin is recorded (name, distribution, version,
cause) and the others still load. Activation resolves a dispatch table once; the
public ops then call straight into it.

Environment variables:
    DLINFER_BACKEND            pick a backend by name (its load errors are raised)
    DLINFER_DISABLE_PLUGINS    comma-separated plugin/backend names to skip; ``reference`` is never
                               auto-selected then, but its ops stay the fallback for missing ops
    DLINFER_STRICT=1           refuse a backend that lacks ops instead of falling back (1/true/yes/on,
                               0/false/no/off)

An auto-selected backend whose ``load_ops()`` or ``activate()`` fails, or whose op table is
invalid, is reported (RuntimeWarning and ``load_errors``: name, distribution, version, cause)
and skipped; the next candidate is selected. An ``is_available()`` that raises counts as
"not available", with its cause warned and kept in ``PluginRecord.probe_error``.
    DLINFER_PLUGINS            comma-separated plugin modules to register besides the entry points
"""

from __future__ import annotations

import importlib
import importlib.metadata as md
import inspect
import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.version import Version

from dlinfer.errors import BackendSelectionError, PluginError
from dlinfer.plugin import ENTRY_POINT_GROUP, PROJECT, Backend, BackendHookSpec
from dlinfer.spec import API_VERSION, SPECS

REFERENCE = "reference"


@dataclass
class PluginRecord:
    """One discovered plugin: its origin, its declaration and any error found while loading it."""

    plugin: str
    dist: str
    version: str
    backend: Backend | None = None
    error: str | None = None
    ops: dict[str, Callable[..., Any]] | None = None
    op_errors: list[str] = field(default_factory=list)
    probe_error: str | None = None
    """Why ``is_available()`` raised, if it did (the backend then counts as not available)."""

    def fail(self, reason: str) -> PluginError:
        return PluginError(self.plugin, self.dist, self.version, reason)


def _extra_modules() -> list[str]:
    """Plugin modules named in DLINFER_PLUGINS (for environments without installed metadata, e.g. a
    source checkout on a device image); they are registered exactly like entry points."""
    return [m.strip() for m in os.environ.get("DLINFER_PLUGINS", "").split(",") if m.strip()]


def _disabled() -> set[str]:
    raw = os.environ.get("DLINFER_DISABLE_PLUGINS", "")
    return {n.strip() for n in raw.split(",") if n.strip()}


def _check_api(rec: PluginRecord, backend: Backend) -> str | None:
    try:
        spec = SpecifierSet(backend.api_version)
    except InvalidSpecifier:
        return f"invalid api_version {backend.api_version!r} (expected a PEP 440 specifier like '>=1.0,<2')"
    if Version(API_VERSION) not in spec:
        return (
            f"supports dlinfer API {backend.api_version}, but this dlinfer-core implements API {API_VERSION}; "
            f"install a dlinfer-core whose API version satisfies {backend.api_version}, "
            f"or a version of {rec.dist} written for API {API_VERSION}"
        )
    return None


def _check_declaration(backend: object) -> str | None:
    if not isinstance(backend, Backend):
        return f"dlinfer_backend() returned {type(backend).__name__}, expected dlinfer.plugin.Backend"
    if not isinstance(backend.name, str) or not backend.name:
        return f"backend name must be a non-empty string, got {backend.name!r}"
    for attr in ("is_available", "load_ops"):
        if not callable(getattr(backend, attr)):
            return f"Backend.{attr} must be callable, got {type(getattr(backend, attr)).__name__}"
    if backend.kv_layout not in ("NHD", "HND"):
        return f"kv_layout must be 'NHD' or 'HND', got {backend.kv_layout!r}"
    return None


def signature_mismatch(op: str, fn: Callable[..., Any]) -> str | None:
    """Compare an implementation's parameters with the spec's; return a description of the mismatch."""
    spec = SPECS[op]
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return None  # builtins without signatures are accepted as-is
    params = [p for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    got = [(p.name, p.kind == p.KEYWORD_ONLY) for p in params]
    want = [(p.name, p.keyword_only) for p in spec.params]
    if got == want or got == [(p.name, p.keyword_only) for p in spec.params if p.kind != "plan"]:
        return None  # the plan keyword (API 1.2) is optional for an implementation

    def fmt(items: list[tuple[str, bool]]) -> str:
        return "(" + ", ".join(("*" if kw else "") + n for n, kw in items) + ")"

    return f"op '{op}' has parameters {fmt(got)}, spec expects {fmt(want)} (* = keyword-only)"


def drops_plan(op: str, fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` itself when it takes the spec's ``plan`` keyword (or the op has none), else a wrapper that drops it
    (an implementation written for API < 1.2, or one that never uses a plan)."""
    if not any(p.kind == "plan" for p in SPECS[op].params):
        return fn
    try:
        if "plan" in inspect.signature(fn).parameters:
            return fn
    except (TypeError, ValueError):
        pass

    def without_plan(*args: Any, plan: object = None, **kwargs: Any) -> Any:
        return fn(*args, **kwargs)

    without_plan.__wrapped_impl__ = fn  # type: ignore[attr-defined]
    return without_plan


def validate_ops(rec: PluginRecord, ops: Mapping[str, Callable[..., Any]]) -> list[str]:
    """Registration-time check of a plugin's op table against the spec."""
    problems = []
    for name, fn in ops.items():
        if name not in SPECS:
            problems.append(f"unknown op '{name}' (known: {', '.join(sorted(SPECS))})")
        elif not callable(fn):
            problems.append(f"op '{name}' is {type(fn).__name__}, not callable")
        elif (msg := signature_mismatch(name, fn)) is not None:
            problems.append(msg)
    if ("weight_quant_matmul" in ops) != ("weight_quant_prepare" in ops):
        problems.append("weight_quant_matmul and weight_quant_prepare must be provided together")
    return problems


class Registry:
    """Discovered backends. ``dlinfer.registry.REGISTRY`` is the process-wide instance."""

    def __init__(self) -> None:
        self._reset()

    def _reset(self) -> None:
        """Forget every record and start a fresh plugin manager (``discover(force=True)``)."""
        self.records: dict[str, PluginRecord] = {}
        self.load_errors: list[PluginRecord] = []
        self._discovered = False
        self.pm = pluggy.PluginManager(PROJECT)
        self.pm.add_hookspecs(BackendHookSpec)

    # -- discovery -------------------------------------------------------------------------
    def discover(self, *, force: bool = False) -> None:
        """Load the built-in reference backend and every entry point, recording failures."""
        if self._discovered and not force:
            return
        if force:
            self._reset()
        from dlinfer.reference import plugin as reference_plugin

        self._register(reference_plugin, PluginRecord(REFERENCE, "dlinfer-core", _own_version()))
        disabled = _disabled()
        for ep in md.entry_points(group=ENTRY_POINT_GROUP):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            rec = PluginRecord(ep.name, dist, version)
            if ep.name in disabled:
                continue
            try:
                obj = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
                rec.error = f"import of '{ep.value}' failed: {type(exc).__name__}: {exc}"
                self.load_errors.append(rec)
                continue
            self._register(obj, rec)
        for module in _extra_modules():
            if module in disabled:
                continue
            rec = PluginRecord(module, "DLINFER_PLUGINS", "-")
            try:
                obj = importlib.import_module(module)
            except Exception as exc:  # noqa: BLE001
                rec.error = f"import of '{module}' failed: {type(exc).__name__}: {exc}"
                self.load_errors.append(rec)
                continue
            if not self.pm.is_registered(obj):  # already found through its entry point
                self._register(obj, rec)
        self._discovered = True

    def _register(self, obj: object, rec: PluginRecord) -> None:
        registered = False

        def reject(reason: str) -> None:
            if registered:
                self.pm.unregister(obj)
            rec.error = reason
            self.load_errors.append(rec)

        try:
            self.pm.register(obj, name=rec.plugin)
        except Exception as exc:  # noqa: BLE001 - e.g. pluggy's PluginValidationError, a name clash
            return reject(f"registration with pluggy failed: {type(exc).__name__}: {exc}")
        registered = True
        impls = [i for i in self.pm.hook.dlinfer_backend.get_hookimpls() if i.plugin_name == rec.plugin]
        if not impls:
            return reject("implements no dlinfer_backend() hook")
        try:
            backend = impls[0].function()
        except Exception as exc:  # noqa: BLE001 - a plugin's own failure is reported, not raised
            return reject(f"dlinfer_backend() raised {type(exc).__name__}: {exc}")
        if (msg := _check_declaration(backend)) or (msg := _check_api(rec, backend)):
            return reject(msg)
        if backend.name in self.records:
            other = self.records[backend.name]
            return reject(f"backend name '{backend.name}' is already registered by {other.dist} {other.version}")
        if backend.name in _disabled() and backend.name != REFERENCE:  # the reference stays the fallback
            self.pm.unregister(obj)
            return None
        rec.backend = backend
        self.records[backend.name] = rec

    # -- ops -------------------------------------------------------------------------------
    def load_ops(self, name: str) -> dict[str, Callable[..., Any]]:
        """Import a backend's op table and validate it against the spec (raises PluginError)."""
        rec = self.records[name]
        if rec.ops is not None:
            return rec.ops
        assert rec.backend is not None
        try:
            ops = dict(rec.backend.load_ops())
        except Exception as exc:
            raise rec.fail(f"load_ops() failed: {type(exc).__name__}: {exc}") from exc
        problems = validate_ops(rec, ops)
        if problems:
            rec.op_errors = problems
            raise rec.fail("invalid op table: " + "; ".join(problems))
        rec.ops = ops
        return ops

    def available(self, name: str) -> bool:
        rec = self.records[name]
        assert rec.backend is not None
        try:
            return bool(rec.backend.is_available())
        except Exception as exc:  # noqa: BLE001 - a probe that raises means "not available", with its cause
            cause = f"is_available() raised {type(exc).__name__}: {exc}"
            if rec.probe_error != cause:
                rec.probe_error = cause
                warnings.warn(f"dlinfer backend plugin '{rec.plugin}' ({rec.dist} {rec.version}): {cause}; "
                              "treated as not available", RuntimeWarning, stacklevel=3)
            return False

    def reject(self, rec: PluginRecord, reason: str) -> None:
        """Drop an auto-selected backend that failed to load or activate: warn and record it in load_errors."""
        assert rec.backend is not None
        self.records.pop(rec.backend.name, None)
        rec.error = reason
        self.load_errors.append(rec)
        warnings.warn(f"dlinfer backend plugin '{rec.plugin}' ({rec.dist} {rec.version}) skipped: {reason}",
                      RuntimeWarning, stacklevel=3)

    # -- selection -------------------------------------------------------------------------
    def select(self, name: str | None = None) -> PluginRecord:
        """Pick the backend: explicit name (or DLINFER_BACKEND), else auto-detect."""
        self.discover()
        name = name or os.environ.get("DLINFER_BACKEND") or None
        if name is not None:
            if name in self.records:
                return self.records[name]
            for rec in self.load_errors:
                if rec.plugin == name:
                    raise rec.fail(rec.error or "failed to load")
            known = ", ".join(sorted(self.records)) or "none"
            raise BackendSelectionError(f"no dlinfer backend named '{name}' (discovered: {known})")
        candidates = [r for n, r in list(self.records.items()) if n != REFERENCE and self.available(n)]
        for rec in list(candidates):  # an op table that fails to load or validate: report, skip
            assert rec.backend is not None
            try:
                self.load_ops(rec.backend.name)
            except PluginError as exc:
                self.reject(rec, exc.reason)
                candidates.remove(rec)
        by_device: dict[str, list[PluginRecord]] = {}
        for rec in candidates:
            assert rec.backend is not None
            by_device.setdefault(rec.backend.device_type, []).append(rec)
        for device, recs in by_device.items():
            if len(recs) > 1:
                names = ", ".join(f"{r.plugin} ({r.dist} {r.version})" for r in recs)
                raise BackendSelectionError(
                    f"several dlinfer backends claim device '{device}': {names}; "
                    "set DLINFER_BACKEND to one of them or DLINFER_DISABLE_PLUGINS to block the others"
                )
        accel = [r for r in candidates if r.backend is not None and r.backend.device_type != "cpu"]
        pool = accel or candidates
        if len(pool) > 1:
            names = ", ".join(f"{r.plugin} ({r.backend.device_type})" for r in pool if r.backend)
            raise BackendSelectionError(f"several dlinfer backends are available: {names}; set DLINFER_BACKEND")
        if pool:
            return pool[0]
        if REFERENCE in _disabled():
            broken = "; ".join(f"{r.plugin} ({r.dist} {r.version}): {r.error}" for r in self.load_errors)
            raise BackendSelectionError(
                "no dlinfer backend is available and DLINFER_DISABLE_PLUGINS blocks the reference backend"
                + (f"; plugins that failed: {broken}" if broken else "")
                + "; set DLINFER_BACKEND=reference to run on the reference anyway")
        return self.records[REFERENCE]


def _own_version() -> str:
    try:
        return md.version("dlinfer-core")
    except md.PackageNotFoundError:
        return "0+unknown"


REGISTRY = Registry()

