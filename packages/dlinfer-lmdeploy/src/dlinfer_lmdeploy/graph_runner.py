"""Device-graph capture and replay of decode steps, with the plugin's device-graph class.

``eager_mode=False`` on a dlinfer device whose plugin declares ``Backend.graph`` builds this
runner. Decode steps of up to the largest capture size are padded to a capture bucket
(powers of two up to ``max_batch_size``, or ``cudagraph_capture_batch_sizes``), run from
fixed buffers and replayed; padding rows write nothing (slot ``-1``) and read one cached
position. Prefill steps, and anything else this runner does not know how to hold in fixed
buffers (input embeddings, extra model inputs), run eagerly.
"""

from __future__ import annotations

import inspect
import logging
from dataclasses import dataclass
from typing import Any

import torch
from dlinfer.plugin import Backend
from lmdeploy.pytorch.backends.graph_runner import GraphRunner

from dlinfer_lmdeploy.metadata import DlinferAttentionMetadata

logger = logging.getLogger("dlinfer_lmdeploy")

_GRAPH_INPUTS = frozenset({"input_ids", "position_ids", "past_key_values", "attn_metadata", "inputs_embeds"})


def _parameters(fn: Any) -> tuple[str, ...]:
    try:
        return tuple(inspect.signature(fn).parameters)
    except (TypeError, ValueError):
        return ()


def _first_tokens(output: Any, n: int, clone: bool = False) -> Any:
    """The rows of the real tokens of a padded forward output (a tensor ``[1, T, ...]`` or a dict of them)."""
    if isinstance(output, dict):
        return {k: _first_tokens(v, n, clone) for k, v in output.items()}
    if isinstance(output, torch.Tensor) and output.dim() >= 2:
        part = output[:, :n]
        return part.clone() if clone else part
    return output


@dataclass
class _Captured:
    batch: int
    input_ids: torch.Tensor
    position_ids: torch.Tensor
    meta: DlinferAttentionMetadata
    graph: Any = None
    output: torch.Tensor | None = None


class DlinferGraphRunner(GraphRunner):
    def __init__(
        self,
        model: torch.nn.Module,
        model_config: Any,
        cache_config: Any,
        backend_config: Any,
        device: Any,
        *,
        plugin: Backend,
        ops_backend: type,
    ) -> None:
        super().__init__(model, model_config, cache_config, backend_config, device)
        if plugin.graph is None:
            raise ValueError(f"dlinfer backend '{plugin.name}' declares no device graph")
        self.plugin = plugin
        self.graph_decl = plugin.graph
        self.pool = self.graph_decl.pool_factory() if self.graph_decl.pool_factory is not None else None
        self.captured: dict[int, _Captured] = {}
        self.capture_sizes = sorted(self.get_capture_batch_sizes())
        block_size = cache_config.kernel_block_size or cache_config.block_size
        max_pos = getattr(getattr(model_config, "hf_config", None), "max_position_embeddings", None)
        blocks = int(cache_config.num_gpu_blocks)
        if max_pos:
            blocks = min(blocks, -(-int(max_pos) // block_size))
        self.max_blocks = max(blocks, 1)
        self.block_size = block_size

    # -- selection ---------------------------------------------------------------------------
    def _bucket(self, batch: int) -> int | None:
        for size in self.capture_sizes:
            if size >= batch:
                return size
        return None

    def _graphable(self, kwargs: dict[str, Any]) -> int | None:
        meta = kwargs.get("attn_metadata")
        if not isinstance(meta, DlinferAttentionMetadata) or not meta.is_decoding:
            return None
        if kwargs.get("inputs_embeds") is not None or set(kwargs) - _GRAPH_INPUTS:
            return None
        context = self.ctx_mgr.current_context()
        if not context.global_is_decoding():
            return None
        batch = int(meta.block_offsets.shape[0])
        if int(kwargs["input_ids"].numel()) != batch or meta.block_offsets.shape[1] > self.max_blocks:
            return None
        return self._bucket(batch)

    def __call__(self, **kwargs: Any) -> Any:
        bucket = self._graphable(kwargs)
        if bucket is None:
            return self.model(**kwargs)
        entry = self.captured.get(bucket)
        if entry is None:
            return self._capture(bucket, kwargs)
        self._fill(entry, kwargs)
        if self.graph_decl.update_before_replay is not None:
            self.graph_decl.update_before_replay(entry.graph, self._host_args(entry))
        if getattr(entry.graph, "rerun_instead_of_replay", False):
            # Host-side stand-in graphs (tests on CPU): run the forward again from the fixed buffers.
            entry.output = self.model(**self._graph_kwargs(entry, kwargs))
        else:
            entry.graph.replay()
        assert entry.output is not None
        return _first_tokens(entry.output, kwargs["input_ids"].shape[-1])

    # -- buffers -----------------------------------------------------------------------------
    def _new_entry(self, bucket: int, like: DlinferAttentionMetadata, input_ids: torch.Tensor) -> _Captured:
        device = input_ids.device
        i32 = dict(dtype=torch.int32, device=device)
        meta = DlinferAttentionMetadata(
            is_decoding=True,
            block_offsets=torch.zeros(bucket, self.max_blocks, **i32),
            q_start_loc=torch.arange(bucket, dtype=torch.long, device=device),
            q_seqlens=torch.ones(bucket, dtype=torch.long, device=device),
            kv_seqlens=torch.ones(bucket, **i32),
            cu_seqlens_q=torch.arange(bucket + 1, **i32),
            quant_policy=like.quant_policy,
            slot_mapping=torch.full((bucket,), -1, dtype=self.plugin.slot_dtype, device=device),
            max_q_seqlen=1,
            max_kv_seqlen=self.max_blocks * like.block_size,
            block_size=like.block_size,
            kv_layout=like.kv_layout,
            prefill_no_cache=False,
        )
        if self.plugin.host_seqlens:
            meta.cu_seqlens_q_cpu = torch.arange(bucket + 1, dtype=torch.int32)
            meta.seqlens_kv_cpu = torch.ones(bucket, dtype=torch.int32)
        return _Captured(
            batch=bucket,
            input_ids=torch.zeros(1, bucket, dtype=input_ids.dtype, device=device),
            position_ids=torch.zeros(1, bucket, dtype=torch.long, device=device),
            meta=meta,
        )

    def _fill(self, entry: _Captured, kwargs: dict[str, Any]) -> None:
        src: DlinferAttentionMetadata = kwargs["attn_metadata"]
        dst = entry.meta
        b = int(src.block_offsets.shape[0])
        width = int(src.block_offsets.shape[1])
        entry.input_ids[:, :b].copy_(kwargs["input_ids"].view(1, -1))
        entry.input_ids[:, b:].zero_()
        entry.position_ids[:, :b].copy_(kwargs["position_ids"].view(1, -1))
        entry.position_ids[:, b:].zero_()
        dst.block_offsets[:b, :width].copy_(src.block_offsets)
        dst.kv_seqlens[:b].copy_(src.kv_seqlens)
        dst.kv_seqlens[b:].fill_(1)  # padding rows read one cached position of whatever block they hold
        dst.slot_mapping[:b].copy_(src.slot_mapping)
        dst.slot_mapping[b:].fill_(-1)  # and write nothing
        if dst.seqlens_kv_cpu is not None:
            host = src.seqlens_kv_cpu if src.seqlens_kv_cpu is not None else src.kv_seqlens.cpu()
            dst.seqlens_kv_cpu[:b].copy_(host)
            dst.seqlens_kv_cpu[b:].fill_(1)
        context = self.ctx_mgr.current_context()
        context.attn_metadata = dst
        context.q_seqlens = dst.q_seqlens
        context.kv_seqlens = dst.kv_seqlens
        context.q_start_loc = dst.q_start_loc
        context.block_offsets = dst.block_offsets

    def _host_args(self, entry: _Captured) -> dict[str, Any]:
        return {
            "seqlens_kv_cpu": entry.meta.seqlens_kv_cpu,
            "cu_seqlens_q_cpu": entry.meta.cu_seqlens_q_cpu,
            "batch_size": entry.batch,
        }

    def _graph_kwargs(self, entry: _Captured, kwargs: dict[str, Any]) -> dict[str, Any]:
        return dict(
            input_ids=entry.input_ids,
            position_ids=entry.position_ids,
            past_key_values=kwargs["past_key_values"],
            attn_metadata=entry.meta,
            inputs_embeds=None,
        )

    # -- capture -----------------------------------------------------------------------------
    def _capture(self, bucket: int, kwargs: dict[str, Any]) -> Any:
        entry = self._new_entry(bucket, kwargs["attn_metadata"], kwargs["input_ids"])
        self._fill(entry, kwargs)
        graph_kwargs = self._graph_kwargs(entry, kwargs)
        warmup = self.model(**graph_kwargs)  # also the result of this step
        result = _first_tokens(warmup, kwargs["input_ids"].shape[-1], clone=True)
        graph = self.graph_decl.graph_factory()
        capture_kwargs: dict[str, Any] = {}
        if self.pool is not None:
            capture_kwargs["pool"] = self.pool
        if "capture_error_mode" in _parameters(self.graph_decl.capture):
            # LMDeploy copies inputs from other threads while a graph may be captured.
            capture_kwargs["capture_error_mode"] = "thread_local"
        with self.graph_decl.capture(graph, **capture_kwargs):
            entry.output = self.model(**graph_kwargs)
        entry.graph = graph
        self.captured[bucket] = entry
        logger.info("captured a %s decode graph for batch %d", self.plugin.name, bucket)
        return result

    def reset(self) -> None:
        super().reset()
        self.captured.clear()
