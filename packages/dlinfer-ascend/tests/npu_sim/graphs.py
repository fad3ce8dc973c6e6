"""Simulated NPU graphs: torch.npu.NPUGraph, torch.npu.graph(...), graph.update(cpu_update_input).

docs/vendor-semantics.md §2.28 (PT:torch_npu/npu/graphs.py; PT:torch_npu/npu/_npugraph_handlers/*.py;
OP-GRAPHDOC:torch_npu-npu_npugraph_handlers).

Model: capture records every aten op (TorchDispatchMode); host values are baked at capture
exactly as on the device. Ops registered in the graph handler registry (FIA) are recorded as
*updatable* nodes when captured with ``auto_dispatch_capture=True``: each waits on an
ExternalEvent that only ``update(cpu_update_input=...)`` records. So ``replay()`` runs up to the
first updatable node and blocks; ``update`` replaces the named host kwargs (persistently) and
releases it. Replaying without ``update`` would hang on hardware; here ``synchronize()``, a new
``replay()`` or reading the graph result raises instead.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from ._contract import NpuContractError

_CAPTURING: list[NPUGraph] = []


def capturing_graph() -> NPUGraph | None:
    """The graph under capture, if any."""
    return _CAPTURING[-1] if _CAPTURING else None


@dataclass
class _AtenNode:
    func: Any
    args: tuple
    kwargs: dict
    out: Any

    def run(self) -> None:
        res = self.func(*self.args, **self.kwargs)
        new, _ = tree_flatten(res)
        old, _ = tree_flatten(self.out)
        for o, n in zip(old, new, strict=True):
            if isinstance(o, torch.Tensor) and isinstance(n, torch.Tensor):
                same = o.data_ptr() == n.data_ptr() and o.stride() == n.stride()
                if not same and o.numel():
                    o.copy_(n)


@dataclass
class UpdatableNode:
    """One captured op whose host kwargs can be replaced through ``NPUGraph.update``."""

    name: str
    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    out: torch.Tensor
    updatable_keys: tuple[str, ...]
    needs_event: bool = True
    event_recorded: bool = False

    def run(self) -> None:
        with suspended():
            res = self.fn(*self.args, **self.kwargs)
        self.out.copy_(res[0] if isinstance(res, tuple) else res)


@dataclass
class KernelNode:
    """One captured kernel launch: at replay it runs again on the *current* contents of its device tensors
    (§2.28: NPUGraph is the CUDA-graph analogue; a captured kernel reads its device inputs when the graph runs,
    host arguments are fixed at capture). Its outputs are written into the tensors the capture returned."""

    fn: Callable[..., Any]
    args: tuple
    kwargs: dict
    out: Any

    def run(self) -> None:
        with suspended():
            res = self.fn(*self.args, **self.kwargs)
        new, _ = tree_flatten(res)
        old, _ = tree_flatten(self.out)
        for o, n in zip(old, new, strict=True):
            if isinstance(o, torch.Tensor) and isinstance(n, torch.Tensor) and o.numel():
                o.copy_(n)


def one_kernel(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Record the simulated kernel ``fn`` as one graph node when called during capture.

    For kernels whose simulation reads device data on the host (``group_list`` counts, the routing sort):
    recorded op by op, those values would be baked into the graph at capture, which the device does not do.
    """

    @functools.wraps(fn)
    def kernel(*args: Any, **kwargs: Any) -> Any:
        g = capturing_graph()
        if g is None or g._suspended:
            return fn(*args, **kwargs)
        with suspended():
            out = fn(*args, **kwargs)
        g._nodes.append(KernelNode(fn, args, kwargs, out))
        return out

    return kernel


class _Recorder(TorchDispatchMode):
    def __init__(self, graph: NPUGraph) -> None:
        super().__init__()
        self.graph = graph

    def __torch_dispatch__(self, func: Any, types: Any, args: tuple = (), kwargs: dict | None = None
                           ) -> Any:
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if not self.graph._suspended:
            self.graph._nodes.append(_AtenNode(func, args, kwargs, out))
        return out


@contextlib.contextmanager
def suspended() -> Iterator[None]:
    """Do not record aten ops (used inside a simulated kernel that is recorded as one node)."""
    g = capturing_graph()
    if g is None:
        yield
        return
    g._suspended += 1
    try:
        yield
    finally:
        g._suspended -= 1


@dataclass
class NPUGraph:
    """Simulated ``torch.npu.NPUGraph`` (capture_begin/end, replay, update, reset)."""

    _nodes: list[Any] = field(default_factory=list)
    _suspended: int = 0
    _auto_dispatch: bool = False
    _captured: bool = False
    _pending: int | None = None
    _mode: _Recorder | None = None

    def capture_begin(self, pool: object = None, capture_error_mode: str = "global",
                      auto_dispatch_capture: bool = False) -> None:
        if self._captured:
            raise NpuContractError("NPUGraph: capture_begin on an already captured graph (reset first)")
        self._auto_dispatch = auto_dispatch_capture
        self._mode = _Recorder(self)
        self._mode.__enter__()
        _CAPTURING.append(self)

    def capture_end(self) -> None:
        assert self._mode is not None
        _CAPTURING.remove(self)
        self._mode.__exit__(None, None, None)
        self._mode = None
        self._captured = True

    def record_kernel(self, node: UpdatableNode) -> None:
        """Record a simulated kernel as one node (updatable iff auto_dispatch_capture=True)."""
        node.needs_event = self._auto_dispatch and bool(node.updatable_keys)
        self._nodes.append(node)

    @property
    def updatable(self) -> list[UpdatableNode]:
        return [n for n in self._nodes if isinstance(n, UpdatableNode)]

    def _run_from(self, start: int) -> None:
        for i in range(start, len(self._nodes)):
            node = self._nodes[i]
            waits = isinstance(node, UpdatableNode) and node.needs_event
            if waits and not node.event_recorded:
                self._pending = i
                return
            node.run()
            if isinstance(node, UpdatableNode):
                node.event_recorded = False  # the wait consumes the event (reset after wait)
        self._pending = None

    def replay(self) -> None:
        if not self._captured:
            raise NpuContractError("NPUGraph.replay: graph was not captured")
        self.synchronize_check("replay")
        self._run_from(0)

    def update(self, cpu_update_input: list[dict[str, Any]]) -> None:
        """Replace host kwargs of the updatable nodes and record their events (§2.28)."""
        nodes = [n for n in self.updatable if n.needs_event]
        if not self._auto_dispatch:
            raise NpuContractError("NPUGraph.update requires capture with auto_dispatch_capture=True")
        if not isinstance(cpu_update_input, list) or not cpu_update_input:
            raise NpuContractError("NPUGraph.update: cpu_update_input must be a non-empty list of dicts")
        if len(cpu_update_input) not in (1, len(nodes)):
            raise NpuContractError(
                f"NPUGraph.update: {len(cpu_update_input)} dicts for {len(nodes)} recorded ops")
        for i, node in enumerate(nodes):
            upd = cpu_update_input[0 if len(cpu_update_input) == 1 else i]
            for k, v in upd.items():
                if k not in node.updatable_keys:
                    raise NpuContractError(f"NPUGraph.update: {node.name} has no updatable arg {k!r}")
                node.kwargs[k] = list(v.tolist()) if isinstance(v, torch.Tensor) else list(v)
            node.event_recorded = True
        if self._pending is not None:
            self._run_from(self._pending)

    def synchronize_check(self, what: str) -> None:
        if self._pending is not None:
            raise NpuContractError(
                f"{what}: the graph is blocked on an ExternalEvent of an updatable op; "
                "call NPUGraph.update(cpu_update_input=...) after replay() (would hang on device)")

    def reset(self) -> None:
        self._nodes.clear()
        self._captured = False
        self._pending = None


_ALL_GRAPHS: list[NPUGraph] = []


@contextlib.contextmanager
def graph(npu_graph: NPUGraph, pool: object = None, stream: object = None,
          auto_dispatch_capture: bool = False, capture_error_mode: str = "global") -> Iterator[None]:
    """Simulated ``torch.npu.graph`` context manager (§2.28)."""
    _ALL_GRAPHS.append(npu_graph)
    npu_graph.capture_begin(pool, capture_error_mode, auto_dispatch_capture=auto_dispatch_capture)
    try:
        yield
    finally:
        npu_graph.capture_end()


def synchronize() -> None:
    """Simulated ``torch.npu.synchronize``: raises if a replayed graph is blocked."""
    for g in _ALL_GRAPHS:
        g.synchronize_check("torch.npu.synchronize")


def graph_pool_handle() -> tuple[int, int]:
    """Simulated ``torch.npu.graph_pool_handle``."""
    return (0, 0)
