"""NPU graph capture/replay with the replay-time update of host-side sequence lengths.

FIA takes ``actual_seq_lengths_kv`` as host data, which a captured graph bakes in. torch_npu
(>= 2.8.0.post1) records FIA updatably when capturing with ``auto_dispatch_capture=True``;
after ``replay()`` the new lengths are supplied with ``update(cpu_update_input=...)``, which the
replayed graph waits for (docs/vendor-semantics.md §2.28, §U5.3).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch
from dlinfer.plugin import DeviceGraph


class AscendGraph:
    """One captured decode step. ``replay()`` = NPUGraph.replay() then update(host lengths)."""

    def __init__(self) -> None:
        self.npu_graph = torch.npu.NPUGraph()  # type: ignore[attr-defined]
        self._kv_cpu: torch.Tensor | None = None

    @contextlib.contextmanager
    def capturing(self, pool: Any = None, stream: Any = None) -> Iterator[AscendGraph]:
        """Context manager: capture the ops run inside it (FIA recorded updatably)."""
        with torch.npu.graph(self.npu_graph, pool=pool, stream=stream,  # type: ignore[attr-defined]
                             auto_dispatch_capture=True):
            yield self

    def capture(self, fn: Callable[..., Any], *args: Any, pool: Any = None, stream: Any = None,
                **kwargs: Any) -> Any:
        """Capture ``fn(*args, **kwargs)``; returns its (static) outputs."""
        with self.capturing(pool, stream):
            return fn(*args, **kwargs)

    def update_host_args(self, seqlens_kv_cpu: torch.Tensor) -> None:
        """Set the host KV lengths (CPU int32 [B]) used by the next replay(s)."""
        if seqlens_kv_cpu.device.type != "cpu":
            raise ValueError(f"seqlens_kv_cpu must be a CPU tensor, got {seqlens_kv_cpu.device}")
        self._kv_cpu = seqlens_kv_cpu

    def replay(self) -> None:
        """Replay the graph and feed the host lengths its attention kernels wait for."""
        if self._kv_cpu is None:
            raise RuntimeError("AscendGraph.replay: call update_host_args(seqlens_kv_cpu) first; "
                               "the captured attention waits for its host lengths")
        self.npu_graph.replay()
        self.npu_graph.update(cpu_update_input=[{"actual_seq_lengths_kv": self._kv_cpu}])

    def reset(self) -> None:
        self.npu_graph.reset()
        self._kv_cpu = None


def _capture(graph: AscendGraph, pool: Any = None, stream: Any = None) -> Any:
    return graph.capturing(pool, stream)


def _update(graph: AscendGraph, host_args: Mapping[str, Any]) -> None:
    graph.update_host_args(host_args["seqlens_kv_cpu"])


def device_graph() -> DeviceGraph:
    """The DeviceGraph declaration of the Ascend backend (nothing is created until used)."""
    return DeviceGraph(
        graph_factory=AscendGraph,
        capture=_capture,
        pool_factory=lambda: torch.npu.graph_pool_handle(),  # type: ignore[attr-defined]
        update_before_replay=_update,
    )
