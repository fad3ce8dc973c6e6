"""Device-graph capture and replay of decode steps, with the plugin's device-graph class.

``eager_mode=False`` on a dlinfer device whose plugin declares ``Backend.graph`` builds this
runner. Decode steps of up to the largest capture size are padded to a capture bucket
(powers of two up to ``max_batch_size``, or ``cudagraph_capture_batch_sizes``), run from
fixed buffers and replayed; padding rows write nothing (slot ``-1``) and read one cached
position.

What a captured decode step holds (as LMDeploy's ``CudaGraphMixin`` does for its CUDA graphs):

- ``input_ids``, ``position_ids`` ``[1, bucket]`` and the attention metadata: fixed buffers, refilled before
  every replay from LMDeploy's tensors of the step (the step's metadata stays unfinished) by the plugin's
  ``DeviceGraph.fill_decode_inputs`` (one launch) or ``dlinfer.graph_inputs.fill_decode_inputs`` (torch ops);
- decode-shaped extra tensors: ``mrope_position_ids [3, bucket]`` (Qwen2-VL family) and
  ``inputs_embeds [1, bucket, hidden]``, fixed buffers copied like ``position_ids`` (padding
  zeroed); their dtype and non-token dimensions are part of the capture key;
- extra keyword arguments that are ``None`` (every VLM's ``pixel_values``, ``image_mask``,
  ``vis_cu_seqlens``, ``images``, ``lang_ids`` ... in decode) or immutable constants
  (``bool/int/float/str/bytes``, dtypes, devices: e.g. InternVL's ``image_token_id``): part of the
  capture key, so a step whose values differ never replays a graph captured with others;
- InternVL's ``context=`` (the step context itself): passed through.

Anything else makes the step run eagerly, **counted and reported**: a one-time warning per
reason names it, and the counters below record it. Decode reasons: ``kwarg <name>`` (a tensor or
object the runner cannot hold, or an extra tensor that is not decode-shaped), ``batch size``
(above the largest capture size), ``block table`` (wider than the captured one),
``tokens per sequence`` (more than one, e.g. speculative decoding), ``rank not decoding`` (another
data-parallel rank prefills), ``model`` (no LMDeploy ``CudaGraphMixin``, or its
``support_cuda_graph`` declined), ``attn_metadata``. Prefill runs eagerly by design and is counted
under :data:`PREFILL`, apart from decode fallbacks.

Counting API (for tests; the GPU tests assert "no eager decode step in graph mode"):

- ``runner.eager_steps: Counter[str]`` (reason -> steps run eagerly, including ``"prefill"``),
  ``runner.graphed_steps: int`` (decode steps captured or replayed), ``runner.eager_decode_steps``;
- :func:`live_runners` -> the graph runners of this process's live engines;
- :func:`step_counts` -> a :class:`StepCounts` copy of this process's totals over all runners;
- ``with counting() as counts: ...`` -> the :class:`StepCounts` of the steps run inside the block
  (filled when it exits). A graph-mode test::

      with graph_runner.counting() as steps, runner.open_pipeline(path, cfg) as pipe:
          ...  # generate
      assert steps.graphed > 0 and steps.eager_decode == 0, dict(steps.eager)

  (``eager_mode=True`` builds LMDeploy's plain runner, with only the prefill warm-up sizes added: nothing is
  counted, ``steps.graphed == 0``.)

Counts are per process: with ``tp > 1`` the engines run in worker processes and their counts are
not visible to the caller.

Compiled decode (off by default): ``DLINFER_COMPILE_DECODE=1`` makes the graphed decode steps (warm-up,
capture and host re-runs) call ``torch.compile(model, backend="dlinfer", dynamic=False)`` instead of the
model, inside the device-graph capture, as LMDeploy's ``LMDEPLOY_ENABLE_DECODE_TORCH_COMPILE`` does for its
CUDA graphs: dlinfer's FX passes, the plugin's lowering table and ``Backend.compile_backend`` (maca:
Inductor; ascend: torchair) then shape the captured kernels. Prefill and eager fallbacks run the model as is.

Prefill warm-up: ``get_prefill_warmup_token_sizes`` returns the plugin's declared
``FrameworkSettings.prefill_warmup_tokens``, capped to this engine, plus ``max_batches`` (``warmup.py``;
``DLINFER_PREFILL_WARMUP=0`` turns it off), so kernels that compile per row-count bucket do so at engine start.
"""

from __future__ import annotations

import inspect
import logging
import os
import weakref
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import torch
from dlinfer.graph_inputs import DecodeBuffers
from dlinfer.graph_inputs import fill_decode_inputs as fill_with_torch_ops
from dlinfer.plugin import Backend
from lmdeploy.pytorch.backends.graph_runner import GraphRunner

from dlinfer_lmdeploy.metadata import DlinferAttentionMetadata, finish_step_metadata, step_metadata
from dlinfer_lmdeploy.warmup import PrefillWarmup

logger = logging.getLogger("dlinfer_lmdeploy")

PREFILL = "prefill"
"""The eager-step reason of prefill steps (eager by design, not a fallback)."""

_IDS = ("input_ids", "position_ids")
_FRAME = frozenset({"input_ids", "position_ids", "past_key_values", "attn_metadata"})
_TOKEN_AXIS: dict[str, int] = {"mrope_position_ids": 1, "inputs_embeds": 1}
"""Decode-shaped extra inputs held in fixed buffers: name -> token axis."""
_CONSTANT_TYPES = (bool, int, float, str, bytes, torch.dtype, torch.device)
COMPILE_DECODE_ENV = "DLINFER_COMPILE_DECODE"
"""``1``: graphed decode steps run ``torch.compile(model, backend="dlinfer")`` (off by default)."""


def compile_decode_enabled() -> bool:
    """Whether ``DLINFER_COMPILE_DECODE`` asks for the compiled decode forward."""
    return os.environ.get(COMPILE_DECODE_ENV, "0").strip().lower() in ("1", "true", "yes", "on")


@dataclass
class StepCounts:
    """Forward steps of graph runners: decode steps graphed, and steps run eagerly by reason."""

    graphed: int = 0
    eager: Counter[str] = field(default_factory=Counter)

    @property
    def prefill(self) -> int:
        return self.eager[PREFILL]

    @property
    def eager_decode(self) -> int:
        """Decode (non-prefill) steps that ran eagerly in graph mode."""
        return sum(n for reason, n in self.eager.items() if reason != PREFILL)

    def copy(self) -> StepCounts:
        return StepCounts(self.graphed, Counter(self.eager))

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"graphed", "eager_decode", "eager": {reason: steps}}`` (benchmark records)."""
        return {"graphed": self.graphed, "eager_decode": self.eager_decode, "eager": dict(self.eager)}

    def since(self, before: StepCounts) -> StepCounts:
        eager = Counter(self.eager)
        eager.subtract(before.eager)
        return StepCounts(self.graphed - before.graphed, +eager)


_TOTALS = StepCounts()
_RUNNERS: weakref.WeakSet[DlinferGraphRunner] = weakref.WeakSet()


def step_counts() -> StepCounts:
    """A copy of this process's step counts over every graph runner built so far."""
    return _TOTALS.copy()


@contextmanager
def counting() -> Iterator[StepCounts]:
    """``with counting() as c:`` -> ``c`` holds the steps run inside the block once it exits."""
    before = _TOTALS.copy()
    result = StepCounts()
    try:
        yield result
    finally:
        delta = _TOTALS.since(before)
        result.graphed, result.eager = delta.graphed, delta.eager


def live_runners() -> list[DlinferGraphRunner]:
    """The graph runners of this process's live engines."""
    return list(_RUNNERS)


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


def _overrides(model: torch.nn.Module, name: str) -> bool:
    """True when the model defines ``name`` itself rather than inheriting LMDeploy's CudaGraphMixin default."""
    from lmdeploy.pytorch.models.utils.cudagraph import CudaGraphMixin

    mine = getattr(type(model), name, None)
    return mine is not None and mine is not getattr(CudaGraphMixin, name, None)


@dataclass
class _Captured:
    batch: int
    buffers: dict[str, torch.Tensor]
    """input_ids, position_ids and the decode-shaped extras: fixed ``bucket``-token buffers."""
    meta: DlinferAttentionMetadata
    kwargs: dict[str, Any]
    """The forward's keyword arguments: the buffers, the metadata, constants (incl. None)."""
    decode: DecodeBuffers
    """1-d views of the token and position buffers, and the metadata's table, KV lengths and slots."""
    graph: Any = None
    output: torch.Tensor | None = None


class DlinferGraphRunner(PrefillWarmup, GraphRunner):
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
        from lmdeploy.pytorch.models.utils.cudagraph import CudaGraphMixin

        self.plugin = plugin
        self.graph_decl = plugin.graph
        self.pool = self.graph_decl.pool_factory() if self.graph_decl.pool_factory is not None else None
        self.captured: dict[tuple[Any, ...], _Captured] = {}
        self.capture_sizes = sorted(self.get_capture_batch_sizes())
        block_size = cache_config.kernel_block_size or cache_config.block_size
        # Captured block-table width: first enough for max_position_embeddings, grown (graphs re-captured) when a
        # sequence runs past it, up to every block of the cache (LMDeploy's CUDA graphs always hold them all).
        # Not all at once: a plugin may read per-step tensors as wide as the table (Ascend's windowed decode mask).
        self.block_limit = max(int(cache_config.num_gpu_blocks), 1)
        max_pos = getattr(getattr(model_config, "hf_config", None), "max_position_embeddings", None)
        self.max_blocks = min(self.block_limit, -(-int(max_pos) // block_size)) if max_pos else self.block_limit
        self.block_size = block_size
        # LMDeploy graphs only models with its CUDA-graph mixin; a model may decline per step.
        self._mixin = isinstance(model, CudaGraphMixin)
        self._support = model.support_cuda_graph if self._mixin and _overrides(model, "support_cuda_graph") else None
        self._extra_key = (
            model.get_cudagraph_extra_key if self._mixin and _overrides(model, "get_cudagraph_extra_key") else None
        )
        self.eager_steps: Counter[str] = Counter()
        self.graphed_steps = 0
        self.table_growths = 0
        """Times the captured block table was widened (its graphs re-captured)."""
        self._warned: set[str] = set()
        self.decode_forward: Any = self.model
        """What graphed decode steps call: the model, or its ``torch.compile(backend="dlinfer")``."""
        if compile_decode_enabled():
            from dlinfer.compile import dlinfer_backend  # the callable, not the name: the torch_dynamo_backends
            # entry point exists only in an installed dlinfer-core, not in a PYTHONPATH checkout (seen on the H200)

            self.decode_forward = torch.compile(self.model, backend=dlinfer_backend, fullgraph=False, dynamic=False)
        _RUNNERS.add(self)

    @property
    def eager_decode_steps(self) -> int:
        """Decode steps this runner ran eagerly (fallbacks; prefill excluded)."""
        return sum(n for reason, n in self.eager_steps.items() if reason != PREFILL)

    # -- selection ---------------------------------------------------------------------------
    def _bucket(self, batch: int) -> int | None:
        for size in self.capture_sizes:
            if size >= batch:
                return size
        return None

    def _plan(self, kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], None] | tuple[None, tuple[str, str]]:
        """``(capture key, None)`` for a step this runner graphs, else ``(None, (reason, detail))``."""
        meta = kwargs.get("attn_metadata")
        if not isinstance(meta, DlinferAttentionMetadata):
            return None, ("attn_metadata", f"attn_metadata is {type(meta).__name__}, not DlinferAttentionMetadata")
        if not meta.is_decoding:
            return None, (PREFILL, "")
        if not self._mixin:
            return None, ("model", f"{type(self.model).__name__} has no LMDeploy CudaGraphMixin")
        if not self.ctx_mgr.current_context().global_is_decoding():
            return None, ("rank not decoding", "another rank runs a prefill in this step")
        batch = int(meta.block_offsets.shape[0])
        tokens = int(kwargs["input_ids"].numel())
        if tokens != batch:
            return None, ("tokens per sequence", f"{tokens} tokens for {batch} sequences (expected one each)")
        if meta.block_offsets.shape[1] > self.max_blocks:
            return None, (
                "block table",
                f"block table of {meta.block_offsets.shape[1]} blocks, captured graphs hold {self.max_blocks}",
            )
        bucket = self._bucket(batch)
        if bucket is None:
            return None, ("batch size", f"batch {batch} above the largest capture size {self.capture_sizes[-1]}")
        signature: list[tuple[Any, ...]] = []
        extras: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in _FRAME:
                continue
            if value is None or isinstance(value, _CONSTANT_TYPES):
                signature.append((name, value))
            elif name in _TOKEN_AXIS and isinstance(value, torch.Tensor):
                axis = _TOKEN_AXIS[name]
                if value.dim() <= axis or value.shape[axis] != tokens:
                    return None, (
                        f"kwarg {name}",
                        f"{name} of shape {tuple(value.shape)}: expected {tokens} tokens on axis {axis}",
                    )
                signature.append((name, value.dtype, value.shape[:axis], value.shape[axis + 1 :]))
            elif name == "context" and value is self.ctx_mgr.current_context():
                signature.append((name,))
            else:
                return None, (f"kwarg {name}", f"{name} = {type(value).__name__} cannot be held in a graph")
            if self._extra_key is not None:
                extras[name] = value
        if self._support is not None and not self._support(**kwargs):
            return None, ("model", f"{type(self.model).__name__}.support_cuda_graph() declined the step")
        key: tuple[Any, ...] = (bucket, tuple(signature))
        if self._extra_key is not None:
            key += tuple(self._extra_key(**extras))
        return key, None

    def _eager(self, reason: str, detail: str, kwargs: dict[str, Any]) -> Any:
        finish_step_metadata(kwargs)
        self.eager_steps[reason] += 1
        _TOTALS.eager[reason] += 1
        if reason != PREFILL and reason not in self._warned:
            self._warned.add(reason)
            logger.warning(
                "%s graph mode: a decode step runs eagerly (%s); later steps for the same reason are only "
                "counted (dlinfer_lmdeploy.graph_runner.step_counts())",
                self.plugin.name,
                detail,
            )
        return self.model(**kwargs)

    def _grow_table(self, kwargs: dict[str, Any]) -> None:
        """Widen the captured block table (and drop the graphs captured for the narrower one) when this decode
        step's table is wider, up to the whole cache: the next power of two of blocks, so it happens a few times."""
        meta = kwargs.get("attn_metadata")
        if not isinstance(meta, DlinferAttentionMetadata) or not meta.is_decoding:
            return
        width = int(meta.block_offsets.shape[1])
        if self.max_blocks < width <= self.block_limit:
            grown = min(self.block_limit, 1 << (width - 1).bit_length())
            logger.info("%s graph mode: block table of %d blocks; decode graphs re-captured for %d (was %d)",
                        self.plugin.name, width, grown, self.max_blocks)
            self.max_blocks = grown
            self.captured.clear()
            self.table_growths += 1

    def __call__(self, **kwargs: Any) -> Any:
        self._grow_table(kwargs)
        key, why = self._plan(kwargs)
        if key is None:
            assert why is not None
            return self._eager(*why, kwargs)
        self.graphed_steps += 1
        _TOTALS.graphed += 1
        entry = self.captured.get(key)
        if entry is None:
            return self._capture(key, kwargs)
        self._fill(entry, kwargs)
        if self.graph_decl.update_before_replay is not None:
            self.graph_decl.update_before_replay(entry.graph, self._host_args(entry))
        if getattr(entry.graph, "rerun_instead_of_replay", False):
            # Host-side stand-in graphs (tests on CPU): run the forward again from the fixed buffers.
            entry.output = self.decode_forward(**self._live_kwargs(entry, kwargs))
        else:
            entry.graph.replay()
        assert entry.output is not None
        return _first_tokens(entry.output, kwargs["input_ids"].shape[-1])

    # -- buffers -----------------------------------------------------------------------------
    def _new_entry(self, bucket: int, kwargs: dict[str, Any]) -> _Captured:
        like: DlinferAttentionMetadata = kwargs["attn_metadata"]
        input_ids: torch.Tensor = kwargs["input_ids"]
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
        if self.plugin.prepare_metadata is not None:  # a plan over the fixed buffers, refreshed by _fill
            meta.plan = self.plugin.prepare_metadata(step_metadata(meta))
        buffers = {
            "input_ids": torch.zeros(1, bucket, dtype=input_ids.dtype, device=device),
            "position_ids": torch.zeros(1, bucket, dtype=torch.long, device=device),
        }
        forward_kwargs: dict[str, Any] = {}
        for name, value in kwargs.items():
            if name in _FRAME:
                continue
            if isinstance(value, torch.Tensor):  # a decode-shaped extra (checked by _plan)
                shape = list(value.shape)
                shape[_TOKEN_AXIS[name]] = bucket
                buffers[name] = value.new_zeros(shape)
            else:  # None, a constant, or the step context
                forward_kwargs[name] = value
        forward_kwargs.update(buffers, past_key_values=kwargs["past_key_values"], attn_metadata=meta)
        decode = DecodeBuffers(input_ids=buffers["input_ids"][0], position_ids=buffers["position_ids"][0],
                               block_table=meta.block_offsets, seqlens_kv=meta.kv_seqlens, slots=meta.slot_mapping)
        return _Captured(batch=bucket, buffers=buffers, meta=meta, kwargs=forward_kwargs, decode=decode)

    def _fill(self, entry: _Captured, kwargs: dict[str, Any]) -> None:
        src: DlinferAttentionMetadata = kwargs["attn_metadata"]  # unfinished (build defers): LMDeploy's tensors
        dst = entry.meta
        b = int(src.block_offsets.shape[0])
        padded = b < entry.batch  # a full bucket (batch 1 in bucket 1) dispatches no padding ops: host time per step
        # tokens, positions, block table, KV lengths and slots (padding: slot -1, one cached position):
        # one launch where the plugin declares a kernel for it
        fill = self.graph_decl.fill_decode_inputs or fill_with_torch_ops
        fill(kwargs["input_ids"], kwargs["position_ids"], src.block_offsets, src.kv_seqlens, entry.decode,
             block_size=dst.block_size, pad=padded)
        for name, buf in entry.buffers.items():
            if name in _IDS:
                continue
            axis = _TOKEN_AXIS[name]
            buf.narrow(axis, 0, b).copy_(kwargs[name])
            if padded:
                buf.narrow(axis, b, entry.batch - b).zero_()
        if dst.seqlens_kv_cpu is not None:
            host = src.seqlens_kv_cpu if src.seqlens_kv_cpu is not None else src.kv_seqlens.cpu()
            dst.seqlens_kv_cpu[:b].copy_(host)
            if padded:
                dst.seqlens_kv_cpu[b:].fill_(1)
        refresh = getattr(dst.plan, "refresh", None)
        if refresh is not None:  # rebuild the plan over the refilled buffers, in place (Backend.prepare_metadata)
            refresh()
        context = self.ctx_mgr.current_context()
        context.attn_metadata = dst
        context.q_seqlens = dst.q_seqlens
        context.kv_seqlens = dst.kv_seqlens
        context.q_start_loc = dst.q_start_loc
        context.block_offsets = dst.block_offsets
        mrope = entry.buffers.get("mrope_position_ids")
        if mrope is not None:
            context.mrope_position_ids = mrope

    def _host_args(self, entry: _Captured) -> dict[str, Any]:
        return {
            "seqlens_kv_cpu": entry.meta.seqlens_kv_cpu,
            "cu_seqlens_q_cpu": entry.meta.cu_seqlens_q_cpu,
            "batch_size": entry.batch,
        }

    def _live_kwargs(self, entry: _Captured, kwargs: dict[str, Any]) -> dict[str, Any]:
        """The captured forward's arguments with this step's cache and step context (host re-runs)."""
        live = dict(entry.kwargs, past_key_values=kwargs["past_key_values"])
        if "context" in live:
            live["context"] = kwargs["context"]
        return live

    # -- capture -----------------------------------------------------------------------------
    def _capture(self, key: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        bucket = int(key[0])
        entry = self._new_entry(bucket, kwargs)
        self._fill(entry, kwargs)
        warmup = self.decode_forward(**entry.kwargs)  # also the result of this step
        result = _first_tokens(warmup, kwargs["input_ids"].shape[-1], clone=True)
        graph = self.graph_decl.graph_factory()
        capture_kwargs: dict[str, Any] = {}
        if self.pool is not None:
            capture_kwargs["pool"] = self.pool
        if "capture_error_mode" in _parameters(self.graph_decl.capture):
            # LMDeploy copies inputs from other threads while a graph may be captured.
            capture_kwargs["capture_error_mode"] = "thread_local"
        with self.graph_decl.capture(graph, **capture_kwargs):
            entry.output = self.decode_forward(**entry.kwargs)
        entry.graph = graph
        self.captured[key] = entry
        extras = sorted(name for name in entry.buffers if name not in _IDS)
        logger.info(
            "captured a %s decode graph for batch %d%s",
            self.plugin.name,
            bucket,
            f" (with {', '.join(extras)})" if extras else "",
        )
        return result

    def reset(self) -> None:
        super().reset()
        self.captured.clear()
