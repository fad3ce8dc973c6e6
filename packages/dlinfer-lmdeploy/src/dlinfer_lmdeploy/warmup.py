"""Prefill warm-up: the single-sequence prefills LMDeploy's engine warm-up runs before serving.

A plugin whose kernels compile a new variant the first time a prefill crosses one of their row-count buckets
declares one token count per bucket (``FrameworkSettings.prefill_warmup_tokens``; maca: the ends of its GEMM config
buckets and the norm row switch). LMDeploy 0.18's ``ModelAgent.warmup`` then runs one single-sequence prefill per
size returned by the graph runner's ``get_prefill_warmup_token_sizes()`` (instead of its one prefill of
``max_batches`` one-token sequences), so the compiles happen at engine start, not inside the first long request.

The sizes are capped to what one prefill step of this engine can hold: ``cache_config.max_prefill_token_num``
(LMDeploy chunks longer prompts, and reserved runtime memory for that many tokens) and the whole KV cache
(``num_gpu_blocks * block_size``); a size above the cap is clamped to it (the bucket it stood for is reached
there, if at all). ``max_batches`` is always added, so LMDeploy's own prefill warm-up size is kept. The session
length is not visible to a graph runner and is not applied. ``DLINFER_PREFILL_WARMUP=0`` turns it off (LMDeploy's
default warm-up); so does data parallelism (LMDeploy's sized warm-up builds no dp metadata).
"""

from __future__ import annotations

import logging
import os
from typing import Any

from dlinfer.plugin import Backend
from lmdeploy.pytorch.backends.graph_runner import GraphRunner

from dlinfer_lmdeploy.metadata import finish_step_metadata

logger = logging.getLogger("dlinfer_lmdeploy")

PREFILL_WARMUP_ENV = "DLINFER_PREFILL_WARMUP"
"""``0``: no dlinfer prefill warm-up sizes (LMDeploy's default warm-up); on by default."""


def prefill_warmup_enabled() -> bool:
    """Whether ``DLINFER_PREFILL_WARMUP`` leaves the plugin's prefill warm-up on (the default)."""
    return os.environ.get(PREFILL_WARMUP_ENV, "1").strip().lower() not in ("0", "false", "no", "off")


def prefill_token_limit(cache_config: Any) -> int:
    """The most tokens one sequence's prefill step holds: ``max_prefill_token_num`` and the whole KV cache."""
    limits = [int(cache_config.max_prefill_token_num)]
    blocks = int(getattr(cache_config, "num_gpu_blocks", 0) or 0)
    if blocks > 0:
        limits.append(blocks * int(cache_config.block_size))
    return max(1, min(limits))


def _data_parallel() -> int:
    from lmdeploy.pytorch.distributed import get_dist_manager

    config = get_dist_manager().current_config()
    return int(getattr(config, "dp", 1) or 1)


def prefill_warmup_sizes(plugin: Backend, cache_config: Any) -> list[int]:
    """Ascending token counts for LMDeploy's ``get_prefill_warmup_token_sizes``: the plugin's declared sizes
    capped by :func:`prefill_token_limit`, plus ``max_batches``; ``[]`` (LMDeploy's default warm-up) when the
    plugin declares none, ``DLINFER_PREFILL_WARMUP=0`` or data parallelism."""
    declared = plugin.framework.prefill_warmup_tokens
    if not declared or not prefill_warmup_enabled() or _data_parallel() > 1:
        return []
    limit = prefill_token_limit(cache_config)
    return sorted({min(int(n), limit) for n in (*declared, cache_config.max_batches)})


class PrefillWarmup:
    """Graph-runner mixin: ``get_prefill_warmup_token_sizes`` from the plugin (``self.plugin``), logged once."""

    plugin: Backend
    cache_config: Any
    _warmup_logged = False

    def get_prefill_warmup_token_sizes(self) -> list[int]:
        sizes = prefill_warmup_sizes(self.plugin, self.cache_config)
        if sizes and not self._warmup_logged:
            self._warmup_logged = True
            logger.info("%s prefill warm-up: one sequence of each of %s tokens (%s=0 turns it off)",
                        self.plugin.name, sizes, PREFILL_WARMUP_ENV)
        return sizes


class DlinferEagerRunner(PrefillWarmup, GraphRunner):
    """LMDeploy's plain runner (``eager_mode=True``, or a plugin without a device graph) with the plugin's prefill
    warm-up sizes."""

    def __init__(self, model: Any, model_config: Any, cache_config: Any, backend_config: Any, device: Any, *,
                 plugin: Backend) -> None:
        super().__init__(model, model_config, cache_config, backend_config, device)
        self.plugin = plugin

    def __call__(self, **kwargs: Any) -> Any:
        finish_step_metadata(kwargs)
        return self.model(**kwargs)

