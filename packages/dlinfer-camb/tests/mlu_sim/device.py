"""Simulated torch_mlu device layer: the ``torch.mlu`` namespace (graphs) and gpu_migration
(docs/vendor-semantics.md §3.17).

The simulated MLU is the CPU. Graph objects only record the calls made on them (no capture on CPU).
"""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.machinery
import sys
import types
from collections.abc import Iterator
from typing import Any

import torch

MIGRATION = "torch_mlu.utils.gpu_migration.migration"


class MLUGraph:
    """TMLU torch_mlu/mlu/graphs.py: capture_begin / capture_end / replay / reset / pool (calls recorded)."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def capture_begin(self, pool: Any = None, capture_error_mode: str = "relaxed") -> None:
        self.calls.append("capture_begin")

    def capture_end(self) -> None:
        self.calls.append("capture_end")

    def replay(self) -> None:
        self.calls.append("replay")

    def reset(self) -> None:
        self.calls.append("reset")

    def pool(self) -> tuple[int, int]:
        return (0, id(self))


@contextlib.contextmanager
def graph(mlu_graph: MLUGraph, pool: Any = None, stream: Any = None,
          capture_error_mode: str = "relaxed") -> Iterator[MLUGraph]:
    """torch.mlu.graph(mlu_graph, pool=None, stream=None, capture_error_mode="relaxed") (§3.17)."""
    if not isinstance(mlu_graph, MLUGraph):
        raise TypeError(f"torch.mlu.graph: expected an MLUGraph, got {type(mlu_graph).__name__}")
    mlu_graph.capture_begin(pool, capture_error_mode)
    try:
        yield mlu_graph
    finally:
        mlu_graph.capture_end()


def mlu_namespace() -> types.ModuleType:
    """What ``import torch_mlu`` adds as ``torch.mlu``."""
    ns = types.ModuleType("torch.mlu")
    ns.MLUGraph = MLUGraph
    ns.graph = graph
    ns.graph_pool_handle = lambda: (0, 0)
    ns.is_available = lambda: True
    ns.device_count = lambda: 1
    ns.migrated = False
    return ns


class _MigrationLoader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> None:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        torch.mlu.migrated = True  # type: ignore[attr-defined] - real module patches torch.cuda -> torch.mlu


class MigrationFinder(importlib.abc.MetaPathFinder):
    """Lets ``import torch_mlu.utils.gpu_migration.migration`` run (and be observed) like a real import."""

    def find_spec(self, fullname: str, path: Any, target: Any = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != MIGRATION:
            return None
        return importlib.machinery.ModuleSpec(fullname, _MigrationLoader())


def torch_mlu_modules(version: str) -> dict[str, types.ModuleType]:
    """The torch_mlu package modules placed in sys.modules (the migration module is imported on demand)."""
    mods = {}
    for name in ("torch_mlu", "torch_mlu.utils", "torch_mlu.utils.gpu_migration"):
        mod = types.ModuleType(name)
        mod.__path__ = []  # a package, so that submodules resolve
        mods[name] = mod
    mods["torch_mlu"].__version__ = version
    mods["torch_mlu"].utils = mods["torch_mlu.utils"]
    mods["torch_mlu.utils"].gpu_migration = mods["torch_mlu.utils.gpu_migration"]
    return mods


def migration_loaded() -> bool:
    return MIGRATION in sys.modules
