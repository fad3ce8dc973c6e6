"""Exceptions raised by dlinfer."""

from __future__ import annotations


class DlinferError(RuntimeError):
    """Base class of dlinfer's own errors."""


class DlinferArgumentError(ValueError):
    """An op was called with arguments that break its spec (names op, argument, expected, actual)."""

    def __init__(self, op: str, arg: str, expected: str, actual: str) -> None:
        self.op, self.arg, self.expected, self.actual = op, arg, expected, actual
        super().__init__(f"dlinfer.ops.{op}: argument '{arg}': expected {expected}, got {actual}")


class PluginError(DlinferError):
    """A backend plugin failed to load, declared something invalid, or is incompatible."""

    def __init__(self, plugin: str, dist: str, version: str, reason: str) -> None:
        self.plugin, self.dist, self.version, self.reason = plugin, dist, version, reason
        super().__init__(f"dlinfer backend plugin '{plugin}' ({dist} {version}): {reason}")


class BackendSelectionError(DlinferError):
    """No backend, or more than one, matches the selection rules."""
