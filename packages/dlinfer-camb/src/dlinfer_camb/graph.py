"""MLU graph capture/replay (torch.mlu.MLUGraph, the CUDA-graph model; docs/vendor-semantics.md §3.17).

torch.mlu exists only once torch_mlu is imported, so every factory resolves it when called.
No replay-time host update is needed: the camb kernels read sequence lengths from device
buffers (single_query_cached_kv_attn's context_lens), which the framework refreshes before replay.
"""

from __future__ import annotations

from typing import Any

import torch

from dlinfer.plugin import DeviceGraph


def _mlu() -> Any:
    from dlinfer_camb.runtime import ensure_runtime

    ensure_runtime()
    return torch.mlu  # type: ignore[attr-defined]


def _new_graph() -> Any:
    return _mlu().MLUGraph()


def _capture(graph: Any, pool: Any = None, stream: Any = None) -> Any:
    return _mlu().graph(graph, pool=pool, stream=stream)


def _pool() -> Any:
    return _mlu().graph_pool_handle()


def device_graph() -> DeviceGraph:
    """The camb DeviceGraph declaration (cheap: nothing is imported until a graph is made)."""
    return DeviceGraph(graph_factory=_new_graph, capture=_capture, pool_factory=_pool, update_before_replay=None)
