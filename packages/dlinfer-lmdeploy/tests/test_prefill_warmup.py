"""Prefill warm-up sizes the graph runners hand LMDeploy's engine warm-up (``warmup.py``).

A plugin declaring ``FrameworkSettings.prefill_warmup_tokens`` gets one single-sequence prefill per size, capped to
what one prefill step of the engine holds, plus ``max_batches``; nothing without a declaration, with
``DLINFER_PREFILL_WARMUP=0`` or under data parallelism. The engine-level check (LMDeploy's warm-up really runs
those prefills) is in ``test_e2e_cpu.py::test_graph_mode_past_max_positions_is_graphed``.
"""

from __future__ import annotations

import logging
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from dlinfer.plugin import Backend, FrameworkSettings

from dlinfer_lmdeploy import graph_runner as gr
from dlinfer_lmdeploy import warmup
from dlinfer_lmdeploy.testing.host_graph import bare_backend

BLOCK = 16
DECLARED = (3, 40, 500, 5000)


class _Model(torch.nn.Module):
    ctx_mgr = None


def _plugin(sizes: tuple[int, ...]) -> Backend:
    return bare_backend("fakewarm", framework=FrameworkSettings(prefill_warmup_tokens=sizes))


def _cache(max_prefill: int, blocks: int, max_batches: int = 8) -> SimpleNamespace:
    return SimpleNamespace(kernel_block_size=None, block_size=BLOCK, num_gpu_blocks=blocks,
                           cudagraph_capture_batch_sizes=None, max_batches=max_batches,
                           max_prefill_token_num=max_prefill)


def _runners(sizes: tuple[int, ...], cache: SimpleNamespace) -> list[Any]:
    """The graph-mode runner and the eager one (``eager_mode=True``) for the same plugin and cache."""
    plugin = _plugin(sizes)
    model_config = SimpleNamespace(hf_config=SimpleNamespace(max_position_embeddings=BLOCK * 8))
    graph = gr.DlinferGraphRunner(_Model(), model_config, cache, SimpleNamespace(eager_mode=False),
                                  torch.device("cpu"), plugin=plugin, ops_backend=object)
    eager = warmup.DlinferEagerRunner(_Model(), model_config, cache, SimpleNamespace(eager_mode=True),
                                      torch.device("cpu"), plugin=plugin)
    return [graph, eager]


@pytest.mark.parametrize(
    ("max_prefill", "blocks"),
    [(8192, 64), (256, 4096), (10**6, 10**6)],
    ids=["cache-bound", "prefill-bound", "no-cap"],
)
def test_declared_sizes_are_capped_and_keep_max_batches(max_prefill: int, blocks: int) -> None:
    cache = _cache(max_prefill, blocks)
    limit = min(max_prefill, blocks * BLOCK)
    for runner in _runners(DECLARED, cache):
        sizes = runner.get_prefill_warmup_token_sizes()
        assert sizes == sorted(set(sizes)), f"{type(runner).__name__}: {sizes} not ascending and unique"
        assert max(sizes) <= limit, f"{type(runner).__name__}: {sizes} above the one-step limit {limit}"
        assert cache.max_batches in sizes, f"{type(runner).__name__}: LMDeploy's max_batches warm-up lost: {sizes}"
        for n in DECLARED:
            assert min(n, limit) in sizes, f"{type(runner).__name__}: declared {n} (limit {limit}) missing: {sizes}"
        assert set(sizes) <= {min(n, limit) for n in (*DECLARED, cache.max_batches)}, sizes
        assert (limit in sizes) == any(n >= limit for n in DECLARED), (limit, sizes)


def test_env_switch_and_empty_declaration_keep_lmdeploy_default(monkeypatch: pytest.MonkeyPatch) -> None:
    cache = _cache(8192, 4096)
    for runner in _runners((), cache):
        assert runner.get_prefill_warmup_token_sizes() == [], type(runner).__name__
    monkeypatch.setenv(warmup.PREFILL_WARMUP_ENV, "0")
    for runner in _runners(DECLARED, cache):
        assert runner.get_prefill_warmup_token_sizes() == [], type(runner).__name__
    monkeypatch.setenv(warmup.PREFILL_WARMUP_ENV, "1")
    for runner in _runners(DECLARED, cache):
        assert runner.get_prefill_warmup_token_sizes(), type(runner).__name__


def test_data_parallel_keeps_lmdeploy_default() -> None:
    """LMDeploy's sized prefill warm-up builds no dp metadata: under dp > 1 the runner asks for none."""
    from lmdeploy.pytorch.config import DistConfig
    from lmdeploy.pytorch.distributed import DistContext, get_dist_manager

    graph, _ = _runners(DECLARED, _cache(8192, 4096))
    assert graph.get_prefill_warmup_token_sizes()
    with get_dist_manager().context(DistContext(dist_config=DistConfig(dp=2, tp=2))):
        assert graph.get_prefill_warmup_token_sizes() == []


def test_sizes_logged_once_per_runner(caplog: pytest.LogCaptureFixture) -> None:
    graph, _ = _runners(DECLARED, _cache(8192, 4096))
    with caplog.at_level(logging.INFO, logger="dlinfer_lmdeploy"):
        first = graph.get_prefill_warmup_token_sizes()
        graph.get_prefill_warmup_token_sizes()
    lines = [r.getMessage() for r in caplog.records if "prefill warm-up" in r.getMessage()]
    assert len(lines) == 1, lines
    assert str(first) in lines[0] and warmup.PREFILL_WARMUP_ENV in lines[0], lines[0]
