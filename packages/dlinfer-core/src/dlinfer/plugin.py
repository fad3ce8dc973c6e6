"""The plugin contract: what a backend distribution declares (dlinfer-core README, "Writing a backend plugin").

A distribution registers a module (or object) under the entry-point group
``dlinfer.backends``; it implements the :func:`dlinfer_backend` hook and returns a
:class:`Backend`. Declaring must be cheap: no vendor import, no device init. Vendor
modules are imported only by ``load_ops`` and ``activate``, at activation time.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import pluggy
import torch

if TYPE_CHECKING:
    from dlinfer.lowering import Lowering

PROJECT = "dlinfer"
ENTRY_POINT_GROUP = "dlinfer.backends"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@dataclass(frozen=True)
class DeviceGraph:
    """How a backend captures and replays device graphs (CUDA Graph, NPUGraph, MLUGraph).

    ``graph_factory`` builds one graph object; ``capture`` is a context manager factory
    ``capture(graph, pool=None, stream=None)`` (the ``torch.cuda.graph`` protocol);
    ``update_before_replay`` is called with the step's host-side arguments
    (e.g. ``seqlens_kv_cpu``) before each replay, for kernels whose host arguments are
    baked into the captured graph; ``None`` when nothing needs updating. ``fill_decode_inputs`` refills a
    captured decode step's fixed buffers before each replay with the contract (and signature) of
    :func:`dlinfer.graph_inputs.fill_decode_inputs`, in fewer launches; ``None``: that function's torch ops.
    """

    graph_factory: Callable[[], Any]
    capture: Callable[..., Any]
    pool_factory: Callable[[], Any] | None = None
    update_before_replay: Callable[[Any, Mapping[str, Any]], None] | None = None
    fill_decode_inputs: Callable[..., None] | None = None


@dataclass(frozen=True)
class StepMetadata:
    """One forward step's batch metadata, given once per step to ``Backend.prepare_metadata``.

    The tensors are the ones the step's attention calls receive (device, int32): ``cu_seqlens_q`` [B+1],
    ``seqlens_kv`` [B], ``block_table`` [B, MB]; the host mirrors are given when the backend declared
    ``host_seqlens``. ``decode``: one new token per sequence (``paged_decode_attention``). Per-layer settings
    (``window``, ``causal``, the scale) are not known here: a plan builds what depends on them lazily, once per
    distinct value.
    """

    cu_seqlens_q: torch.Tensor
    seqlens_kv: torch.Tensor
    block_table: torch.Tensor
    max_seqlen_q: int
    max_seqlen_kv: int
    block_size: int
    decode: bool
    cu_seqlens_q_cpu: torch.Tensor | None = None
    seqlens_kv_cpu: torch.Tensor | None = None


@dataclass(frozen=True)
class Capabilities:
    """What a backend's attention kernels serve, typed, so that a framework adaptor can refuse a model when its
    engine is built (not at the first request) and ``dlinfer info`` can show it.

    The defaults describe the reference backend: every spec option, any head size. A backend declares only what
    it restricts. ``mla`` is off by default: it is a claim the conformance kit checks (its MLA cases run only for
    backends that declare it). Features the spec v1 has no argument for (KV-cache quantisation, MoE expert
    biases, group-limited routing, attention sinks) are refused by the adaptor for every backend.
    """

    head_size_multiple: int = 1
    """Paged-attention head sizes (D and Dv) must be multiples of this (Ascend FIA: 16); unpaged attention
    (``prefill_attention`` alone, e.g. vision towers) is bound only by ``max_head_size``."""
    max_head_size: int | None = None
    """Largest attention head size served (D and Dv); ``None``: no limit."""
    softcap: bool = True
    """Logit soft-capping (Gemma-2's ``attn_logit_softcapping``)."""
    alibi: bool = True
    """ALiBi slopes (causal attention)."""
    window: bool = True
    """Sliding-window attention (spec ``window``: a query sees its W most recent keys)."""
    mla: bool = False
    """Multi-head latent attention: paged attention with Dv < D whose value cache is a strided view of the key
    cache (DeepSeek-V2/V3, Kimi-K2: D=576, Dv=512)."""

    def attention_refusals(self, head_size: int, v_head_size: int | None = None, *, paged: bool = True,
                           softcap: bool = False, alibi: bool = False, window: bool = False,
                           mla: bool = False) -> list[str]:
        """The features of one attention layer this backend does not serve, each as ``"feature (why)"``;
        ``paged=False``: a layer that calls only ``prefill_attention`` (no KV cache)."""
        out = []
        dv = head_size if v_head_size is None else v_head_size
        sizes = sorted({head_size, dv})
        if self.max_head_size is not None and max(sizes) > self.max_head_size:
            out.append(f"head size {'/'.join(map(str, sizes))} (at most {self.max_head_size})")
        if paged and self.head_size_multiple > 1 and any(s % self.head_size_multiple for s in sizes):
            out.append(f"head size {'/'.join(map(str, sizes))} (a multiple of {self.head_size_multiple} is needed)")
        for wanted, served, name in ((softcap, self.softcap, "logit softcap"), (alibi, self.alibi, "ALiBi"),
                                     (window, self.window, "sliding window"), (mla, self.mla, "MLA")):
            if wanted and not served:
                out.append(name)
        return out

    def summary(self) -> str:
        """One line for ``dlinfer info``."""
        head = f"paged head%{self.head_size_multiple}" if self.head_size_multiple > 1 else "any head"
        if self.max_head_size is not None:
            head += f"<={self.max_head_size}"
        flags = [name for name in ("softcap", "alibi", "window", "mla") if getattr(self, name)]
        return f"{head}; " + (", ".join(flags) if flags else "no softcap/alibi/window/mla")


@dataclass(frozen=True)
class FrameworkSettings:
    """Typed settings a framework adaptor reads from a backend (``Backend.framework``); ``None`` keeps the
    adaptor's default."""

    lmdeploy_device: str | None = None
    """LMDeploy device name (``device_type=`` of an engine); default: ``"cpu"`` for the reference backend, the
    backend name otherwise."""
    ray_resource: str | None = None
    """Ray resource one tensor-parallel worker takes (a unit of it) under LMDeploy's ray executor; default:
    LMDeploy's own name for maca/ascend/camb (GPU/NPU/MLU), ``GPU`` for a torch ``cuda`` device, a host resource
    for host devices."""
    prefill_warmup_tokens: tuple[int, ...] = ()
    """Token counts of single-sequence prefills a framework's warm-up runs before serving, so that the backend's
    kernels compile the variants they pick by row count (config buckets, warp switches) then, not inside the
    first long request; the adaptor caps them to what its engine can prefill in one step. Empty: the
    framework's default warm-up only."""

    def __post_init__(self) -> None:
        sizes = self.prefill_warmup_tokens
        if not isinstance(sizes, tuple) or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
            raise ValueError(f"FrameworkSettings.prefill_warmup_tokens must be a tuple of positive ints, got {sizes!r}")


@dataclass(frozen=True)
class Backend:
    """A backend's declaration. All callables are invoked lazily, never at declaration."""

    name: str
    device_type: str
    api_version: str
    """PEP 440 specifier of the dlinfer-core API versions it supports, e.g. ``">=1.0,<2"``."""
    is_available: Callable[[], bool]
    load_ops: Callable[[], Mapping[str, Callable[..., Any]]]
    kv_layout: Literal["NHD", "HND"] = "NHD"
    block_sizes: tuple[int, ...] | None = None
    """Block sizes the paged-attention kernels accept; ``None`` means any."""
    host_seqlens: bool = False
    """True: the framework adaptor passes ``seqlens_kv_cpu`` / ``cu_seqlens_q_cpu`` host mirrors."""
    slot_dtype: torch.dtype = torch.int64
    dtypes: tuple[torch.dtype, ...] = (torch.float16, torch.bfloat16, torch.float32)
    """Working (activation) dtypes the kernels serve; the conformance kit checks only these."""
    dist_backend: str = "gloo"
    graph: DeviceGraph | None = None
    compile_backend: Callable[..., Any] | None = None
    """Graph compiler ``(gm, example_inputs) -> callable`` run by ``torch.compile(backend="dlinfer")`` after
    dlinfer's passes and lowering; ``None``: the graph runs eagerly."""
    lowering: Callable[[], Mapping[str, Lowering]] | None = None
    """Factory of the lowering table (op name -> :class:`dlinfer.lowering.Lowering`) applied before
    ``compile_backend``; ops it does not lower run through dlinfer's eager dispatch."""
    activate: Callable[[], None] | None = None
    """Framework device patches (e.g. redirecting ``torch.cuda`` to the device); run at activation only."""
    capabilities: Capabilities = field(default_factory=Capabilities)
    """Attention features served; framework adaptors check them when an engine is built."""
    max_batch_size: int | None = None
    """Default batch-size bound for serving engines (``None``: the adaptor's default)."""
    prepare_metadata: Callable[[StepMetadata], Any] | None = None
    """Once per step (FlashInfer's plan/run split): build a backend-specific plan from the step's
    :class:`StepMetadata`; framework adaptors pass it to that step's attention ops as ``plan=``, so that index,
    mask and offset tensors are built once per step, not once per layer. ``None``: no plan (ops get
    ``plan=None``). An op must give the same result with and without the plan. A graph runner that replays a
    captured step calls ``plan.refresh()`` (when the plan has it) after refilling the fixed metadata buffers, so
    that a plan whose tensors were captured is rebuilt in place before the replay."""
    framework: FrameworkSettings = field(default_factory=FrameworkSettings)
    """Settings read by framework adaptors (LMDeploy device name, ray resource)."""
    description: str = ""
    extras: Mapping[str, Any] = field(default_factory=dict)
    """Free-form, display-only declarations (e.g. SoC name) shown by ``dlinfer info``; nothing reads them to
    decide behaviour."""

    def kv_block_shape(self, block_size: int, num_kv_heads: int, head_dim: int) -> tuple[int, int, int]:
        """Shape of one KV-cache block for this backend's layout."""
        if self.kv_layout == "NHD":
            return (block_size, num_kv_heads, head_dim)
        return (num_kv_heads, block_size, head_dim)


class BackendHookSpec:
    """The hooks a backend plugin implements."""

    @hookspec
    def dlinfer_backend(self) -> Backend:  # type: ignore[empty-body]
        """Return this plugin's :class:`Backend` declaration (cheap; no vendor imports)."""
