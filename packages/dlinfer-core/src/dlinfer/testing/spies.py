"""Call counters for tests: how often a module's functions run (e.g. a plan's host work once per step)."""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any


def count_calls(monkeypatch: Any, module: ModuleType, names: Iterable[str]) -> dict[str, int]:
    """Wrap ``module.<name>`` for each name with a counter (undone by ``monkeypatch``); returns the live counts."""
    seen = {name: 0 for name in names}
    for name in seen:
        orig = getattr(module, name)

        def spy(*args: Any, _orig: Any = orig, _name: str = name, **kwargs: Any) -> Any:
            seen[_name] += 1
            return _orig(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    return seen
